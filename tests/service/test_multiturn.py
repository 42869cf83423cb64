"""Multi-turn driver against a real environment service over loopback (the calculator), with a scripted generator:
token-in/token-out trajectories, tool-call mistakes, limits, pinned policy versions, a row that cannot start."""

from __future__ import annotations

import asyncio
import re

from launcher.tiny_model import build_tokenizer
from learner.pipeline.config import EnvironmentConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.multiturn import MultiTurnDriver
from learner.pipeline.turns import TurnRenderer
from rlfleet.generation import Sampling
from rlfleet.outcomes import FinishReason, ItemScore
from tests.service.multiturn_fixtures import ScriptedGenerator, calculator_service

TOKENIZER = build_tokenizer()
ROWS = [PromptRow("r0", "37*58", "2146", {"answer": "2146"}), PromptRow("r1", "12*11", "132", {"answer": "132"})]


def _ids(text: str) -> list[int]:
    return TOKENIZER(text, add_special_tokens=False)["input_ids"]


def calculator_policy(context: str) -> str:
    """Calls the tool on the question, then repeats the tool's answer."""
    tool = re.search(r"<\|tool\|>(.*?)<\|assistant\|>$", context)
    return tool.group(1) if tool else "calc(" + re.search(r"<\|user\|>(.*?)<\|assistant\|>$", context).group(1) + ")"


def _run(policy, rows=ROWS, n=2, fmt="compact", temperature=1.0, max_tokens=16, **limits):
    config = EnvironmentConfig(address="127.0.0.1:1", tool_call_format=fmt, **limits)
    generator = ScriptedGenerator(TOKENIZER, policy)

    async def body():
        async with calculator_service() as env:
            driver = MultiTurnDriver(config, TurnRenderer(TOKENIZER), env)
            sampling = Sampling(n=n, max_tokens=max_tokens, temperature=temperature, seed=5)
            return [done async for done in driver.rollouts(rows, generator, sampling)]

    return asyncio.run(body()), generator


def test_trajectory_is_the_generated_and_observed_ids_exactly():
    done, generator = _run(calculator_policy)
    assert sorted(d.row.prompt_id for d in done) == ["r0", "r1"]
    eos = TOKENIZER.eos_token_id
    for d in done:
        group = d.group
        question, answer = d.row.prompt, d.row.answer
        assert group.prompt_ids == _ids(f"<|user|>{question}<|assistant|>") and group.policy_version == 3
        turn1, observation, turn2 = _ids(f"calc({question})") + [eos], _ids(f"<|tool|>{answer}<|assistant|>"), \
            _ids(answer) + [eos]
        for sample in group.samples:
            assert sample.token_ids == turn1 + observation + turn2
            assert sample.loss_mask == [True] * len(turn1) + [False] * len(observation) + [True] * len(turn2)
            # the generator's log-probs on its own tokens, 0 on the environment's
            assert sample.logprobs == ([-(1 + i) / 100 for i in range(len(turn1))] + [0.0] * len(observation)
                                       + [-(1 + i) / 100 for i in range(len(turn2))])
            assert sample.text == answer and sample.finish_reason is FinishReason.STOP
            stats = sample.trajectory
            assert (stats.turns, stats.tool_calls, stats.tool_errors, stats.truncation) == (2, 1, 0, "")
            assert stats.policy_versions == (3, 3)
            assert stats.environment_score == ItemScore(1.0, {"Calculator": 1.0})
    # round 1: one prompt per row with n = 2 on the newest version; round 2: the two (identical) contexts of a
    # row again as one prompt with n = 2, pinned to the version of the first turn
    assert [(n, version, len(prompts)) for n, version, prompts in generator.calls] == [(2, None, 2), (2, 3, 2)]


def test_greedy_asks_each_trajectory_alone():
    done, generator = _run(calculator_policy, rows=ROWS[:1], n=1, temperature=0.0)
    assert [(n, len(prompts)) for n, _, prompts in generator.calls] == [(1, 1), (1, 1)]
    assert done[0].group.samples[0].trajectory.environment_score.reward == 1.0


def test_bad_json_is_shown_to_the_model_and_counted_without_calling_the_environment():
    def policy(context: str) -> str:
        if "<|tool|>" in context:
            return "0"
        return '<tool_call>{"name": "calc", "arguments": {"expression": "1+1"}</tool_call>'  # one } short

    done, _ = _run(policy, rows=ROWS[:1], n=1, fmt="json", max_tokens=128)
    sample = done[0].group.samples[0]
    observation = TOKENIZER.decode([t for t, m in zip(sample.token_ids, sample.loss_mask, strict=True) if not m])
    # the JSON body is 51 characters and lacks its closing brace (as in tests/unit/learner/test_toolcalls.py)
    assert observation == "<|tool|>{'error': \"tool call is not valid JSON: Expecting ',' delimiter at character 51\"}" \
                          "<|assistant|>"
    assert (sample.trajectory.tool_calls, sample.trajectory.tool_errors) == (1, 1)
    assert sample.trajectory.environment_score.reward == 0.0  # answered "0"


def test_unknown_tool_and_a_raising_tool_are_tool_errors_the_session_survives():
    def policy(context: str) -> str:
        tools = context.count("<|tool|>")
        return ["sqrt(9)", "calc(import os)", "calc(2*3)", "6"][tools]

    done, _ = _run(policy, rows=[PromptRow("r", "2*3", "6", {"answer": "6"})], n=1)
    sample = done[0].group.samples[0]
    assert (sample.trajectory.turns, sample.trajectory.tool_calls, sample.trajectory.tool_errors) == (4, 3, 2)
    assert sample.trajectory.environment_score.reward == 1.0
    text = TOKENIZER.decode(sample.token_ids)
    assert "{'error': 'Tool sqrt not found.'}" in text and "not an arithmetic expression" in text  # TRL's wording


def test_trajectory_over_its_token_limit_ends_truncated():
    done, _ = _run(lambda context: "calc(1+1)", rows=ROWS[:1], n=1, max_trajectory_tokens=30)
    sample = done[0].group.samples[0]
    # turn 10 tokens, observation "<|tool|>2<|assistant|>" 10: turn, observation, turn = 30 would fill the limit
    assert sample.finish_reason is FinishReason.LENGTH and sample.truncated
    assert sample.trajectory.truncation == "tokens" and len(sample.token_ids) <= 30
    assert sample.loss_mask[-1] is True  # it ends on the model's turn, no observation appended past the limit
    assert sample.trajectory.environment_score.reward == 0.0  # no answer given


def test_trajectory_past_its_turns_ends_truncated():
    done, _ = _run(lambda context: "calc(1+1)", rows=ROWS[:1], n=1, max_turns=3)
    stats = done[0].group.samples[0].trajectory
    assert (stats.truncation, stats.turns, stats.tool_calls) == ("turns", 3, 3)
    assert done[0].group.samples[0].finish_reason is FinishReason.LENGTH


def test_row_whose_environment_cannot_start_comes_back_with_the_error():
    done, generator = _run(calculator_policy, rows=[PromptRow("bad", "1*1", None, {}), ROWS[0]], n=2)
    by_id = {d.row.prompt_id: d for d in done}
    assert by_id["bad"].group is None and "reset() raised ValueError: the row has no answer" in by_id["bad"].error
    assert by_id["r0"].group.samples[0].trajectory.environment_score.reward == 1.0
