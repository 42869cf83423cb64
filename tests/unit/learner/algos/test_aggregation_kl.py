"""Loss aggregation modes, KL estimators and the TIS weight on hand-derived cases."""

from __future__ import annotations

import math

import pytest
import torch

from learner.algos import aggregate, kl_penalty, tis_weight

F64 = torch.float64
# Row 0 trains 3 tokens [1, 2, 3], row 1 one token [4], row 2 none (e.g. overlong-filtered).
PER_TOKEN = torch.tensor([[1.0, 2.0, 3.0], [4.0, 9.0, 9.0], [9.0, 9.0, 9.0]], dtype=F64)
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=F64)


@pytest.mark.parametrize(("mode", "expected"), [
    ("token_mean", 10 / 4),  # (1 + 2 + 3 + 4) / 4 tokens
    ("seq_mean_token_mean", (6 / 3 + 4 / 1) / 2),  # row means 2 and 4 over 2 sequences with tokens
    ("seq_mean_token_sum", (6 / 4 + 4 / 4) / 2),  # row sums / C = 4, over 2 sequences
])
def test_aggregation_modes(mode, expected):
    assert aggregate(PER_TOKEN, MASK, mode, seq_sum_normaliser=4.0).item() == pytest.approx(expected)


def test_explicit_normalisers_replace_the_batch_counts():
    assert aggregate(PER_TOKEN, MASK, "token_mean", num_tokens=8.0).item() == pytest.approx(10 / 8)
    assert aggregate(PER_TOKEN, MASK, "seq_mean_token_mean", num_sequences=4.0).item() == pytest.approx(6 / 4)


def test_empty_mask_gives_zero_not_nan():
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum"):
        assert aggregate(PER_TOKEN, torch.zeros_like(MASK), mode, seq_sum_normaliser=4.0).item() == 0


def test_seq_mean_token_sum_needs_its_normaliser():
    with pytest.raises(ValueError, match="seq_sum_normaliser"):
        aggregate(PER_TOKEN, MASK, "seq_mean_token_sum")


def test_kl_estimators_by_hand():
    # lp = log 0.5, ref = log 0.25 -> r = ref - lp = log 0.5
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    r = math.log(0.5)
    assert kl_penalty(lp, ref, "k1").item() == pytest.approx(-r)  # log 2
    assert kl_penalty(lp, ref, "k2").item() == pytest.approx(r * r / 2)
    assert kl_penalty(lp, ref, "k3").item() == pytest.approx(0.5 - r - 1)  # e^r - r - 1
    assert kl_penalty(lp, lp, "k3").item() == 0


def test_k3_averages_to_the_true_kl():
    # policy p = [0.7, 0.2, 0.1], reference q = [0.4, 0.4, 0.2]: E_p[k1] = E_p[k3] = KL(p || q)
    p, q = torch.tensor([0.7, 0.2, 0.1], dtype=F64), torch.tensor([0.4, 0.4, 0.2], dtype=F64)
    true_kl = (p * (p / q).log()).sum()
    for estimator in ("k1", "k3"):
        torch.testing.assert_close((p * kl_penalty(p.log(), q.log(), estimator)).sum(), true_kl)


def test_kl_gradcheck():
    lp = torch.tensor([[-1.0, -0.2], [-2.0, -0.7]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-0.5, -0.9], [-2.5, -0.1]], dtype=F64)
    for estimator in ("k1", "k2", "k3"):
        assert torch.autograd.gradcheck(lambda x, e=estimator: kl_penalty(x, ref, e), (lp,))


def test_tis_weight_is_detached_and_truncated():
    old = torch.tensor([0.0, 0.0, 0.0], requires_grad=True)
    behaviour = torch.tensor([-2.0, 0.5, 0.0])
    weight = tis_weight(old, behaviour, cap=2.0)  # exp([2, -0.5, 0]) capped -> [2, e^-0.5, 1]
    torch.testing.assert_close(weight, torch.tensor([2.0, math.exp(-0.5), 1.0]))
    assert not weight.requires_grad
    torch.testing.assert_close(tis_weight(old, behaviour, cap=None), torch.ones(3))
