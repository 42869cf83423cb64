"""The critic and rejection sampling on DeepSpeed ZeRO-2 + LoRA, tiny model, CPU: values, warm-up, exact resume."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import torch

from learner.config import LearnerConfig
from learner.critic import is_critic_parameter
from learner.engine import PolicyEngine
from learner.trainer import Trainer
from tests.unit.learner.rollout_fixtures import fixed_batch

pytestmark = pytest.mark.slow
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[3] / ".venv" / "torch_extensions"))

LAM = 0.9


def _config(model: str, run_dir: Path, algo: dict | None = None, **overrides) -> LearnerConfig:
    base = dict(model=model, run_dir=run_dir, micro_batch_tokens=40, seed=1,
                lora={"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                deepspeed={"zero_stage": 2, "lr": 1e-2}, source={"type": "push"},
                algo=algo if algo is not None else {"advantage": {"type": "gae", "lam": LAM, "whiten": False},
                                                    "value": {"lr": 2e-3}})
    base.update(overrides)
    return LearnerConfig.model_validate(base)


def _trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    """Every trained tensor: the policy adapter, the critic adapter and the value head."""
    return {n: p.detach().clone() for n, p in trainer.engine.lora_parameters().items()}


def test_first_value_loss_by_hand_then_it_falls(tiny_model_dir, tmp_path):
    trainer = Trainer(_config(tiny_model_dir, tmp_path), PolicyEngine(_config(tiny_model_dir, tmp_path)))
    batch = fixed_batch(seed=4)
    # The head starts at zero, so V = 0 and GAE (gamma 1, no token rewards) gives returns
    # R_t = lambda^(L-1-t) * r on a completion of L tokens; both loss terms are 0.5 * R^2:
    # value_loss = 0.5 * sum over tokens of R_t^2 / tokens
    samples = [s for g in batch.groups for s in g.samples]
    squares = sum(s.reward ** 2 * LAM ** (2 * k) for s in samples for k in range(len(s.token_ids)))
    expected_first = 0.5 * squares / sum(len(s.token_ids) for s in samples)
    records = [trainer.train_step(batch, policy_version=step).metrics for step in range(8)]
    losses = [r["value_loss"] for r in records]
    assert losses[0] == pytest.approx(expected_first, rel=1e-5)
    assert records[0]["value_mean"] == 0 and records[0]["value_clip_frac"] == 0
    # measured: 0.157 -> 0.033 and explained variance 0.0 -> 0.70 over these 8 steps
    assert losses[-1] < 0.5 * losses[0], losses
    assert records[-1]["value_explained_variance"] > records[0]["value_explained_variance"] + 0.3, records


def test_value_warm_up_trains_the_critic_alone(tiny_model_dir, tmp_path):
    algo = {"advantage": {"type": "gae"}, "value": {"warmup_steps": 1, "lr": 2e-3}}
    config = _config(tiny_model_dir, tmp_path, algo=algo)
    trainer = Trainer(config, PolicyEngine(config))
    batch = fixed_batch(seed=5)
    before = _trainable(trainer)
    warm = trainer.train_step(batch, policy_version=0).metrics  # step 1 of 1 warm-up step
    after_warm = _trainable(trainer)
    trainer.train_step(batch, policy_version=1)
    after = _trainable(trainer)
    critic = {n for n in before if is_critic_parameter(n)}
    assert critic and len(critic) < len(before)
    assert warm["critic_only"] == 1 and "pg_loss" not in warm and warm["loss"] == pytest.approx(0.5 * warm["value_loss"])
    assert all(torch.equal(before[n], after_warm[n]) for n in before if n not in critic)  # the policy did not move
    assert any(not torch.equal(before[n], after_warm[n]) for n in critic)
    assert any(not torch.equal(after_warm[n], after[n]) for n in before if n not in critic)  # now it does
    # the pushed adapter is the policy's alone
    assert not any("critic" in k or "value_head" in k for k in trainer.engine.adapter_state()[1])


def test_resume_with_a_critic_is_bit_exact(tiny_model_dir, tmp_path):
    # PPO as configured for the demo: GAE, 2 epochs x 2 shuffled mini-batches, dropout, cosine schedule,
    # one warm-up step; the critic's adapter, head and optimiser state must resume exactly
    batches = [fixed_batch(f"b{i}", seed=20 + i) for i in range(4)]
    common = dict(lora={"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
                  epochs_per_batch=2, minibatches_per_batch=2, generators=[],
                  deepspeed={"zero_stage": 2, "lr": 1e-2, "schedule": "cosine", "warmup_steps": 1},
                  algo={"advantage": {"type": "gae"}, "value": {"warmup_steps": 1, "lr": 2e-3}})
    straight = _run(_config(tiny_model_dir, tmp_path / "straight", max_steps=4, **common), batches)
    _run(_config(tiny_model_dir, tmp_path / "resumed", max_steps=4, **common), batches, stop_after=2)
    resumed = _run(_config(tiny_model_dir, tmp_path / "resumed", max_steps=4, checkpoint={"resume": True},
                           **common), batches)
    assert any(is_critic_parameter(n) for n in straight)
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name  # bit-exact
    lines = [json.loads(line) for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["value_loss"] for r in lines] == [r["value_loss"] for r in reference]


def _run(config: LearnerConfig, batches, stop_after: int | None = None) -> dict[str, torch.Tensor]:
    from learner.loop import TrainingLoop
    from learner.push import AdapterPusher
    from tests.unit.learner.test_training import FixedSource

    trainer = Trainer(config, PolicyEngine(config))
    loop = TrainingLoop(config, trainer, FixedSource(batches), AdapterPusher(config.generators, config.push,
                                                                             config.client))
    if stop_after is not None:  # what SIGTERM does: finish the step, checkpoint, return
        loop.on_step.append(lambda record: loop.request_stop() if record["step"] == stop_after else None)
    asyncio.run(loop.run())
    return _trainable(trainer)


def test_rejection_sampling_adds_an_nll_on_the_best_of_each_group(tiny_model_dir, tmp_path):
    # groups of 4, top 25 %: ceil(0.25 * 4) = 1 completion per group (rewards 1, 0, 1, 0: the first 1);
    # loss = GRPO's loss + 1.0 * NLL of the kept tokens, and that NLL falls step after step
    algo = {"rejection_sampling": {"coef": 1.0, "top_fraction": 0.25}}
    config = _config(tiny_model_dir, tmp_path, algo=algo)
    trainer = Trainer(config, PolicyEngine(config))
    batch = fixed_batch(seed=6)
    records = [trainer.train_step(batch, policy_version=step).metrics for step in range(4)]
    assert records[0]["rs_kept_fraction"] == 0.25
    nll = [r["rs_nll_loss"] for r in records]
    assert nll[0] == pytest.approx(5.57, abs=0.1)  # the untrained tiny model: ~ log(262) per token
    assert all(b < a for a, b in zip(nll, nll[1:], strict=False)), nll
    assert records[0]["loss"] == pytest.approx(records[0]["pg_loss"] + nll[0], abs=1e-5)
