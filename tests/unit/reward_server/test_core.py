"""Combining components on columns, checking returned values, calling forms, worker replies and config parsing."""

from __future__ import annotations

import json
import math
import pickle
from array import array

import pytest

from reward_server.config import RewardConfig, parse_reward
from reward_server.core import score_columns
from reward_server.items import Outcome, Outcomes, RewardSpec
from reward_server.replies import OUTCOMES, decode_reply, encode_outcomes
from reward_server.scripts import RewardFunction, call_batched, call_each, calling_form, check_value
from rlfleet.outcomes import BatchScores, ItemScore, RewardBatch, RewardItem, RewardStatus, combine
from rlfleet.workers.frames import MalformedReply

OK, ERROR, TIMEOUT, INVALID = RewardStatus.OK, RewardStatus.ERROR, RewardStatus.TIMEOUT, RewardStatus.INVALID_OUTPUT


def test_combine_weights_skips_none_and_takes_worst_status():
    specs = [RewardSpec("acc", 1.0, "function"), RewardSpec("fmt", 0.2, "builtin")]
    # acc: 1.0, None, ERROR boom, TIMEOUT slow;  fmt: 0.5, 1.0, 1.0, INVALID_OUTPUT nan
    acc = Outcomes([1.0, 0.0, 0.0, 0.0], [1], {2: Outcome(ERROR, error="boom"), 3: Outcome(TIMEOUT, error="slow")})
    fmt = Outcomes([0.5, 1.0, 1.0, 0.0], [], {3: Outcome(INVALID, error="nan")})
    scores = score_columns(specs, [acc, fmt], 4)
    assert scores.rewards[0] == pytest.approx(1.1)  # 1.0 * 1 + 0.2 * 0.5
    assert scores.item(1).reward == pytest.approx(0.2) and scores.item(1).components == {"fmt": 1.0}  # None: left out
    assert (scores.statuses[2], scores.rewards[2], scores.errors[2]) == (ERROR, 0.0, "acc: ERROR: boom")
    assert scores.item(2).components == {"fmt": 1.0}  # the OK function's component stays
    assert scores.statuses[3] is TIMEOUT  # TIMEOUT outranks INVALID_OUTPUT
    assert scores.errors[3] == "acc: TIMEOUT: slow; fmt: INVALID_OUTPUT: nan"
    assert sorted(scores.errors) == [2, 3]  # causes only for the items that are not OK
    # components as columns: NaN where absent (returned None, or failed)
    assert [math.isnan(v) for v in scores.components["acc"]] == [False, True, True, True]
    assert [math.isnan(v) for v in scores.components["fmt"]] == [False, False, False, True]


def test_columns_give_what_combine_gives_item_by_item():
    specs = [RewardSpec("a", 2.0, "function"), RewardSpec("b", -0.5, "function")]
    a = Outcomes([0.25, 0.0, 3.0, 0.0, 1.0], [1], {3: Outcome(ERROR, error="x")})
    b = Outcomes([1.0, 4.0, 0.0, 2.0, 0.0], [2, 4], {})
    scores = score_columns(specs, [a, b], 5)

    def one(out: Outcomes, name: str, i: int) -> ItemScore:
        if i in out.failures:
            failure = out.failures[i]
            return ItemScore(0.0, {}, failure.status, f"{failure.status.name}: {failure.error}")
        return ItemScore(0.0, {}) if i in out.absent else ItemScore(out.values[i], {name: out.values[i]})

    expected = [combine([("a", 2.0, one(a, "a", i)), ("b", -0.5, one(b, "b", i))]) for i in range(5)]
    assert scores.items() == expected
    # item 0: 2 * 0.25 - 0.5 * 1 = 0.0; item 1: a None, -0.5 * 4 = -2.0; item 2: 2 * 3 = 6.0, b None
    assert scores.rewards == [0.0, -2.0, 6.0, 0.0, 2.0]


def test_no_reward_function_scores_every_item_zero_ok():
    scores = score_columns([], [], 2)  # a service whose only reward, a model, is still loading
    assert (scores.rewards, scores.statuses, scores.components, scores.errors) == ([0.0, 0.0], [OK, OK], {}, {})


def test_a_total_that_overflows_is_invalid_output():
    specs = [RewardSpec("a", 10.0, "function")]
    scores = score_columns(specs, [Outcomes([1e308, 1.0])], 2)
    assert (scores.statuses, scores.rewards) == ([INVALID, OK], [0.0, 10.0])
    assert scores.errors == {0: "weighted total inf is not finite"}


def test_check_value_accepts_finite_numbers_and_none_only():
    assert check_value(True) == Outcome(OK, 1.0)
    assert check_value(None) == Outcome(OK, None)
    assert check_value(math.inf).status is INVALID
    assert check_value(float("nan")).status is INVALID
    assert check_value("1").status is INVALID
    assert check_value([1.0]).status is INVALID


def test_calling_forms_and_column_passing():
    def batched(prompts, completions, answer, **kw):
        return [float(c == a) for c, a in zip(completions, answer, strict=True)]

    def per_item(prompt, completion, answer=None):  # no **kwargs: only `answer` is passed
        return float(completion == answer)

    assert calling_form(batched) is True and calling_form(per_item) is False
    assert calling_form(lambda x, y: 0) is None
    batch = RewardBatch.from_items([RewardItem("p", "4", {"answer": "4", "extra": 1}), RewardItem("p", "5", {"answer": "4"})])
    assert batch.columns == {"answer": ["4", "4"], "extra": [1, None]}  # a missing value is None, as TRL passes it
    assert call_batched(RewardFunction("b", batched, True, "function", ""), batch).values == [1.0, 0.0]
    assert call_each(RewardFunction("i", per_item, False, "function", ""), batch).values == [1.0, 0.0]
    raised = call_batched(RewardFunction("b", lambda prompts, completions: 1 / 0, True, "function", ""), batch)
    assert raised == "ZeroDivisionError: division by zero"


def test_per_item_calls_keep_each_item_apart():
    def f(prompt, completion, finish_reason=None, completion_tokens=0, **columns):
        if completion == "raise":
            raise ValueError("no")
        if completion == "none":
            return None
        if completion == "nan":
            return math.nan
        if completion == "int":
            return 3  # an int is a number: 3.0
        return float(completion_tokens) + (0.5 if finish_reason == "length" else 0.0) + columns["w"]

    batch = RewardBatch(["p"] * 6, ["a", "raise", "none", "nan", "int", "b"], {"w": [0.25, 0, 0, 0, 0, 1.0]},
                        [7, 0, 0, 0, 0, 2], [None, None, None, None, None, "length"])
    out = call_each(RewardFunction("f", f, False, "function", ""), batch)
    # item 0: 7 tokens + 0.25 = 7.25; item 5: 2 tokens + 0.5 (length) + 1.0 = 3.5
    assert out.values == [7.25, 0.0, 0.0, 0.0, 3.0, 3.5]
    assert out.absent == [2]
    assert {i: (o.status, o.error) for i, o in out.failures.items()} == {
        1: (ERROR, "ValueError: no"), 3: (INVALID, "returned nan (not finite)")}


def test_a_column_named_like_a_keyword_reaches_the_function():
    def f(prompt, completion, **columns):
        return float(columns["class"])

    batch = RewardBatch(["p", "p"], ["a", "b"], {"class": [1, 2]})
    assert call_each(RewardFunction("f", f, False, "function", ""), batch).values == [1.0, 2.0]


def test_batched_wrong_length_is_invalid_output_for_every_item():
    out = call_batched(RewardFunction("s", lambda prompts, completions: [1.0], True, "function", ""),
                       RewardBatch(["p"] * 3, ["a", "b", "c"]))
    assert out.values == [0.0] * 3 and sorted(out.failures) == [0, 1, 2]
    assert out.failures[0] == Outcome(INVALID, error="returned 1 values for 3 items")


def test_worker_reply_round_trip_and_what_is_refused():
    out = Outcomes([0.5, 0.0, 0.0], [1], {2: Outcome(TIMEOUT, error="slow")})
    assert decode_reply(encode_outcomes(out), 3) == out
    assert decode_reply(json.dumps(["raised", "ValueError: x"]).encode(), 3) == "ValueError: x"

    def frame(values, tail) -> bytes:
        return OUTCOMES + array("d", values).tobytes() + json.dumps(tail).encode()

    assert decode_reply(frame([0.5, 7.0, 1.0], [[1], []]), 3).values == [0.5, 0.0, 1.0]  # absent adds nothing
    for bad in (frame([0.5, 1.0], [[], []]),                     # too few values
                frame([0.5, 1.0, math.inf], [[], []]),           # not finite
                frame([0.5, 1.0, math.nan], [[], []]),
                frame([0.5, 1.0, 1.0], [[3], []]),               # an index past the chunk
                frame([0.5, 1.0, 1.0], [[], [[0, "ok", ""]]]),   # a failure that is OK
                frame([0.5, 1.0, 1.0], [[], [[True, "error", ""]]]),
                frame([0.5, 1.0, 1.0], {"absent": []}),
                pickle.dumps(out),                                # never unpickled
                json.dumps(["ok", [0.5, 1.0, 1.0], [], []]).encode()):
        with pytest.raises(MalformedReply):
            decode_reply(bad, 3)


def test_batch_scores_item_and_from_items():
    scores = BatchScores([1.5, 0.0], [OK, ERROR], {"a": [1.0, math.nan], "b": [0.5, 2.0]}, {1: "a: ERROR: x"})
    assert scores.item(0) == ItemScore(1.5, {"a": 1.0, "b": 0.5})
    assert scores.item(1) == ItemScore(0.0, {"b": 2.0}, ERROR, "a: ERROR: x")
    batch = RewardBatch.from_items([RewardItem("p", "c", {}, 3), RewardItem("q", "d")])
    assert (batch.completion_tokens, batch.finish_reasons) == ([3, 0], None)  # no finish reason at all: None
    assert batch.slice(1, 2) == RewardBatch(["q"], ["d"], {}, [0], None)


def test_reward_flags_parse_and_validate():
    assert parse_reward("accuracy:0.5") == ("accuracy", 0.5)
    assert parse_reward("format") == ("format", 1.0)
    with pytest.raises(ValueError):
        parse_reward("bad name:1")
    with pytest.raises(ValueError):
        RewardConfig()  # nothing to serve
    with pytest.raises(ValueError):
        RewardConfig(reward=["a:1", "a:2"])
