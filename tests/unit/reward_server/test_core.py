"""Combining components, checking returned values, calling forms and config parsing."""

from __future__ import annotations

import math

import pytest

from reward_server.config import RewardConfig, parse_reward
from reward_server.core import score_items
from reward_server.items import Outcome, RewardSpec
from reward_server.scripts import RewardFunction, call_batched, call_one, calling_form, check_value
from rlfleet.outcomes import RewardItem, RewardStatus


def test_combine_weights_skips_none_and_takes_worst_status():
    specs = [RewardSpec("acc", 1.0, "function"), RewardSpec("fmt", 0.2, "builtin")]
    outcomes = {
        "acc": [Outcome(RewardStatus.OK, 1.0), Outcome(RewardStatus.OK, None),
                Outcome(RewardStatus.ERROR, error="boom"), Outcome(RewardStatus.TIMEOUT, error="slow")],
        "fmt": [Outcome(RewardStatus.OK, 0.5), Outcome(RewardStatus.OK, 1.0), Outcome(RewardStatus.OK, 1.0),
                Outcome(RewardStatus.INVALID_OUTPUT, error="nan")],
    }
    scores = score_items(specs, outcomes, 4)
    assert scores[0].reward == pytest.approx(1.1)  # 1.0 * 1 + 0.2 * 0.5
    assert scores[1].reward == pytest.approx(0.2) and scores[1].components == {"fmt": 1.0}  # None left out, not 0
    assert (scores[2].status, scores[2].reward, scores[2].error) == (RewardStatus.ERROR, 0.0, "acc: ERROR: boom")
    assert scores[3].status is RewardStatus.TIMEOUT  # TIMEOUT outranks INVALID_OUTPUT
    assert "acc: TIMEOUT: slow" in scores[3].error and "fmt: INVALID_OUTPUT: nan" in scores[3].error


def test_check_value_accepts_finite_numbers_and_none_only():
    assert check_value(True) == Outcome(RewardStatus.OK, 1.0)
    assert check_value(None) == Outcome(RewardStatus.OK, None)
    assert check_value(math.inf).status is RewardStatus.INVALID_OUTPUT
    assert check_value(float("nan")).status is RewardStatus.INVALID_OUTPUT
    assert check_value("1").status is RewardStatus.INVALID_OUTPUT
    assert check_value([1.0]).status is RewardStatus.INVALID_OUTPUT


def test_calling_forms_and_column_passing():
    def batched(prompts, completions, answer, **kw):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def per_item(prompt, completion, answer=None):  # no **kwargs: only `answer` is passed
        return float(completion == answer)

    assert calling_form(batched) is True and calling_form(per_item) is False
    assert calling_form(lambda x, y: 0) is None
    items = [RewardItem("p", "4", {"answer": "4", "extra": 1}), RewardItem("p", "5", {"answer": "4"})]
    out = call_batched(RewardFunction("b", batched, True, "function", ""), items)
    assert [o.value for o in out] == [1.0, 0.0]
    assert call_one(RewardFunction("i", per_item, False, "function", ""), items[0]).value == 1.0
    raised = call_batched(RewardFunction("b", lambda prompts, completions: 1 / 0, True, "function", ""), items)
    assert raised == "ZeroDivisionError: division by zero"


def test_reward_flags_parse_and_validate():
    assert parse_reward("accuracy:0.5") == ("accuracy", 0.5)
    assert parse_reward("format") == ("format", 1.0)
    with pytest.raises(ValueError):
        parse_reward("bad name:1")
    with pytest.raises(ValueError):
        RewardConfig()  # nothing to serve
    with pytest.raises(ValueError):
        RewardConfig(reward=["a:1", "a:2"])
