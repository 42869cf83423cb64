"""Rollout domain types: proto round trip and length-invariant errors naming the field."""

from __future__ import annotations

import pytest

from rlfleet.errors import InvalidRequest
from rlfleet.rollouts import Batch, FinishReason, Group, RewardStatus, Sample, batch_from_proto, batch_to_proto


def _batch() -> Batch:
    samples = [Sample(token_ids=[5, 6, 2], logprobs=[-0.5, -1.0, -0.25], finish_reason=FinishReason.STOP, text="ab",
                      reward=1.0, reward_components={"acc": 1.0}, ref_logprobs=[-0.375, -1.125, -0.3125]),
               Sample(token_ids=[7], logprobs=[-2.0], finish_reason=FinishReason.LENGTH, reward=0.0,
                      reward_status=RewardStatus.TIMEOUT)]
    return Batch("b1", [Group("p0", [1, 2, 3], samples, policy_version=4, prompt_text="q", columns={"answer": 12})], "test")


def test_round_trip():
    batch = _batch()
    assert batch_from_proto(batch_to_proto(batch)) == batch
    assert batch.policy_versions == [4] and batch.num_samples == 2 and batch.groups[0].samples[1].truncated


def test_length_mismatch_names_the_field():
    pb = batch_to_proto(_batch())
    del pb.groups[0].samples[0].ref_logprobs[-1]
    with pytest.raises(InvalidRequest, match=r"groups\[0\]\.samples\[0\]\.ref_logprobs"):
        batch_from_proto(pb)


def test_missing_behaviour_logprobs_and_empty_batch():
    pb = batch_to_proto(_batch())
    del pb.groups[0].samples[1].completion.logprobs[:]
    with pytest.raises(InvalidRequest, match=r"samples\[1\]\.completion\.logprobs"):
        batch_from_proto(pb)
    pb.ClearField("groups")
    with pytest.raises(InvalidRequest, match="^groups"):
        batch_from_proto(pb)


def test_non_finite_reward_and_bad_columns():
    pb = batch_to_proto(_batch())
    pb.groups[0].samples[0].reward = float("nan")
    with pytest.raises(InvalidRequest, match=r"samples\[0\]\.reward"):
        batch_from_proto(pb)
    pb = batch_to_proto(_batch())
    pb.groups[0].columns["answer"] = "not json"
    with pytest.raises(InvalidRequest, match="columns"):
        batch_from_proto(pb)
