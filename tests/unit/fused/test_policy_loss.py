"""Fused policy loss: both backends against a float64 reference, by hand, and against learner.algos.policy_loss."""

from __future__ import annotations

import math

import pytest
import torch

from fused import fused_policy_loss
from fused.backend import triton_importable

BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(not triton_importable(), reason="no triton"))]
AGGREGATIONS = ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"]
# Per dtype of logprobs, (atol, rtol) of loss/stats and of the gradient (returned in logprobs' dtype).
# The other inputs are rounded to that dtype before the float64 reference; the kernels compute in fp32.
TOLERANCES = {
    torch.float32: {"values": (1e-6, 1e-5), "grad": (1e-7, 1e-5)},
    torch.bfloat16: {"values": (1e-6, 1e-5), "grad": (1e-4, 1e-2)},
}
TERMS = dict(clip_low=0.2, clip_high=0.28)


def _device(backend: str) -> str:
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def _reference(lp, old, behaviour, adv, mask, ref, *, tis_cap, kl_coef, aggregation, dual_clip=None,
               seq_sum_normaliser=None):
    """float64 loss, stats and d loss / d lp, straight from the formulas of the issue."""
    lp = lp.double().detach().requires_grad_()
    old, behaviour, adv, mask = old.double(), behaviour.double(), adv.double(), mask.double()
    ratio = torch.exp(lp - old)
    tis = torch.exp(old - behaviour).clamp(max=tis_cap) if tis_cap is not None else torch.ones_like(ratio)
    clipped = ratio.clamp(1 - TERMS["clip_low"], 1 + TERMS["clip_high"])
    pg = -torch.minimum(ratio * adv, clipped * adv)
    if dual_clip is not None:
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    pg = pg * tis
    kl = torch.zeros_like(pg) if ref is None else torch.exp(ref.double() - lp) - (ref.double() - lp) - 1
    tokens = mask.sum().clamp(min=1)
    sequences = (mask.sum(1) > 0).sum().clamp(min=1)

    def aggregate(per_token):
        if aggregation == "token_mean":
            return (per_token * mask).sum() / tokens
        if aggregation == "seq_mean_token_mean":
            return ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / sequences
        return ((per_token * mask).sum(1) / seq_sum_normaliser).sum() / sequences

    loss = aggregate(pg + kl_coef * kl)
    loss.backward()
    low = ((ratio < 1 - TERMS["clip_low"]) & (adv < 0)).double()
    high = ((ratio > 1 + TERMS["clip_high"]) & (adv > 0)).double()
    dual = ((ratio > (dual_clip or math.inf)) & (adv < 0)).double()
    stats = (aggregate(pg).detach(), aggregate(kl).detach(), (low * mask).sum() / tokens,
             (high * mask).sum() / tokens, (dual * mask).sum() / tokens)
    return loss.detach(), stats, lp.grad


def _batch(b: int, t: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Random [B, T] inputs whose ratios reach both clip bounds; row 1 is fully masked (an empty row)."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=gen) * 3
    lp = old + torch.randn(b, t, generator=gen) * 0.3                 # ratios mostly in [0.5, 2]
    behaviour = old + torch.randn(b, t, generator=gen) * 0.5          # TIS weights up to ~4, capped at 2
    adv = torch.randn(b, t, generator=gen)
    adv[0, :5] = 0.0                                                  # zero advantages: no pg gradient
    ref = old + torch.randn(b, t, generator=gen) * 0.2
    mask = (torch.rand(b, t, generator=gen) < 0.7).float()
    mask[1] = 0.0
    return [x.to(dtype).to(device) for x in (lp, old, behaviour, adv, mask, ref)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tis_cap,kl_coef,with_ref,dual_clip", [
    (2.0, 0.1, True, None), (None, 0.0, False, None), (None, 0.0, True, 1.4), (2.0, 0.1, True, 1.4)])
def test_matches_float64_reference(backend, aggregation, dtype, tis_cap, kl_coef, with_ref, dual_clip):
    # B = 5, T = 37: T is not a multiple of Triton's token block (64), row 1 has no masked token.
    lp, old, behaviour, adv, mask, ref = _batch(5, 37, dtype, _device(backend))
    ref = ref if with_ref else None
    knobs = dict(tis_cap=tis_cap, kl_coef=kl_coef, aggregation=aggregation, dual_clip=dual_clip,
                 seq_sum_normaliser=37.0)
    ref_loss, ref_stats, ref_grad = _reference(lp, old, behaviour, adv, mask, ref, **knobs)
    leaf = lp.clone().requires_grad_()
    out = fused_policy_loss(leaf, old, behaviour, adv, mask, ref, **TERMS, **knobs, backend=backend)
    out.loss.backward()
    atol, rtol = TOLERANCES[dtype]["values"]
    torch.testing.assert_close(out.loss.double(), ref_loss, atol=atol, rtol=rtol)
    stats = (out.pg_loss, out.kl, out.clip_frac_low, out.clip_frac_high, out.dual_clip_frac)
    for got, want in zip(stats, ref_stats, strict=True):
        assert not got.requires_grad
        torch.testing.assert_close(got.double(), want, atol=atol, rtol=rtol)
    assert ref_stats[2] > 0 and ref_stats[3] > 0                      # both clip bounds were exercised
    assert (ref_stats[4] > 0) == (dual_clip is not None)              # and the dual clip when on
    atol, rtol = TOLERANCES[dtype]["grad"]
    assert leaf.grad.dtype == dtype
    torch.testing.assert_close(leaf.grad.double(), ref_grad, atol=atol, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_clip_by_hand(backend):
    # ratio = [1.5, 0.5, 1], A = [1, -1, 2], clip range [0.8, 1.28]
    # t0: -min(1.5, 1.28) = -1.28 (high clip, no gradient)
    # t1: -min(-0.5, -0.8) = 0.8 (low clip, no gradient)
    # t2: -min(2, 2) = -2, d/dlp = -A * ratio = -2
    # token_mean: (-1.28 + 0.8 - 2) / 3 = -0.82667; grad [0, 0, -2/3]; each clip fraction 1/3
    device = _device(backend)
    lp = torch.tensor([[math.log(1.5), math.log(0.5), 0.0]], device=device, requires_grad=True)
    zeros = torch.zeros(1, 3, device=device)
    out = fused_policy_loss(lp, zeros, zeros, torch.tensor([[1.0, -1.0, 2.0]], device=device),
                            torch.ones(1, 3, device=device), **TERMS, tis_cap=None, kl_coef=0.0,
                            aggregation="token_mean", backend=backend)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-2.48 / 3, abs=1e-6)
    torch.testing.assert_close(lp.grad.cpu(), torch.tensor([[0.0, 0.0, -2 / 3]]))
    assert out.clip_frac_low.item() == pytest.approx(1 / 3) and out.clip_frac_high.item() == pytest.approx(1 / 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dual_clip_by_hand(backend):
    # ratio = [1.5, 0.5], A = [-1, -1], dual clip 1.4
    # t0: -min(-1.5, -1.28) = 1.5 > 1.4 * |A| -> capped at 1.4, no gradient; dual clip fraction 1/2
    # t1: -min(-0.5, -0.8) = 0.8 (low clip, no gradient) < 1.4: unchanged
    # token_mean: (1.4 + 0.8) / 2 = 1.1; grad [0, 0]
    device = _device(backend)
    lp = torch.tensor([[math.log(1.5), math.log(0.5)]], device=device, requires_grad=True)
    zeros = torch.zeros(1, 2, device=device)
    out = fused_policy_loss(lp, zeros, None, torch.full((1, 2), -1.0, device=device), torch.ones(1, 2, device=device),
                            **TERMS, tis_cap=None, kl_coef=0.0, aggregation="token_mean", dual_clip=1.4,
                            backend=backend)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(1.1, abs=1e-6)
    assert not lp.grad.any() and out.dual_clip_frac.item() == pytest.approx(0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tis_and_kl_by_hand(backend):
    # One token, lp = old = 0 (ratio 1), A = 1, behaviour = -ln 4 -> exp(old - behaviour) = 4, capped at 2:
    # pg = -1 * 2 = -2, d pg / d lp = -A * ratio * tis = -2.
    # ref = ln 2: k3 = exp(ln 2) - ln 2 - 1 = 1 - ln 2; d k3 / d lp = 1 - exp(ref - lp) = -1.
    # loss = -2 + 0.5 * (1 - ln 2); grad = -2 + 0.5 * -1 = -2.5
    device = _device(backend)
    lp = torch.zeros(1, 1, device=device, requires_grad=True)
    full = lambda v: torch.full((1, 1), v, device=device)  # noqa: E731
    out = fused_policy_loss(lp, full(0.0), full(-math.log(4)), full(1.0), full(1.0), full(math.log(2)), **TERMS,
                            tis_cap=2.0, kl_coef=0.5, aggregation="token_mean", backend=backend)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-2 + 0.5 * (1 - math.log(2)), abs=1e-6)
    assert out.kl.item() == pytest.approx(1 - math.log(2), abs=1e-6)
    assert lp.grad.item() == pytest.approx(-2.5, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_mask_and_poisoned_padding_give_zero(backend):
    # Padding may hold -inf log-probs (vLLM) or NaN; with nothing masked in the loss is 0, not NaN.
    lp, old, behaviour, adv, mask, ref = _batch(3, 20, torch.float32, _device(backend))
    lp[:, -4:], old[:, -4:], behaviour[:, -4:] = float("nan"), float("-inf"), float("inf")
    mask[:, -4:] = 0.0
    leaf = lp.clone().requires_grad_()
    out = fused_policy_loss(leaf, old, behaviour, adv, mask, ref, **TERMS, tis_cap=2.0, kl_coef=0.1,
                            aggregation="seq_mean_token_mean", backend=backend)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(leaf.grad).all() and not leaf.grad[:, -4:].any()
    empty = fused_policy_loss(leaf, old, behaviour, adv, torch.zeros_like(mask), ref, **TERMS, tis_cap=2.0,
                              kl_coef=0.1, aggregation="token_mean", backend=backend)
    assert empty.loss.item() == 0.0 and empty.clip_frac_low.item() == 0.0


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_micro_batches_add_up_to_the_batch(aggregation):
    # With the full batch's token and sequence counts, the halves' losses and gradients sum to the whole's.
    lp, old, behaviour, adv, mask, ref = _batch(6, 11, torch.float32, "cpu")
    knobs = dict(**TERMS, tis_cap=2.0, kl_coef=0.1, aggregation=aggregation, seq_sum_normaliser=11.0)
    counts = dict(num_tokens=mask.sum().item(), num_sequences=float((mask.sum(1) > 0).sum()))
    whole_lp = lp.clone().requires_grad_()
    whole = fused_policy_loss(whole_lp, old, behaviour, adv, mask, ref, **knobs)
    whole.loss.backward()
    halves_lp = lp.clone().requires_grad_()
    total = sum(fused_policy_loss(halves_lp[rows], old[rows], behaviour[rows], adv[rows], mask[rows], ref[rows],
                                  **knobs, **counts).loss for rows in (slice(0, 3), slice(3, 6)))
    total.backward()
    torch.testing.assert_close(total, whole.loss)
    torch.testing.assert_close(halves_lp.grad, whole_lp.grad)


def test_sequence_advantages_broadcast_over_tokens():
    lp, old, behaviour, adv, mask, ref = _batch(4, 9, torch.float32, "cpu")
    knobs = dict(**TERMS, tis_cap=None, kl_coef=0.0, aggregation="token_mean")
    per_sequence = adv[:, 0]                                                          # [B]
    a = fused_policy_loss(lp, old, None, per_sequence, mask, **knobs)
    b = fused_policy_loss(lp, old, None, per_sequence[:, None].expand(4, 9), mask, **knobs)
    torch.testing.assert_close(a.loss, b.loss)


@pytest.mark.parametrize("change,message", [
    (dict(kl_coef=0.1), "kl_coef: .* needs ref_logprobs"),
    (dict(aggregation="seq_mean_token_sum"), "seq_sum_normaliser"),
    (dict(aggregation="sum"), "aggregation: must be one of"),
    (dict(clip_low=1.0), "clip_low, clip_high"),
    (dict(num_tokens=0.0), "num_tokens: must be > 0"),
    (dict(dual_clip=1.0), "dual_clip: must be > 1"),
])
def test_bad_arguments_name_the_argument(change, message):
    lp, old, behaviour, adv, mask, _ref = _batch(2, 5, torch.float32, "cpu")
    knobs = {**TERMS, "tis_cap": 2.0, "kl_coef": 0.0, "aggregation": "token_mean", **change}
    with pytest.raises(ValueError, match=message):
        fused_policy_loss(lp, old, behaviour, adv, mask, None, **knobs)


def test_shape_mismatch_names_the_tensor():
    lp, old, behaviour, adv, mask, _ref = _batch(2, 5, torch.float32, "cpu")
    with pytest.raises(ValueError, match="old_logprobs: shape"):
        fused_policy_loss(lp, old[:, :4], behaviour, adv, mask, **TERMS, tis_cap=2.0, kl_coef=0.0,
                          aggregation="token_mean")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("dual_clip", [None, 1.4])
def test_equals_learner_algos_policy_loss(backend, aggregation, dual_clip):
    # The pure implementation the learner falls back to (PPO-clip, TIS, k3 KL in the loss), in float64.
    from learner.algos import AlgoConfig, PolicyLossInput, policy_loss

    lp, old, behaviour, adv, mask, ref = _batch(5, 37, torch.float32, _device(backend), seed=3)
    config = AlgoConfig.model_validate({
        "policy_loss": {"type": "ppo_clip", **TERMS, "dual_clip": dual_clip}, "tis": {"cap": 2.0}, "kl": {"coef": 0.1, "estimator": "k3"},
        "aggregation": aggregation, "seq_sum_normaliser": 37.0})
    pure_lp = lp.double().requires_grad_()
    pure = policy_loss(PolicyLossInput(pure_lp, old.double(), behaviour.double(), adv.double(), mask.double(),
                                       ref.double()), config)
    pure.loss.backward()
    fused_lp = lp.clone().requires_grad_()
    fused = fused_policy_loss(fused_lp, old, behaviour, adv, mask, ref, **TERMS, tis_cap=2.0, kl_coef=0.1,
                              aggregation=aggregation, dual_clip=dual_clip, seq_sum_normaliser=37.0, backend=backend)
    fused.loss.backward()
    close = dict(atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(fused.loss.double(), pure.loss, **close)
    torch.testing.assert_close(fused_lp.grad.double(), pure_lp.grad, atol=1e-7, rtol=1e-5)
    for name in ("pg_loss", "kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac"):
        torch.testing.assert_close(getattr(fused, name).double(), getattr(pure.stats, name).double(), **close)
