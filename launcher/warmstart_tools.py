"""Supervised warm-start for tool use: the visible first phase of `rlfleet up --env builtin:calculator`.

The tiny model has never seen a tool call. This phase shows it whole conversations, rendered token by
token exactly as the multi-turn driver renders them (learner/pipeline/turns.py): some rows solved by
calling the calculator (`calc(37*58)`, the tool's answer, the answer repeated), the rest answered
straight away, where the tiny model can only guess. It learns both habits; RL has to find out that
the tool pays (the tool-call rate and the held-out accuracy rise). Loss on the model's turns only.
"""

from __future__ import annotations

import random

from launcher.warmstart import Example
from learner.pipeline.dataset import PromptRow
from learner.pipeline.turns import TurnRenderer


def calculator_examples(renderer: TurnRenderer, rows: list[PromptRow], tool_fraction: float,
                        seed: int = 0) -> list[Example]:
    """One conversation per row: with probability `tool_fraction` the tool is called, else the answer is given."""
    rng = random.Random(seed)
    tokenizer, eos = renderer.tokenizer, renderer.eos_id

    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    examples = []
    for row in rows:
        prompt = renderer.prompt([{"role": "user", "content": row.prompt}])
        answer = ids(row.answer or "") + [eos]
        if rng.random() < tool_fraction:
            call = ids(f"calc({row.prompt})") + [eos]
            observation = renderer.after_turn(call, [{"role": "tool", "content": row.answer or ""}])
            tokens = prompt + call + observation + answer
            trained = [False] * len(prompt) + [True] * len(call) + [False] * len(observation) + [True] * len(answer)
        else:
            tokens = prompt + answer
            trained = [False] * len(prompt) + [True] * len(answer)
        examples.append((tokens, trained))
    return examples
