"""reasoning-gym's own scorer for rows of `--dataset reasoning_gym:TASK`: each task's `score_answer`, unchanged."""

from __future__ import annotations

from functools import cache

from reward_server.builtins.answer import final_answer, hedged


@cache
def _scorer(task: str):
    import reasoning_gym

    return reasoning_gym.get_score_answer_fn(task)   # builds the task's dataset object once per worker


def reasoning_gym(prompt: str, completion: str, reasoning_gym_entry: dict | None = None, finish_reason: str | None = None,
                  **columns) -> float | None:
    """The row's task scores the final answer: `score_answer(answer, entry)` of reasoning-gym (1.0 correct; some
    tasks give partial credit). The row carries the task's entry in its `reasoning_gym_entry` column, as
    learner.pipeline.dataset writes it for `reasoning_gym:TASK`; None (not applicable) without it.

    The final answer is the last <answer> block, else the last \\boxed{}, else the last line (never the
    whole text, which a lenient scorer might search). 0 for no answer, a truncated completion and "A or B".
    Some tasks' scorers are lenient by design (numeric tolerance: 101 may pass for 100); that is the task's
    definition of correct, kept as is.

        >>> entry = {"question": "Calculate 5 - 3 - 6.", "answer": "-4",
        ...          "metadata": {"source_dataset": "basic_arithmetic"}}
        >>> reasoning_gym("", "5 - 3 is 2, minus 6:\\n<answer>-4</answer>", reasoning_gym_entry=entry)
        1.0
        >>> reasoning_gym("", "<answer>-4 or 4</answer>", reasoning_gym_entry=entry)
        0.0
    """
    if reasoning_gym_entry is None:
        return None
    said = final_answer(completion)
    if finish_reason == "length" or not said or hedged(completion):
        return 0.0
    task = reasoning_gym_entry["metadata"]["source_dataset"]
    return float(_scorer(task)(answer=said, entry=reasoning_gym_entry))
