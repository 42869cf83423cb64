"""The likelihood reward model's score: the mean log-probability of the completion's tokens, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlfleet.reward_score import mean_completion_logprob


def test_mean_logprob_of_the_completion_tokens_only():
    # vocabulary of 2; position t's logits predict token t + 1. Row 0: tokens [0, 1, 1, 0], completion from
    # index 2, length 4: targets 1 (predicted at position 1 with logits [0, ln 3] -> p = 3/4) and 0 (predicted
    # at position 2 with logits [0, 0] -> p = 1/2): s = (ln 3/4 + ln 1/2) / 2. Position 0's prediction (token 1,
    # part of the prompt) is not counted. Row 1: one completion token (index 1, p = 1/2), then padding.
    logits = torch.tensor([[[0.0, 5.0], [0.0, math.log(3)], [0.0, 0.0], [9.0, 9.0]],
                           [[0.0, 0.0], [7.0, -7.0], [7.0, -7.0], [7.0, -7.0]]])  # [B=2, T=4, V=2]
    input_ids = torch.tensor([[0, 1, 1, 0], [1, 0, 1, 1]])  # [2, 4]
    scores = mean_completion_logprob(logits, input_ids, starts=torch.tensor([2, 1]), lengths=torch.tensor([4, 2]))
    assert scores.tolist() == pytest.approx([(math.log(3 / 4) + math.log(1 / 2)) / 2, math.log(1 / 2)])
