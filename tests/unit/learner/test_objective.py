"""The training step's policy loss: the fused kernel equals learner.algos.policy_loss, stats included."""

from __future__ import annotations

import pytest
import torch

from learner.algos import policy_loss
from learner.algos.config import AlgoConfig
from learner.algos.types import PolicyLossInput
from learner.objective import fused_covers, select_objective


def _input(seed: int = 0) -> PolicyLossInput:
    g = torch.Generator().manual_seed(seed)
    shape = (5, 7)
    mask = (torch.rand(shape, generator=g) > 0.2).float()                  # [B, T]
    mask[4] = 0.0                                                           # an empty row
    old = -torch.rand(shape, generator=g) * 2                                # [B, T]
    logprobs = (old + 0.4 * torch.randn(shape, generator=g)).requires_grad_()  # ratios on both clip sides
    return PolicyLossInput(
        logprobs=logprobs, old_logprobs=old, behaviour_logprobs=old + 0.9 * torch.randn(shape, generator=g),
        advantages=torch.randn(shape, generator=g), mask=mask, ref_logprobs=old + 0.1 * torch.randn(shape, generator=g),
        num_tokens=float(mask.sum()) + 3, num_sequences=6.0, entropy=torch.rand(shape, generator=g))


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
@pytest.mark.parametrize("kl_mode", ["loss", "reward"])
def test_fused_objective_equals_the_reference(aggregation, kl_mode):
    algo = AlgoConfig.model_validate({
        "aggregation": aggregation, "seq_sum_normaliser": 7.0, "kl": {"coef": 0.05, "mode": kl_mode},
        "policy_loss": {"type": "ppo_clip", "clip_low": 0.2, "clip_high": 0.28, "dual_clip": 3.0}, "tis": {"cap": 1.5}})
    assert fused_covers(algo)
    fused_in, ref_in = _input(), _input()
    fused = select_objective(algo, torch.device("cpu"))(fused_in)
    ref = policy_loss(ref_in, algo)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-5, atol=1e-6)
    fused.loss.backward()
    ref.loss.backward()
    torch.testing.assert_close(fused_in.logprobs.grad, ref_in.logprobs.grad, rtol=1e-5, atol=1e-6)
    for name in ("pg_loss", "kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean",
                 "tis_weight_mean", "tis_clip_frac", "entropy"):
        torch.testing.assert_close(getattr(fused.stats, name), getattr(ref.stats, name), rtol=1e-5, atol=1e-6,
                                   msg=name)
    assert 0 < float(ref.stats.tis_clip_frac) < 1  # the cap was hit on some tokens, not all


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize(("coef", "kl_mode"), [(0.0, "loss"), (0.05, "loss"), (0.05, "reward")])
def test_both_paths_report_the_same_stats_for_every_kl_estimator(estimator, coef, kl_mode):
    # reference log-probs present but the KL only reported (coef 0 or reward mode): the fused path
    # must report the configured estimator, not the kernel's k3 (k1 here is ~ -mean(ref - lp), k3 >= 0)
    algo = AlgoConfig.model_validate({"kl": {"coef": coef, "estimator": estimator, "mode": kl_mode},
                                      "aggregation": "seq_mean_token_mean"})
    fused_in, ref_in = _input(1), _input(1)
    fused = select_objective(algo, torch.device("cpu"))(fused_in)
    ref = policy_loss(ref_in, algo)
    torch.testing.assert_close(fused.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for name in ("pg_loss", "kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean",
                 "tis_weight_mean", "tis_clip_frac", "entropy"):
        torch.testing.assert_close(getattr(fused.stats, name), getattr(ref.stats, name), rtol=1e-5, atol=1e-6,
                                   msg=name)
    assert float(ref.stats.kl) != 0


def test_nan_on_padding_gives_the_same_loss_and_gradient_on_both_paths():
    algo = AlgoConfig.model_validate({"kl": {"coef": 0.05}})
    results = []
    for objective in (select_objective(algo, torch.device("cpu")), lambda inp: policy_loss(inp, algo)):
        inp = _input(2)
        pad = inp.mask == 0
        nan = torch.full_like(inp.mask, float("nan"))
        logprobs = torch.where(pad, nan, inp.logprobs.detach()).requires_grad_()
        dirty = PolicyLossInput(
            logprobs=logprobs, old_logprobs=torch.where(pad, nan, inp.old_logprobs),
            behaviour_logprobs=torch.where(pad, nan, inp.behaviour_logprobs),
            advantages=torch.where(pad, nan, inp.advantages), mask=inp.mask,
            ref_logprobs=torch.where(pad, nan, inp.ref_logprobs), num_tokens=inp.num_tokens,
            num_sequences=inp.num_sequences)
        out = objective(dirty)
        out.loss.backward()
        results.append((out.loss, logprobs.grad))
    (fused_loss, fused_grad), (ref_loss, ref_grad) = results
    assert torch.isfinite(ref_loss) and torch.isfinite(ref_grad).all()
    torch.testing.assert_close(fused_loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused_grad, ref_grad, rtol=1e-5, atol=1e-6)


def test_configs_without_a_fused_form_use_the_reference():
    gspo = AlgoConfig.model_validate({"policy_loss": {"type": "gspo"}, "aggregation": "seq_mean_token_mean"})
    k1 = AlgoConfig.model_validate({"kl": {"coef": 0.1, "estimator": "k1"}})
    assert not fused_covers(gspo) and not fused_covers(k1)
    assert fused_covers(AlgoConfig.model_validate({"kl": {"coef": 0.0, "estimator": "k1"}}))
    assert fused_covers(AlgoConfig.model_validate({"kl": {"coef": 0.1, "estimator": "k2", "mode": "reward"}}))
