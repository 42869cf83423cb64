"""The one FinishReason / RewardStatus vocabulary: severity order, wire mappings, and `combine`."""

from __future__ import annotations

import itertools

import pytest

from rlfleet.errors import InvalidRequest
from rlfleet.outcomes import (
    FinishReason,
    ItemScore,
    RewardStatus,
    combine,
    finish_reason_from_proto,
    finish_reason_to_proto,
    reward_status_from_proto,
    reward_status_to_proto,
    worst,
)
from rlfleet.v1 import common_pb2

OK, INVALID, ERROR, TIMEOUT = (RewardStatus.OK, RewardStatus.INVALID_OUTPUT, RewardStatus.ERROR,
                               RewardStatus.TIMEOUT)


def test_severity_order_is_ok_invalid_error_timeout():
    # The documented order, least to most severe: OK < INVALID_OUTPUT < ERROR < TIMEOUT.
    assert [s.severity for s in (OK, INVALID, ERROR, TIMEOUT)] == [0, 1, 2, 3]
    assert worst([ERROR, TIMEOUT]) is TIMEOUT     # the reward server's old order (TIMEOUT worst) ...
    assert worst([TIMEOUT, ERROR]) is TIMEOUT     # ... not the pipeline's old one (ERROR worst), in either order
    assert worst([OK, INVALID]) is INVALID
    assert worst([INVALID, ERROR, OK]) is ERROR
    assert worst([]) is OK


def test_worst_is_independent_of_order():
    for statuses in itertools.permutations([OK, INVALID, ERROR, TIMEOUT], 3):
        expected = max(statuses, key=[OK, INVALID, ERROR, TIMEOUT].index)
        assert worst(statuses) is expected


def test_wire_mappings_by_hand():
    assert [finish_reason_to_proto(r) for r in FinishReason] == [
        common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_ABORT]
    assert finish_reason_to_proto("length") == common_pb2.FINISH_REASON_LENGTH  # a StrEnum: plain strings work
    assert finish_reason_from_proto(common_pb2.FINISH_REASON_ABORT) is FinishReason.ABORT
    assert reward_status_to_proto(TIMEOUT) == common_pb2.REWARD_STATUS_TIMEOUT
    assert reward_status_from_proto(common_pb2.REWARD_STATUS_INVALID_OUTPUT) is INVALID
    for status in RewardStatus:
        assert reward_status_from_proto(reward_status_to_proto(status)) is status
    with pytest.raises(InvalidRequest, match="results\\[3\\].status"):
        reward_status_from_proto(common_pb2.REWARD_STATUS_UNSPECIFIED, "results[3].status")
    with pytest.raises(InvalidRequest, match="completion.finish_reason"):
        finish_reason_from_proto(9, "completion.finish_reason")


def test_combine_weights_merges_components_and_keeps_the_worst_status():
    # Two services: a = 1.0 (acc 1.0), b = 0.5 (acc 0.5, fmt 1.0), weights 1 and 2 -> 1.0 + 2 * 0.5 = 2.0.
    both_ok = combine([("a", 1.0, ItemScore(1.0, {"acc": 1.0})), ("b", 2.0, ItemScore(0.5, {"acc": 0.5, "fmt": 1.0}))])
    assert both_ok == ItemScore(2.0, {"acc": 1.0, "b/acc": 0.5, "fmt": 1.0}, OK, "")
    # b timed out and c erred: TIMEOUT is the worse one; no made-up total (0.0); both errors named.
    failed = combine([("a", 1.0, ItemScore(1.0, {"acc": 1.0})), ("b", 1.0, ItemScore(0.0, {}, TIMEOUT, "slow")),
                      ("c", 1.0, ItemScore(0.0, {}, ERROR))])
    assert (failed.reward, failed.status, failed.error) == (0.0, TIMEOUT, "b: slow; c: ERROR")
    assert failed.components == {"acc": 1.0}
    # 1e308 * 10 overflows to inf: INVALID_OUTPUT with the reason.
    overflow = combine([("a", 10.0, ItemScore(1e308, {"x": 1e308}))])
    assert (overflow.reward, overflow.status) == (0.0, INVALID)
    assert combine([]) == ItemScore(0.0, {}, OK, "")
