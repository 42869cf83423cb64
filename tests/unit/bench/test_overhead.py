"""Unit tests of the overhead benchmark's step traffic: right number of calls and message sizes."""

from __future__ import annotations

import struct

from bench.overhead import StepShape, _echo_request, step_exchanges


def test_step_exchanges_cover_every_call_of_a_step():
    shape = StepShape(prompts=5, group_size=3, completion_tokens=4, prompt_tokens=6, prompts_per_request=2)
    exchanges = step_exchanges(shape)
    kinds = [e.kind for e in exchanges]
    # Generate calls: ceil(5 / 2) = 3 streaming 2 + 2 + 1 groups; one Score and one LogProbs call for all 5 groups
    assert kinds.count("rollout") == 3
    assert [len(e.replies) for e in exchanges if e.kind == "rollout"] == [2, 2, 1]
    assert kinds.count("reward") == 1 and kinds.count("reference") == 1
    assert len(next(e for e in exchanges if e.kind == "reward").request.items) == 5 * 3
    group = exchanges[0].replies[0]
    assert len(group.completions) == 3 and len(group.completions[0].token_ids) == 4
    ref = next(e for e in exchanges if e.kind == "reference")
    # every reference sequence is prompt + completion = 6 + 4 tokens; its reply holds 4 log-probs per sequence
    assert [len(s.token_ids) for s in ref.request.sequences] == [10] * 15
    assert [len(r.logprobs) for r in ref.replies[0].results] == [4] * 15
    # two groups per call: ceil(5 / 2) = 3 Score calls of 2 + 2 + 1 groups of 3
    per_two = step_exchanges(StepShape(5, 3, 4, 6, prompts_per_request=2, groups_per_score_call=2))
    assert [len(e.request.items) for e in per_two if e.kind == "reward"] == [6, 6, 3]


def test_echo_request_header_names_the_reply_sizes():
    shape = StepShape(prompts=2, group_size=2, completion_tokens=3, prompt_tokens=2, prompts_per_request=2)
    exchange = step_exchanges(shape)[0]
    payload = _echo_request(exchange)
    count, first, second = struct.unpack_from("<3I", payload)
    assert count == 2
    assert [first, second] == [r.ByteSize() for r in exchange.replies]
    assert payload[12:] == exchange.request.SerializeToString()
