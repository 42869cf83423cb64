"""One rank of a data-parallel test run: `python -m tests.unit.learner.dp_worker MODEL RUN_DIR` under RANK/WORLD_SIZE env.

Rank 0 drives the TrainingLoop over fixed rollouts; other ranks follow it (learner.loop.follow).
"""

from __future__ import annotations

import asyncio
import sys

from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.loop import TrainingLoop, follow
from learner.push import AdapterPusher
from learner.trainer import Trainer
from tests.unit.learner.rollout_fixtures import fixed_batch
from tests.unit.learner.test_training import FixedSource


def main(model: str, run_dir: str) -> int:
    config = LearnerConfig.model_validate(dict(
        model=model, run_dir=run_dir, max_steps=2, micro_batch_tokens=24, seed=1, minibatches_per_batch=2,
        lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
        deepspeed={"zero_stage": 2, "lr": 1e-2}, source={"type": "push"}))
    trainer = Trainer(config, PolicyEngine(config))
    if trainer.engine.rank != 0:
        follow(trainer, config)
        return 0
    batches = [fixed_batch(f"b{i}", seed=20 + i, groups=3) for i in range(2)]
    loop = TrainingLoop(config, trainer, FixedSource(batches), AdapterPusher([], config.push, config.client))
    asyncio.run(loop.run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
