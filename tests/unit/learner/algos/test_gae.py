"""GAE advantages and returns over masked tokens, the clipped critic loss and the critic's stats."""

from __future__ import annotations

import pytest
import torch

from learner.algos import (
    AdvantageInput,
    AlgoConfig,
    compute_advantages,
    explained_variance,
    value_clip_frac,
    value_loss,
)

F64 = torch.float64


def _gae(values, mask, rewards, **advantage):
    inp = AdvantageInput(rewards=torch.tensor(rewards, dtype=F64), group_ids=torch.arange(len(rewards)),
                         mask=torch.tensor(mask, dtype=F64), values=torch.tensor(values, dtype=F64))
    return compute_advantages(inp, AlgoConfig(advantage={"type": "gae", "whiten": False, **advantage}))


def test_backward_recursion_by_hand():
    # gamma 1, lambda 0.5, V = [1, 2, 3], reward 4 on the last token:
    # t2: delta = 4 + 0 - 3 = 1, A = 1
    # t1: delta = 0 + 3 - 2 = 1, A = 1 + 0.5 * 1 = 1.5
    # t0: delta = 0 + 2 - 1 = 1, A = 1 + 0.5 * 1.5 = 1.75;  returns = A + V = [2.75, 3.5, 4]
    out = _gae([[1.0, 2.0, 3.0]], [[1.0, 1.0, 1.0]], [4.0], gamma=1.0, lam=0.5)
    torch.testing.assert_close(out.advantages, torch.tensor([[1.75, 1.5, 1.0]], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[2.75, 3.5, 4.0]], dtype=F64))


def test_untrained_tokens_are_skipped_and_padding_stays_zero():
    # row 0: mask [1, 0, 1, 0] (tool output at t1, padding at t3), V = [1, 99, 3, 50], gamma 0.5, lambda 1
    # t2 is the last trained token: delta = 4 - 3 = 1, A = 1
    # t0's next trained token is t2: delta = 0 + 0.5 * 3 - 1 = 0.5, A = 0.5 + 0.5 * 1 = 1
    #   (lambda 1: Monte-Carlo return 0.5 * 4 = 2 minus V = 1); returns = [2, 0, 4, 0]
    # row 1 has no trained token: all zeros
    out = _gae([[1.0, 99.0, 3.0, 50.0], [5.0, 5.0, 5.0, 5.0]], [[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]],
               [4.0, 1.0], gamma=0.5, lam=1.0)
    torch.testing.assert_close(out.advantages, torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0] * 4], dtype=F64))
    torch.testing.assert_close(out.returns, torch.tensor([[2.0, 0.0, 4.0, 0.0], [0.0] * 4], dtype=F64))


def test_token_rewards_enter_each_step_and_whitening_normalises_over_the_mask():
    # gamma 1, lambda 1, V = 0: A_t = return-to-go = [0.5 + (-1) + 2, -1 + 2, 2] = [1.5, 1, 2]
    inp = AdvantageInput(rewards=torch.tensor([2.0], dtype=F64), group_ids=torch.zeros(1), values=torch.zeros(1, 4, dtype=F64),
                         mask=torch.tensor([[1.0, 1.0, 1.0, 0.0]], dtype=F64),
                         token_rewards=torch.tensor([[0.5, -1.0, 0.0, 9.0]], dtype=F64))
    raw = compute_advantages(inp, AlgoConfig(advantage={"type": "gae", "lam": 1.0, "whiten": False}))
    torch.testing.assert_close(raw.advantages, torch.tensor([[1.5, 1.0, 2.0, 0.0]], dtype=F64))
    # whitened: mean 1.5, population std sqrt((0 + 0.25 + 0.25) / 3) = sqrt(1/6); returns keep raw values
    white = compute_advantages(inp, AlgoConfig(advantage={"type": "gae", "lam": 1.0, "eps": 0.0}))
    std = (1 / 6) ** 0.5
    torch.testing.assert_close(white.advantages, torch.tensor([[0.0, -0.5 / std, 0.5 / std, 0.0]], dtype=F64))
    torch.testing.assert_close(white.returns, raw.returns)


def test_gae_needs_values():
    inp = AdvantageInput(rewards=torch.zeros(1), group_ids=torch.zeros(1), mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="values"):
        compute_advantages(inp, AlgoConfig(advantage={"type": "gae"}))


def test_clipped_value_loss_by_hand():
    # clip 0.2: V_clip = old + clip(V - old) = [0.5 + 0.2, 2.5 - 0.2] = [0.7, 2.3]
    # t0: max((1 - 2)^2, (0.7 - 2)^2) = 1.69 (clipped term: no gradient) -> 0.845
    # t1: max((2 - 2.5)^2, (2.3 - 2.5)^2) = 0.25 -> 0.125; d/dV = (2 - 2.5) / 2 tokens = -0.25
    values = torch.tensor([[1.0, 2.0]], dtype=F64, requires_grad=True)
    loss = value_loss(values, torch.tensor([[0.5, 2.5]], dtype=F64), torch.tensor([[2.0, 2.5]], dtype=F64),
                      torch.ones(1, 2, dtype=F64), clip=0.2)
    loss.backward()
    assert loss.item() == pytest.approx((0.845 + 0.125) / 2)
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.25]], dtype=F64))


def test_value_loss_gradcheck():
    old = torch.tensor([[0.0, 1.0, -1.0], [0.5, 0.5, 0.5]], dtype=F64)
    returns = torch.tensor([[1.0, 0.0, 0.0], [2.0, -1.0, 0.4]], dtype=F64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=F64)
    values = torch.tensor([[0.1, 1.5, -0.95], [0.3, 0.9, 0.5]], dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: value_loss(v, old, returns, mask, clip=0.2), (values,))


# Two rows as the trainer hands them over: row 0 as in test_clipped_value_loss_by_hand, row 1 one
# trained token (its 9.9 is padding). clip 0.2:
#   row 0: t0 0.845 (the clipped term), t1 0.125
#   row 1: V - old = -0.3 -> V_clip = 0.1; max((0 - 1)^2, (0.1 - 1)^2) = 1 -> 0.5 (unclipped)
V = torch.tensor([[1.0, 2.0], [0.0, 9.9]], dtype=F64)
OLD = torch.tensor([[0.5, 2.5], [0.3, 0.0]], dtype=F64)
RETURNS = torch.tensor([[2.0, 2.5], [1.0, 0.0]], dtype=F64)
MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=F64)


@pytest.mark.parametrize(("mode", "expected"), [
    ("token_mean", (0.845 + 0.125 + 0.5) / 3),                          # 0.49
    ("seq_mean_token_mean", ((0.845 + 0.125) / 2 + 0.5) / 2),           # 0.4925
    ("seq_mean_token_sum", ((0.845 + 0.125) / 4 + 0.5 / 4) / 2),        # C = 4
])
def test_value_loss_of_micro_batches_adds_up_to_the_mini_batch(mode, expected):
    # the trainer passes the mini-batch's 3 tokens and 2 sequences to each micro-batch (one row each)
    whole = value_loss(V, OLD, RETURNS, MASK, 0.2, mode, seq_sum_normaliser=4.0)
    parts = sum(value_loss(V[r:r + 1], OLD[r:r + 1], RETURNS[r:r + 1], MASK[r:r + 1], 0.2, mode, 3.0, 2.0, 4.0)
                for r in range(2))
    assert whole.item() == pytest.approx(expected)
    assert parts.item() == pytest.approx(expected)


def test_value_clip_fraction_counts_tokens_whose_clipped_term_wins():
    # only row 0's t0 takes the clipped term: 1 of 3 trained tokens; with the mini-batch's 6 tokens: 1/6
    assert value_clip_frac(V, OLD, RETURNS, MASK, 0.2).item() == pytest.approx(1 / 3)
    assert value_clip_frac(V, OLD, RETURNS, MASK, 0.2, num_tokens=6.0).item() == pytest.approx(1 / 6)


def test_explained_variance_by_hand():
    # residuals R - V on the trained tokens: [1, 0.5, 1], mean 5/6, variance (1 + 4 + 1) / 36 / 3 = 1/18
    # returns [2, 2.5, 1], mean 11/6, variance (1 + 16 + 25) / 36 / 3 = 7/18 -> EV = 1 - 1/7 = 6/7
    assert explained_variance(V, RETURNS, MASK).item() == pytest.approx(6 / 7)
    assert explained_variance(RETURNS, RETURNS, MASK).item() == pytest.approx(1.0)
    assert torch.isnan(explained_variance(V, torch.ones_like(V), MASK))  # constant returns: nothing to explain
