"""GAE advantages and returns over masked tokens, and the clipped critic loss."""

from __future__ import annotations

import pytest
import torch

from learner.algos import AdvantageInput, AlgoConfig, compute_advantages, value_loss

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
