"""A reasoning-gym task end to end: `reasoning_gym:TASK` rows -> the pipeline's reward items -> a real reward server
running the built-in `reasoning_gym` reward (the task's own score_answer) over loopback gRPC."""

from __future__ import annotations

import asyncio

import pytest

from learner.pipeline.dataset import check_dataset, load_rows
from learner.pipeline.scoring import reward_items
from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.server import start_server
from rlfleet.clients import RewardClient
from rlfleet.config import ServerConfig
from rlfleet.outcomes import FinishReason, RewardStatus
from rlfleet.rollouts import Group, Sample

TASK = "basic_arithmetic"


def test_rows_carry_the_entry_and_unknown_tasks_name_the_dataset():
    train, held_out = load_rows(f"reasoning_gym:{TASK}")
    assert (len(train), len(held_out)) == (2000, 200)
    row = held_out[0]
    assert row.prompt.startswith("Calculate ") and row.answer == row.columns["answer"]
    entry = row.columns["reasoning_gym_entry"]
    assert entry["question"] == row.prompt and entry["metadata"]["source_dataset"] == TASK
    assert load_rows(f"reasoning_gym:{TASK}")[1][0] == row  # generated from a seed: the same rows every time
    with pytest.raises(ValueError, match="^dataset 'reasoning_gym:no_such_task': unknown reasoning-gym task"):
        check_dataset("reasoning_gym:no_such_task")


def test_task_scores_its_rows_through_the_pipeline_and_a_reward_server():
    _, rows = load_rows(f"reasoning_gym:{TASK}")
    rows = rows[:3]
    config = RewardConfig(reward=["reasoning_gym:1.0"], server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0))

    def sample(text: str) -> Sample:
        return Sample(token_ids=[1], logprobs=[-1.0], finish_reason=FinishReason.STOP, text=text)

    async def run():
        core = RewardCore(config)
        core.start_workers()
        server = await start_server(config.server, core)
        scored = []
        try:
            async with RewardClient(f"127.0.0.1:{server.port}", timeout=60) as client:
                for row in rows:
                    # right in tags, right as the last line, off by one, hedged
                    texts = [f"<answer>{row.answer}</answer>", f"Working...\n{row.answer}",
                             f"<answer>{int(row.answer) + 1}</answer>", f"<answer>{row.answer} or 0</answer>"]
                    group = Group(row.prompt_id, [1], [sample(t) for t in texts], policy_version=0,
                                  columns=dict(row.columns))
                    scored.append(await client.score(reward_items(group, row)))
        finally:
            await server.stop(0)
            core.close()
        return scored

    for scores in asyncio.run(run()):
        assert [s.status for s in scores] == [RewardStatus.OK] * 4, [s.error for s in scores]
        assert [s.reward for s in scores] == [1.0, 1.0, 0.0, 0.0]
        assert scores[0].components == {"reasoning_gym": 1.0}
