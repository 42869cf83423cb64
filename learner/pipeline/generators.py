"""The set of generators the pipeline spreads Generate calls over; replicas join and leave while it runs.

A target is an address (`host:port`) or a DNS name (`dns:///generator:50051`) that stands for every
replica behind it (`docker compose --scale`, a Kubernetes headless Service). Names are resolved
again every `refresh_seconds`, so a generator added mid-run is used without a restart; one that
fails is benched for a back-off period, then probed with a health check before it gets work again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from dataclasses import dataclass, field

from grpc_health.v1 import health_pb2, health_pb2_grpc

from learner.pipeline import metrics
from rlfleet.client import make_channel
from rlfleet.config import ClientConfig
from rlfleet.v1 import generator_pb2_grpc

log = logging.getLogger(__name__)


@dataclass
class Endpoint:
    """One generator replica and what the pipeline knows about it."""

    address: str
    stub: generator_pb2_grpc.GeneratorServiceStub
    health: health_pb2_grpc.HealthStub
    channel: object
    inflight: int = 0
    failures: int = 0
    policy_version: int = -1   # newest version seen from it (responses, GetInfo); -1 = unknown
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


def expand_target(target: str) -> list[str]:
    """Every `host:port` a target stands for: all A/AAAA records of a `dns:///` name, else the target itself."""
    if not target.startswith("dns:"):
        return [target]
    hostport = target.split("///", 1)[-1] if "///" in target else target[4:]
    host, _, port = hostport.rpartition(":")
    try:
        infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    addresses = sorted({info[4][0] for info in infos})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


class GeneratorPool:
    """Picks the least-loaded healthy generator; benches failing ones; re-resolves names."""

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
        found = [a for t in self.targets for a in await asyncio.to_thread(expand_target, t)]
        for address in found:
            if address not in self.endpoints:
                channel = make_channel(address, self.client.model_copy(update={"max_attempts": 1}))
                self.endpoints[address] = Endpoint(address, generator_pb2_grpc.GeneratorServiceStub(channel),
                                                   health_pb2_grpc.HealthStub(channel), channel)
                log.info("generator %s joined", address)
        for address in [a for a in self.endpoints if a not in found]:
            endpoint = self.endpoints.pop(address)
            if endpoint.inflight == 0:
                await endpoint.channel.close()
            log.info("generator %s left (no longer resolved)", address)
        metrics.GENERATORS.set(sum(e.up for e in self.endpoints.values()))

    async def _probe(self, endpoint: Endpoint) -> bool:
        try:
            reply = await endpoint.health.Check(health_pb2.HealthCheckRequest(), timeout=2.0)
        except Exception:  # noqa: BLE001 - any failure means "still down"
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    async def acquire(self) -> Endpoint:
        """The least-loaded generator that is up (probing benched ones whose back-off has passed); waits while none is."""
        while True:
            await self.refresh()
            candidates = sorted(self.endpoints.values(), key=lambda e: (e.inflight, e.failures))
            for endpoint in candidates:
                if endpoint.up and (endpoint.failures == 0 or await self._probe(endpoint)):
                    endpoint.failures = 0
                    endpoint.begin()
                    self._waiting_logged = False
                    return endpoint
                if endpoint.up:
                    endpoint.down_until = time.monotonic() + self.backoff_seconds
            if not self._waiting_logged:
                log.warning("no generator is reachable (%s); pipeline paused until one answers",
                            ", ".join(self.endpoints) or "no address resolved")
                self._waiting_logged = True
            await asyncio.sleep(min(self.backoff_seconds, 1.0))
            await self.refresh(force=True)

    def release(self, endpoint: Endpoint, failed: bool = False) -> None:
        endpoint.end()
        if failed:
            endpoint.failures += 1
            endpoint.down_until = time.monotonic() + self.backoff_seconds
            metrics.GENERATOR_FAILURES.inc()
            metrics.GENERATORS.set(sum(e.up for e in self.endpoints.values()))

    def busy_seconds(self) -> float:
        return sum(e.busy_seconds for e in self.endpoints.values())

    async def close(self) -> None:
        for endpoint in self.endpoints.values():
            await endpoint.channel.close()
