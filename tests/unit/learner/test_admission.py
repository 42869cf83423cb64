"""The batch check every rollout passes before training: each hostile field refused by name, good batches untouched."""

from __future__ import annotations

import dataclasses

import pytest

from learner.admission import BatchLimits, check_batch, keep_valid_groups
from rlfleet.errors import InvalidRequest
from tests.unit.learner.rollout_fixtures import fixed_batch

# fixed_batch: 2 groups x 4 samples over byte ids < 256, prompts of 2..5 and completions of 3..9 tokens.
LIMITS = BatchLimits(vocab_size=262, max_len=64, policy_version=5)
NAN, INF = float("nan"), float("inf")


def _spoil(group: int, sample: int, **fields):
    """fixed_batch(with_ref=True) with fields of one sample replaced."""
    batch = fixed_batch(with_ref=True, policy_version=2)
    target = batch.groups[group].samples[sample]
    batch.groups[group].samples[sample] = dataclasses.replace(target, **{
        k: (v(target) if callable(v) else v) for k, v in fields.items()})
    return batch


def _with_group(**fields):
    batch = fixed_batch(policy_version=2)
    batch.groups[1] = dataclasses.replace(batch.groups[1], **fields)
    return batch


def _first(values, index, value):
    return values[:index] + [value] + values[index + 1:]


CASES = {
    "out-of-vocabulary completion token": (
        _spoil(1, 2, token_ids=lambda s: _first(s.token_ids, 1, 262)), "groups[1].samples[2].completion.token_ids[1]"),
    "negative token": (_spoil(0, 0, token_ids=lambda s: _first(s.token_ids, 0, -1)),
                       "groups[0].samples[0].completion.token_ids[0]"),
    "out-of-vocabulary prompt token": (_with_group(prompt_ids=[1, 99999]), "groups[1].prompt_ids[1]"),
    "NaN logprob": (_spoil(0, 3, logprobs=lambda s: _first(s.logprobs, 2, NAN)),
                    "groups[0].samples[3].completion.logprobs[2]"),
    "positive logprob": (_spoil(0, 3, logprobs=lambda s: _first(s.logprobs, 0, 7.0)),
                         "groups[0].samples[3].completion.logprobs[0]"),
    "inf ref_logprob": (_spoil(1, 0, ref_logprobs=lambda s: _first(s.ref_logprobs, 1, -INF)),
                        "groups[1].samples[0].ref_logprobs[1]"),
    "NaN advantage": (_spoil(1, 1, advantages=lambda s: _first([0.5] * len(s.token_ids), 0, NAN)),
                      "groups[1].samples[1].advantages[0]"),
    "advantages of the wrong length": (_spoil(1, 1, advantages=[0.5]), "groups[1].samples[1].advantages"),
    "NaN reward": (_spoil(0, 1, reward=NAN), "groups[0].samples[1].reward"),
    "inf reward component": (_spoil(0, 1, reward_components={"correct": INF}),
                             "groups[0].samples[1].reward_components['correct']"),
    # prompt (2 to 5) + 63 completion tokens > 64: longer than the model
    "over-length": (_spoil(1, 3, token_ids=[65] * 63, logprobs=[-1.0] * 63, ref_logprobs=[-1.0] * 63),
                    "groups[1].samples[3].completion.token_ids"),
    "future policy_version": (_with_group(policy_version=6), "groups[1].policy_version"),
    "absurd policy_version": (_with_group(policy_version=2**63 - 1), "groups[1].policy_version"),
    "negative policy_version": (_with_group(policy_version=-1), "groups[1].policy_version"),
    "empty prompt": (_with_group(prompt_ids=[]), "groups[1].prompt_ids"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_hostile_field_is_refused_by_name(case):
    batch, field = CASES[case]
    with pytest.raises(InvalidRequest) as err:
        check_batch(batch, LIMITS)
    assert err.value.field == field


def test_good_batches_pass_at_the_limits():
    check_batch(fixed_batch(with_ref=True, policy_version=5), LIMITS)   # the newest version is allowed
    exactly = _spoil(0, 0, token_ids=[261] * 59, logprobs=[0.0] * 59, ref_logprobs=[-1e4] * 59)
    exactly.groups[0] = dataclasses.replace(exactly.groups[0], prompt_ids=[0] * 5)
    check_batch(exactly, LIMITS)   # 5 + 59 = 64 tokens, the last id of the vocabulary, log-prob 0
    check_batch(fixed_batch(), BatchLimits(262, None, 0))   # no known length limit


def test_the_loop_keeps_the_good_groups_and_says_why_the_others_went():
    batch = _spoil(1, 2, token_ids=lambda s: _first(s.token_ids, 1, 262))
    kept, errors = keep_valid_groups(batch, LIMITS)
    assert [g.prompt_id for g in kept.groups] == ["p0"] and kept.batch_id == batch.batch_id
    assert [e.field for e in errors] == ["groups[1].samples[2].completion.token_ids[1]"]
    good = fixed_batch()
    assert keep_valid_groups(good, LIMITS) == (good, [])
    nothing, errors = keep_valid_groups(fixed_batch(policy_version=9), LIMITS)
    assert nothing is None and len(errors) == 2
