"""The PushRollouts queue: bounded, idempotent by batch_id, resumable cursor."""

from __future__ import annotations

import asyncio

import pytest

from learner.admission import BatchLimits
from learner.queue_source import QueueSource
from rlfleet.errors import InvalidRequest, NotReady, Overloaded
from tests.unit.learner.rollout_fixtures import fixed_batch

# The tiny model's byte vocabulary; fixed_batch's prompts + completions are at most 14 tokens.
LIMITS = BatchLimits(vocab_size=262, max_len=64, policy_version=0)


def _queue(max_queued: int, **kwargs) -> QueueSource:
    queue = QueueSource(max_queued=max_queued, **kwargs)
    queue.set_limits(LIMITS)
    return queue


def test_full_queue_refuses_and_keeps_what_it_accepted():
    queue = _queue(2)
    assert queue.offer(fixed_batch("a")) and queue.offer(fixed_batch("b"))
    with pytest.raises(Overloaded):
        queue.offer(fixed_batch("c"))
    assert queue.depth == 2
    first = asyncio.run(queue.next_batch())
    assert first.batch_id == "a"
    assert queue.offer(fixed_batch("c"))  # refused earlier, so not remembered: the re-send is accepted


def test_duplicate_batch_ids_are_ignored_and_counted():
    queue = _queue(4)
    assert queue.offer(fixed_batch("a"))
    assert not queue.offer(fixed_batch("a"))
    assert (queue.accepted, queue.duplicates, queue.depth) == (1, 1, 1)


def test_state_remembers_consumed_ids_only():
    queue = _queue(4)
    queue.offer(fixed_batch("a"))
    queue.offer(fixed_batch("b"))
    asyncio.run(queue.next_batch())  # "a" trained on; "b" still queued when the checkpoint is taken
    state = queue.state_dict()
    restored = _queue(4)
    restored.load_state_dict(state)
    assert restored.consumed == 1
    assert not restored.offer(fixed_batch("a"))  # already trained on before the restart
    assert restored.offer(fixed_batch("b"))  # was only queued: its producer's re-send must be trained on


def test_missing_ref_logprobs_are_refused_when_the_reference_service_provides_them():
    queue = _queue(4, require_ref_logprobs=True)
    with pytest.raises(InvalidRequest, match=r"^groups\[0\]\.samples\[0\]\.ref_logprobs"):
        queue.offer(fixed_batch("a"))
    assert queue.offer(fixed_batch("b", with_ref=True))
    assert queue.depth == 1


def test_batches_wait_for_the_limits_then_must_fit_them():
    queue = QueueSource(max_queued=4)
    with pytest.raises(NotReady):   # the model (and a resumed checkpoint's version) not loaded yet
        queue.offer(fixed_batch("a"))
    queue.set_limits(LIMITS)
    with pytest.raises(InvalidRequest, match=r"^groups\[0\]\.policy_version: 3 is not a version"):
        queue.offer(fixed_batch("future", policy_version=3))
    assert queue.offer(fixed_batch("a"))   # not remembered while refused: the same id is accepted later
    queue.set_limits(BatchLimits(262, 64, policy_version=3))
    assert queue.offer(fixed_batch("future", policy_version=3))
    assert (queue.accepted, queue.depth) == (2, 2)
