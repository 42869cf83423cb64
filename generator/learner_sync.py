"""Start-up policy pull: a generator that joins a running job fetches the learner's current adapter first."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from generator.core import Generator
from rlfleet.adapters.receive import receive_adapter
from rlfleet.client import make_channel
from rlfleet.config import ClientConfig
from rlfleet.errors import NotReady
from rlfleet.v1 import learner_pb2, learner_pb2_grpc

log = logging.getLogger(__name__)

_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)


async def pull_current_policy(core: Generator, address: str, client: ClientConfig, wait_seconds: float) -> int:
    """Loads the learner's current adapter into `core`; returns its version (0: the learner has none yet).

    Retries transient failures with backoff until `wait_seconds` have passed, then raises NotReady:
    serving the base model while training is under way would produce stale rollouts silently.
    """
    deadline = time.monotonic() + wait_seconds
    backoff = 0.25
    async with make_channel(address, client) as channel:
        stub = learner_pb2_grpc.LearnerServiceStub(channel)
        while True:
            remaining = deadline - time.monotonic()
            try:
                return await _pull_once(core, stub, timeout=min(client.timeout_seconds, max(remaining, 0.1)))
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    log.info("learner %s has no adapter yet: serving the base model", address)
                    return 0
                if err.code() not in _TRANSIENT or time.monotonic() + backoff > deadline:
                    raise NotReady(f"learner {address}: GetPolicy failed: {err.code().name} {err.details()}") from err
                log.info("learner %s not ready (%s); retrying in %.2f s", address, err.code().name, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


async def _pull_once(core: Generator, stub: learner_pb2_grpc.LearnerServiceStub, timeout: float) -> int:
    call = stub.GetPolicy(learner_pb2.GetPolicyRequest(newer_than=0), timeout=timeout, wait_for_ready=True)
    async with receive_adapter(call, core.staging_dir) as received:
        result = await core.load_adapter(received.payload, received.first_chunk_at)
    log.info("pulled policy v%d from the learner in %.3f s", result.policy_version, result.load_seconds)
    return result.policy_version
