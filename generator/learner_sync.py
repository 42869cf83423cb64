"""Start-up policy pull: a generator that joins a running job fetches the learner's current adapter first."""

from __future__ import annotations

import logging

import grpc

from generator.core import Generator
from rlfleet.adapters import ReceivedAdapter
from rlfleet.clients import LearnerClient, Retry
from rlfleet.config import ClientConfig
from rlfleet.errors import NotReady

log = logging.getLogger(__name__)


async def pull_current_policy(core: Generator, address: str, client: ClientConfig, wait_seconds: float) -> int:
    """Loads the learner's current adapter into `core`; returns its version (0: the learner has none yet).

    Retries transient failures with backoff until `wait_seconds` have passed, then raises NotReady:
    serving the base model while training is under way would produce stale rollouts silently.
    """
    async def load(received: ReceivedAdapter) -> int:
        result = await core.load_adapter(received.payload, received.first_chunk_at)
        log.info("pulled policy v%d from the learner in %.3f s", result.policy_version, result.load_seconds)
        return result.policy_version

    async with LearnerClient(address, client) as learner:
        try:
            version = await learner.pull_policy(load, spool_dir=core.staging_dir,
                                                retry=Retry(0.25, 5.0, give_up_after_seconds=wait_seconds))
        except grpc.aio.AioRpcError as err:
            raise NotReady(f"learner {address}: GetPolicy failed: {err.code().name} {err.details()}") from err
    if version is None:
        log.info("learner %s has no adapter yet: serving the base model", address)
        return 0
    return version
