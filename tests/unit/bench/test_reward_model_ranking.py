"""bench.reward_model_ranking's arithmetic, by hand: pairwise accuracy on the policy's pairs and the top pick's reward."""

from __future__ import annotations

import pytest

from bench.reward_model_ranking import ranking


def test_pairs_the_rule_ranks_apart_and_the_top_pick():
    # reverse:abc -> cba. Rule rewards (accuracy + 0.5 x similarity): "cba" 1.5, "cbb" 0.5 x 2/3 = 1/3,
    # "abc" 0.5 x 1/3 = 1/6, and a second "cba" ties the first (no pair). Pairs the rule ranks apart with
    # distinct texts: (cba, cbb) x2, (cba, abc) x2, (cbb, abc) = 5. Scores rank cbb over both cba's and
    # abc lowest: right on (cba, abc) x2 and (cbb, abc), wrong on (cba, cbb) x2 -> 3 / 5. The top pick
    # is "cbb" (1/3); group mean (1.5 + 1/3 + 1/6 + 1.5) / 4 = 0.875; best 1.5.
    groups = [("reverse:abc", "cba", ["cba", "cbb", "abc", "cba"])]
    result = ranking(groups, [1.0, 2.0, 0.0, 1.5])
    assert result["policy_pairs"] == 5
    assert result["pairwise_accuracy"] == pytest.approx(3 / 5)
    assert result["top_pick_reward"] == pytest.approx(1 / 3)
    assert result["group_mean_reward"] == pytest.approx(0.875)
    assert result["group_best_reward"] == 1.5
