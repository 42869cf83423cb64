"""The one retry loop of every client: transient gRPC failures are retried with backoff, bounded or not.

gRPC's service config already retries UNAVAILABLE / RESOURCE_EXHAUSTED a few times within one call
(`channel.service_config`); this loop is the longer wait on top, for a service that is down for
seconds or minutes (a restarting reward server pauses the learner's pipeline; a generator that
starts before the learner waits for it). Anything but a transient status is raised at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import grpc

log = logging.getLogger(__name__)

T = TypeVar("T")

# Worth waiting out: the service is down or restarting, the call ran out of time, or it pushed back.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                       grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class Retry:
    """How long and how often a client retries a call that failed with a transient status."""

    backoff_seconds: float = 0.25
    """Wait before the first retry."""
    max_backoff_seconds: float = 5.0
    """The wait doubles after each failure up to this."""
    give_up_after_seconds: float | None = None
    """Raise the last error once this much time has passed since the first attempt; None waits for ever."""
    codes: frozenset[grpc.StatusCode] = TRANSIENT
    """Status codes retried; any other is raised at once."""

    @classmethod
    def constant(cls, seconds: float, give_up_after_seconds: float | None = None) -> Retry:
        """The same wait between every attempt."""
        return cls(seconds, seconds, give_up_after_seconds)


async def call_with_retry(call: Callable[[float], Awaitable[T]], what: str, timeout: float, retry: Retry | None,
                          on_retry: Callable[[], None] | None = None) -> T:
    """Awaits `call(deadline_seconds)` until it succeeds or fails with a non-transient status (raised at once).

    Each attempt gets `timeout` seconds, and no more than what is left of `retry`'s bound; with
    `retry=None` there is one attempt. Logs once when `what` becomes unavailable and once when it is back.
    """
    if retry is None:
        return await call(timeout)
    start = time.monotonic()
    backoff, paused = retry.backoff_seconds, False
    while True:
        bound = retry.give_up_after_seconds
        left = None if bound is None else bound - (time.monotonic() - start)
        try:
            result = await call(timeout if left is None else min(timeout, max(left, 0.1)))
            break
        except grpc.aio.AioRpcError as err:
            if err.code() not in retry.codes or (bound is not None and time.monotonic() - start + backoff > bound):
                raise
            if on_retry is not None:
                on_retry()
            if not paused:
                log.warning("%s is unavailable (%s: %s); retrying", what, err.code().name, err.details())
                paused = True
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, retry.max_backoff_seconds)
    if paused:
        log.info("%s answered again after %.1f s", what, time.monotonic() - start)
    return result
