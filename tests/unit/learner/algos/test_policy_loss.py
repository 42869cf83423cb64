"""Policy losses: PPO-clip (clip-higher, dual clip), TIS, KL in the loss, GSPO, stats, micro-batch additivity."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from learner.algos import POLICY_LOSSES, AlgoConfig, PolicyLossInput, policy_loss
from learner.algos.config import PolicyLossConfig

F64 = torch.float64
# Four tokens of one sequence; log ratios log [1.5, 0.5, 1.5, 1], advantages [1, -1, -1, 2].
LOG_RATIO = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.5), 0.0]], dtype=F64)
ADVANTAGES = torch.tensor([[1.0, -1.0, -1.0, 2.0]], dtype=F64)


def _input(behaviour=None, ref=None, **kw) -> PolicyLossInput:
    old = torch.zeros(1, 4, dtype=F64)
    return PolicyLossInput(
        logprobs=LOG_RATIO.clone().requires_grad_(), old_logprobs=old,
        behaviour_logprobs=old if behaviour is None else behaviour, advantages=ADVANTAGES,
        mask=torch.ones(1, 4, dtype=F64), ref_logprobs=ref, **kw)


def _config(**kw) -> AlgoConfig:
    return AlgoConfig.model_validate({"tis": {"cap": None}, **kw})


def test_ppo_clip_higher_by_hand():
    # ratio will be [1.5, 0.5, 1.5, 1]; clip range [0.8, 1.28]
    # t0 A=+1: max(-1.5, -1.28) = -1.28 (clipped high, no gradient)
    # t1 A=-1: max(0.5, 0.8) = 0.8 (clipped low, no gradient)
    # t2 A=-1: max(1.5, 1.28) = 1.5 (a negative advantage is not clipped above): d/dlp = 1.5
    # t3 A=+2: -2, d/dlp = -2
    # token mean: (-1.28 + 0.8 + 1.5 - 2) / 4 = -0.245
    inp = _input()
    out = policy_loss(inp, _config())
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.245)
    torch.testing.assert_close(inp.logprobs.grad, torch.tensor([[0.0, 0.0, 1.5 / 4, -2 / 4]], dtype=F64))
    assert out.stats.clip_frac_low.item() == pytest.approx(0.25)
    assert out.stats.clip_frac_high.item() == pytest.approx(0.25)
    assert out.stats.ratio_mean.item() == pytest.approx((1.5 + 0.5 + 1.5 + 1) / 4)
    assert out.stats.pg_loss.item() == pytest.approx(-0.245)
    assert out.stats.tis_weight_mean.item() == 1 and out.stats.kl.item() == 0 and out.stats.entropy is None


def test_dual_clip_caps_negative_advantages():
    # dual clip 1.4: t2 (A=-1, ratio 1.5 > 1.4) becomes min(1.5, 1.4) = 1.4 with no gradient;
    # t1 (A=-1): min(0.8, 1.4) = 0.8 unchanged. loss = (-1.28 + 0.8 + 1.4 - 2) / 4 = -0.27
    inp = _input()
    out = policy_loss(inp, _config(policy_loss={"type": "ppo_clip", "dual_clip": 1.4}))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.27)
    torch.testing.assert_close(inp.logprobs.grad, torch.tensor([[0.0, 0.0, 0.0, -0.5]], dtype=F64))
    assert out.stats.dual_clip_frac.item() == pytest.approx(0.25)


def test_tis_weight_truncated_at_cap_multiplies_the_pg_loss():
    # behaviour = old - log [3, 0.5, 1, 1] -> exp(old - behaviour) = [3, 0.5, 1, 1], capped at 2 -> [2, 0.5, 1, 1]
    # loss = (2 * -1.28 + 0.5 * 0.8 + 1.5 - 2) / 4 = -2.66 / 4 = -0.665; gradient of t2 stays 1.5 / 4
    behaviour = -torch.log(torch.tensor([[3.0, 0.5, 1.0, 1.0]], dtype=F64))
    inp = _input(behaviour=behaviour)
    out = policy_loss(inp, _config(tis={"cap": 2.0}))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.665)
    torch.testing.assert_close(inp.logprobs.grad, torch.tensor([[0.0, 0.0, 1.5 / 4, -2 / 4]], dtype=F64))
    assert out.stats.tis_weight_mean.item() == pytest.approx(4.5 / 4)
    assert out.stats.tis_clip_frac.item() == pytest.approx(0.25)


@pytest.mark.parametrize(("estimator", "value", "grad"), [
    # r = ref - lp = log 2 on every token
    ("k1", -math.log(2), 1.0),  # k1 = -r, d/dlp = +1
    ("k2", 0.5 * math.log(2) ** 2, -math.log(2)),  # k2 = r^2/2, d/dlp = -r
    ("k3", 1 - math.log(2), -1.0),  # k3 = e^r - r - 1 = 2 - log 2 - 1, d/dlp = 1 - e^r = -1
])
def test_kl_in_the_loss_adds_coef_times_the_estimate(estimator, value, grad):
    inp = _input(ref=LOG_RATIO + math.log(2))
    out = policy_loss(inp, _config(kl={"coef": 0.1, "estimator": estimator}))
    out.loss.backward()
    assert out.loss.item() == pytest.approx(-0.245 + 0.1 * value)
    assert out.stats.kl.item() == pytest.approx(value)
    expected = torch.tensor([[0.0, 0.0, 1.5 / 4, -2 / 4]], dtype=F64) + 0.1 * grad / 4
    torch.testing.assert_close(inp.logprobs.grad, expected)


def test_kl_in_reward_mode_stays_out_of_the_loss_but_is_reported():
    out = policy_loss(_input(ref=LOG_RATIO + math.log(2)), _config(kl={"coef": 0.1, "mode": "reward"}))
    assert out.loss.item() == pytest.approx(-0.245)
    assert out.stats.kl.item() == pytest.approx(1 - math.log(2))


def test_kl_in_the_loss_without_reference_is_an_error_but_coef_zero_needs_none():
    with pytest.raises(ValueError, match="ref_logprobs"):
        policy_loss(_input(), _config(kl={"coef": 0.1}))
    assert policy_loss(_input(), _config(kl={"coef": 0.0})).loss.item() == pytest.approx(-0.245)


def test_entropy_is_reported_as_a_masked_mean():
    entropy = torch.tensor([[1.0, 2.0, 3.0, 6.0]], dtype=F64)
    assert policy_loss(_input(entropy=entropy), _config()).stats.entropy.item() == pytest.approx(3.0)


def test_gspo_clips_the_length_normalised_sequence_ratio():
    # seq 0: log ratios [0.1, 0.3] -> s = e^0.2 = 1.2214 inside [0.8, 1.28], A = +1 -> -s on both tokens
    # seq 1: log ratio [-0.5] (the 5 is padding) -> s = e^-0.5 = 0.6065, A = -1 -> clipped to 0.8
    # seq mean of token means: (-e^0.2 + 0.8) / 2
    # d/dlp of seq 0's tokens: -(1/2 seqs) * (1/2 tokens) * s = -s/4; seq 1 is clipped: 0
    logprobs = torch.tensor([[0.1, 0.3], [-0.5, 5.0]], dtype=F64, requires_grad=True)
    zeros = torch.zeros(2, 2, dtype=F64)
    inp = PolicyLossInput(logprobs=logprobs, old_logprobs=zeros, behaviour_logprobs=zeros,
                          advantages=torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=F64),
                          mask=torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64))
    config = _config(policy_loss={"type": "gspo", "clip_low": 0.2, "clip_high": 0.28},
                     aggregation="seq_mean_token_mean")
    out = policy_loss(inp, config)
    out.loss.backward()
    s = math.exp(0.2)
    assert out.loss.item() == pytest.approx((-s + 0.8) / 2)
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-s / 4, -s / 4], [0.0, 0.0]], dtype=F64))
    # 1 of 3 trained tokens is clipped low
    assert out.stats.clip_frac_low.item() == pytest.approx(1 / 3) and out.stats.clip_frac_high.item() == 0


def test_gspo_matches_the_sequence_level_objective_and_gradient():
    # L = -mean_i min(s_i A_i, clip(s_i) A_i), s_i = exp(mean_t(lp - old)), written at the sequence level
    torch.manual_seed(0)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    lp = (torch.randn(3, 3, dtype=F64) * 0.01).requires_grad_()
    old = torch.randn(3, 3, dtype=F64) * 0.01
    adv = torch.tensor([0.7, -1.2, 0.4], dtype=F64)
    s = (((lp - old) * mask).sum(-1) / mask.sum(-1)).exp()
    expected = -torch.minimum(s * adv, s.clamp(1 - 3e-4, 1 + 4e-4) * adv).mean()
    (expected_grad,) = torch.autograd.grad(expected, lp)
    inp = PolicyLossInput(logprobs=lp, old_logprobs=old, behaviour_logprobs=old, advantages=adv[:, None] * mask,
                          mask=mask)
    out = policy_loss(inp, _config(policy_loss={"type": "gspo"}, aggregation="seq_mean_token_mean"))
    (grad,) = torch.autograd.grad(out.loss, lp)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("policy", ["ppo_clip", "gspo"])
def test_gradcheck_float64(policy):
    # log ratios sit away from the clip bounds, where finite differences are exact enough
    old = torch.zeros(2, 3, dtype=F64)
    lp = torch.tensor([[0.5, -0.1, 0.05], [-0.5, 0.3, 0.1]], dtype=F64, requires_grad=True)
    behaviour = torch.tensor([[0.2, -0.3, 0.0], [0.1, 1.5, 0.0]], dtype=F64)
    ref = torch.tensor([[0.1, 0.2, -0.3], [0.0, 0.4, 0.2]], dtype=F64)
    adv = torch.tensor([[1.0, -0.5, 0.3], [-2.0, 0.7, 0.0]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    loss = {"type": policy}
    if policy == "gspo":
        # GSPO-token's gradient is the derivative of its value only for one advantage and one TIS
        # weight per sequence (its stop-gradient construction); wide clips keep the ratio unclipped.
        loss = {"type": policy, "clip_low": 0.9, "clip_high": 9.0}
        adv, behaviour = torch.tensor([[1.0], [-2.0]], dtype=F64).expand(2, 3), old
    config = _config(policy_loss=loss, kl={"coef": 0.3}, tis={"cap": 2.0}, aggregation="seq_mean_token_mean")

    def f(logprobs):
        inp = PolicyLossInput(logprobs=logprobs, old_logprobs=old, behaviour_logprobs=behaviour, advantages=adv,
                              mask=mask, ref_logprobs=ref)
        return policy_loss(inp, config).loss

    assert torch.autograd.gradcheck(f, (lp,))


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batch_losses_and_gradients_sum_to_the_mini_batch(aggregation):
    torch.manual_seed(1)
    B, T = 5, 7
    lengths = torch.tensor([7, 3, 1, 5, 2])
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)  # [B, T]
    lp = (torch.randn(B, T, dtype=F64) * 0.3).requires_grad_()
    old, behaviour, ref = (torch.randn(B, T, dtype=F64) * 0.3 for _ in range(3))
    adv = torch.randn(B, T, dtype=F64)
    config = _config(kl={"coef": 0.05}, tis={"cap": 1.5}, aggregation=aggregation, seq_sum_normaliser=7.0)

    def loss(rows, num_tokens=None, num_sequences=None):
        inp = PolicyLossInput(logprobs=lp[rows], old_logprobs=old[rows], behaviour_logprobs=behaviour[rows],
                              advantages=adv[rows], mask=mask[rows], ref_logprobs=ref[rows],
                              num_tokens=num_tokens, num_sequences=num_sequences)
        return policy_loss(inp, config)

    whole = loss(slice(None))
    (whole_grad,) = torch.autograd.grad(whole.loss, lp)
    parts = [loss(rows, float(mask.sum()), float(B)) for rows in (slice(0, 2), slice(2, 5))]
    (parts_grad,) = torch.autograd.grad(sum(p.loss for p in parts), lp)
    torch.testing.assert_close(sum(p.loss for p in parts), whole.loss)
    torch.testing.assert_close(parts_grad, whole_grad)
    for name in ("pg_loss", "kl", "clip_frac_low", "clip_frac_high", "ratio_mean", "tis_weight_mean"):
        torch.testing.assert_close(sum(getattr(p.stats, name) for p in parts), getattr(whole.stats, name))


def _variants(union) -> list[type]:
    """The config models of a discriminated union, each wrapped as Annotated[Model, Tag(...)]."""
    (members, _discriminator) = typing.get_args(union)
    return [typing.get_args(member)[0] for member in typing.get_args(members)]


def test_every_configurable_policy_loss_is_registered():
    names = {model.model_fields["type"].default for model in _variants(PolicyLossConfig)}
    assert names == set(POLICY_LOSSES) == {"ppo_clip", "gspo"}


def test_mismatched_shapes_name_the_field():
    with pytest.raises(ValueError, match="ref_logprobs"):
        PolicyLossInput(logprobs=torch.zeros(2, 3), old_logprobs=torch.zeros(2, 3), behaviour_logprobs=torch.zeros(2, 3),
                        advantages=torch.zeros(2, 3), mask=torch.ones(2, 3), ref_logprobs=torch.zeros(2, 4))


@pytest.mark.parametrize("policy", ["ppo_clip", "gspo"])
def test_nan_and_inf_on_padding_change_neither_loss_nor_gradient(policy):
    # the same batch twice: zeros on the padded tokens, then NaN / inf there (what a padded
    # old log-prob or a -inf behaviour log-prob can hold); loss, gradient and stats must agree
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64)
    pad = mask == 0

    def run(fill: float, fill_adv: float):
        lp = torch.where(pad, fill, torch.tensor([[0.2, -0.1, 0.0], [-0.3, 0.0, 0.0]], dtype=F64)).requires_grad_()
        inp = PolicyLossInput(
            logprobs=lp, old_logprobs=torch.where(pad, fill, 0.0 * lp.detach()),
            behaviour_logprobs=torch.where(pad, -fill, 0.0 * lp.detach()),
            advantages=torch.where(pad, fill_adv, torch.tensor([[1.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=F64)),
            mask=mask, ref_logprobs=torch.where(pad, fill, 0.1 + 0.0 * lp.detach()),
            entropy=torch.where(pad, fill, torch.ones_like(mask)))
        config = _config(policy_loss={"type": policy}, kl={"coef": 0.1}, tis={"cap": 2.0},
                         aggregation="seq_mean_token_mean")
        out = policy_loss(inp, config)
        out.loss.backward()
        return out, lp.grad

    clean, clean_grad = run(0.0, 0.0)
    for fill, fill_adv in ((float("nan"), float("nan")), (float("inf"), float("-inf"))):
        dirty, dirty_grad = run(fill, fill_adv)
        assert torch.isfinite(dirty.loss) and torch.isfinite(dirty_grad).all()
        torch.testing.assert_close(dirty.loss, clean.loss)
        torch.testing.assert_close(dirty_grad, clean_grad)
        for name in ("pg_loss", "kl", "ratio_mean", "tis_weight_mean", "entropy"):
            torch.testing.assert_close(getattr(dirty.stats, name), getattr(clean.stats, name), msg=name)
