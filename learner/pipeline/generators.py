"""The set of generators the pipeline spreads Generate calls over; replicas join and leave while it runs.

A target is an address (`host:port`) or a DNS name (`dns:///generator:50051`) that stands for every
replica behind it (`docker compose --scale`, a Kubernetes headless Service). Names are resolved
again every `refresh_seconds`, so a generator added mid-run is used without a restart. No replica
gets work before it has answered a health check SERVING: a new one (resolved while its model is
still loading) and one that failed are probed first, and one whose probe fails is benched for a
back-off period before the next probe.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from learner.pipeline import metrics
from rlfleet.clients import GeneratorClient, expand_target
from rlfleet.clients.resolve import replica_config
from rlfleet.config import ClientConfig

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """One generator replica and what the pipeline knows about it."""

    address: str
    client: GeneratorClient
    inflight: int = 0
    failures: int = 0
    policy_version: int = -1   # newest version seen from it (responses, GetInfo); -1 = unknown
    ready: bool = False        # answered SERVING since it joined or last failed: it may get work
    down_until: float = 0.0
    busy_seconds: float = 0.0
    _busy_since: float | None = field(default=None, repr=False)

    @property
    def up(self) -> bool:
        return time.monotonic() >= self.down_until

    def begin(self) -> None:
        self.inflight += 1
        if self._busy_since is None:
            self._busy_since = time.perf_counter()

    def end(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._busy_since is not None:
            self.busy_seconds += time.perf_counter() - self._busy_since
            self._busy_since = None


class GeneratorPool:
    """Picks the least-loaded generator that passed a health probe; benches failing ones; re-resolves names."""

    def __init__(self, targets: list[str], client: ClientConfig, backoff_seconds: float = 2.0,
                 refresh_seconds: float = 5.0):
        self.targets = targets
        self.client = client
        self.backoff_seconds = backoff_seconds
        self.refresh_seconds = refresh_seconds
        self.endpoints: dict[str, Endpoint] = {}
        self._refreshed = 0.0
        self._lock = asyncio.Lock()
        self._waiting_logged = False

    async def refresh(self, force: bool = False) -> None:
        async with self._lock:  # one resolution at a time; concurrent callers wait for its result
            if force or time.monotonic() - self._refreshed >= self.refresh_seconds:
                await self._resolve()

    async def _resolve(self) -> None:
        self._refreshed = time.monotonic()
        found = {a: t for t in self.targets for a in await asyncio.to_thread(expand_target, t)}
        for address, target in found.items():
            if address not in self.endpoints:
                # No retries inside a call: a failed Generate is resubmitted to another generator instead.
                config = replica_config(self.client, target).model_copy(update={"max_attempts": 1})
                client = GeneratorClient(address, config)
                self.endpoints[address] = Endpoint(address, client)
                log.info("generator %s joined", address)
        for address in [a for a in self.endpoints if a not in found]:
            endpoint = self.endpoints.pop(address)
            if endpoint.inflight == 0:
                await endpoint.client.close()
            log.info("generator %s left (no longer resolved)", address)
        self._count()

    async def acquire(self) -> Endpoint:
        """The least-loaded ready generator (probing new ones, and benched ones whose back-off has passed);
        waits while none is."""
        while True:
            await self.refresh()
            candidates = sorted(self.endpoints.values(), key=lambda e: (e.inflight, e.failures))
            for endpoint in candidates:
                if endpoint.up and (endpoint.ready or await self._probe(endpoint)):
                    endpoint.begin()
                    self._waiting_logged = False
                    return endpoint
            if not self._waiting_logged:
                log.warning("no generator is reachable (%s); pipeline paused until one answers",
                            ", ".join(self.endpoints) or "no address resolved")
                self._waiting_logged = True
            await asyncio.sleep(min(self.backoff_seconds, 1.0))
            await self.refresh(force=True)

    async def _probe(self, endpoint: Endpoint) -> bool:
        """Health-checks a replica that is not known ready; benches it for the back-off when it is not SERVING."""
        if await endpoint.client.serving():
            log.info("generator %s is SERVING: it gets work", endpoint.address)
            endpoint.ready, endpoint.failures = True, 0
        else:
            endpoint.ready = False
            endpoint.down_until = time.monotonic() + self.backoff_seconds
        self._count()
        return endpoint.ready

    def release(self, endpoint: Endpoint, failed: bool = False) -> None:
        endpoint.end()
        if failed:
            endpoint.failures += 1
            endpoint.ready = False   # probed again before it gets more work
            endpoint.down_until = time.monotonic() + self.backoff_seconds
            metrics.GENERATOR_FAILURES.inc()
            self._count()

    def _count(self) -> None:
        metrics.GENERATORS.set(sum(e.up and e.ready for e in self.endpoints.values()))

    def busy_seconds(self) -> float:
        return sum(e.busy_seconds for e in self.endpoints.values())

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.client.close()
