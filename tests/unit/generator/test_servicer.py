"""Protobuf <-> domain conversion: the wire's zero/unset defaults and finish reasons."""

from __future__ import annotations

from generator.rollouts import Completion, GroupResult, TokenizedPrompt
from generator.servicer import batch_from_proto, group_to_proto, sampling_from_proto
from rlfleet.v1 import common_pb2, generator_pb2


def test_unset_sampling_fields_take_the_documented_defaults():
    s = sampling_from_proto(common_pb2.SamplingParams(), default_max_tokens=77)
    # n 0 -> 1, max_tokens 0 -> server default, temperature 0 = greedy, top_p unset -> 1, logprobs unset -> on
    assert (s.n, s.max_tokens, s.temperature, s.top_p, s.top_k, s.min_p, s.seed, s.logprobs) == (
        1, 77, 0.0, 1.0, 0, 0.0, None, True)
    s = sampling_from_proto(common_pb2.SamplingParams(n=4, max_tokens=9, temperature=0.5, top_p=0.5, top_k=3, seed=0,
                                                      stop=["\n"], stop_token_ids=[5], logprobs=False), 77)
    assert (s.n, s.max_tokens, s.top_p, s.top_k, s.seed, s.stop, s.stop_token_ids, s.logprobs) == (
        4, 9, 0.5, 3, 0, ("\n",), (5,), False)


def test_policy_version_unset_means_newest_and_zero_means_base():
    prompts = [generator_pb2.Prompt(prompt_id="a", messages=[common_pb2.ChatMessage(role="user", content="x")])]
    assert batch_from_proto(generator_pb2.GenerateRequest(prompts=prompts), 8).policy_version is None
    batch = batch_from_proto(generator_pb2.GenerateRequest(prompts=prompts, policy_version=0), 8)
    assert batch.policy_version == 0 and batch.prompts[0].messages == (("user", "x"),)


def test_group_to_proto_keeps_order_and_reasons():
    group = GroupResult(2, TokenizedPrompt("p", [1, 2], "ab"), [
        Completion([5, 6], [-0.5, -1.5], "length", "xy"), Completion([7], [-0.25], "stop", "z"),
        Completion([], [], "abort", "")], policy_version=3)
    msg = group_to_proto(group)
    assert (msg.prompt_index, msg.prompt_id, list(msg.prompt_ids), msg.policy_version) == (2, "p", [1, 2], 3)
    assert [c.finish_reason for c in msg.completions] == [
        common_pb2.FINISH_REASON_LENGTH, common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_ABORT]
    assert list(msg.completions[0].logprobs) == [-0.5, -1.5]
