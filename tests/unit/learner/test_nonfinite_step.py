"""An update whose loss or gradient is not finite is skipped at every ZeRO stage: weights and optimiser untouched.

The trainer is called directly, past the batch check (learner.admission), as if a NaN had slipped
through or come out of the model itself. Skipped means exactly skipped: the next good update lands
where it would have without the bad ones before it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
from pathlib import Path

import pytest
import torch

from learner import metrics
from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.loop import TrainingLoop
from learner.push import AdapterPusher
from learner.sources import RolloutSource
from learner.trainer import Trainer
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[3] / ".venv" / "torch_extensions"))


def _trainer(model: str, run_dir: Path, stage: int, dtype: str) -> Trainer:
    config = LearnerConfig.model_validate(dict(
        model=model, run_dir=run_dir, micro_batch_tokens=40, seed=1, source={"type": "push"},
        lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        deepspeed={"zero_stage": stage, "lr": 1e-2, "dtype": dtype}))
    return Trainer(config, PolicyEngine(config))


def _adapter(trainer: Trainer) -> dict[str, torch.Tensor]:
    return trainer.engine.adapter_state()[1]


def _nan_advantage_batch():
    # One NaN advantage in one sample: the loss of the micro-batch holding it, and so the update's, is NaN.
    batch = fixed_batch(seed=5)
    for group in batch.groups:
        group.samples = [dataclasses.replace(s, advantages=[0.5] * len(s.token_ids)) for s in group.samples]
    first = batch.groups[0].samples[0]
    batch.groups[0].samples[0] = dataclasses.replace(first, advantages=[math.nan] + first.advantages[1:])
    return batch


@pytest.mark.parametrize(("stage", "dtype"), [(0, "fp32"), (1, "fp32"), (2, "fp32"), (3, "fp32"), (0, "bf16"),
                                             (2, "bf16")])
def test_non_finite_updates_are_skipped_and_the_next_good_one_lands_as_if_they_never_were(
        tiny_model_dir, tmp_path, stage, dtype):
    trainer = _trainer(tiny_model_dir, tmp_path / "a", stage, dtype)
    start = _adapter(trainer)
    nan_loss = trainer.train_step(_nan_advantage_batch(), policy_version=0)
    # A finite loss whose gradient is not: a hook poisons one LoRA gradient on its way to DeepSpeed.
    name, param = next(iter(trainer.engine.lora_parameters().items()))
    hook = param.register_hook(lambda grad: grad * math.inf)
    nan_grad = trainer.train_step(fixed_batch(seed=6), policy_version=0)
    hook.remove()
    after_skips = _adapter(trainer)
    trainer.shuffle.manual_seed(trainer.config.seed)   # the same row order as the reference's first step
    good = trainer.train_step(fixed_batch(seed=7), policy_version=0)

    reference = _trainer(tiny_model_dir, tmp_path / "b", stage, dtype)   # same seed: same initial adapter
    expected = reference.train_step(fixed_batch(seed=7), policy_version=0)

    for result in (nan_loss, nan_grad):
        assert (result.updates, result.skipped_updates, result.trained_tokens) == (0, 1, 0)
        assert result.metrics["skipped_updates"] == 1.0
    assert "loss" not in nan_loss.metrics   # a skipped update's stats are not averaged in
    assert all(torch.equal(start[k], after_skips[k]) for k in start), f"{name}: a skipped update moved the weights"
    assert good.updates == 1 and good.skipped_updates == 0 and math.isfinite(good.metrics["loss"])
    assert good.metrics["loss"] == expected.metrics["loss"]
    assert good.metrics["lr"] == expected.metrics["lr"]   # the LR schedule did not advance either
    final, wanted = _adapter(trainer), _adapter(reference)
    # bit for bit: no gradient, moment or step count of the skipped updates survived
    assert all(torch.equal(final[k], wanted[k]) for k in final)
    assert not all(torch.equal(final[k], start[k]) for k in final)   # and the good update did move them


class Batches(RolloutSource):
    """The given batches, in order."""

    def __init__(self, batches):
        self.batches = list(batches)

    async def next_batch(self):
        return self.batches.pop(0)


def test_the_loop_records_counts_and_logs_a_skipped_step_and_trains_on(tiny_model_dir, tmp_path, caplog):
    trainer = _trainer(tiny_model_dir, tmp_path, 2, "fp32")
    config = trainer.config.model_copy(update={"max_steps": 1, "generators": []})
    param = next(iter(trainer.engine.lora_parameters().values()))
    hook = param.register_hook(lambda grad: grad * math.nan)   # the first batch's gradient comes out NaN...
    loop = TrainingLoop(config, trainer, Batches([fixed_batch("bad", seed=1), fixed_batch("good", seed=2)]),
                        AdapterPusher([], config.push, config.client))
    trainer.train_step = _removing_hook_after(trainer.train_step, hook)   # ...and only the first's
    before = metrics.SKIPPED_UPDATES._value.get()
    with caplog.at_level(logging.WARNING, logger="learner.loop"):
        state = asyncio.run(loop.run())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # record 1: the skipped step, under step 0 (no new version); record 2: step 1 trained on "good"
    assert [(r["step"], r["skipped_updates"], r["optimizer_updates"]) for r in records] == [(0, 1, 0), (1, 0, 1)]
    assert state.step == 1 and state.policy_version == 1
    assert metrics.SKIPPED_UPDATES._value.get() - before == 1
    assert any("batch bad" in r.message and "1 of 1 updates skipped" in r.message for r in caplog.records)


def _removing_hook_after(train_step, hook):
    def call(batch, policy_version):
        try:
            return train_step(batch, policy_version)
        finally:
            hook.remove()
    return call
