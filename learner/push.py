"""Weight push: serialise the adapter once per version, stream it concurrently to every generator.

A generator that fails or is slow neither blocks the others nor the training step: each push runs
as its own task with a deadline; a generator whose previous push is still in flight skips the
versions produced meanwhile and gets the newest one when that push ends. A failed generator gets
the next version pushed, or fetches the newest itself through GetPolicy. Every push carries the
version's `policy_version`, which only grows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import safetensors.torch
from torch import Tensor

from learner import metrics
from learner.config import PushSettings
from rlfleet.adapters import AdapterPayload
from rlfleet.clients import GeneratorClient
from rlfleet.clients.resolve import expand_replicas, replica_config
from rlfleet.config import ClientConfig

log = logging.getLogger(__name__)


def serialise_adapter(config_json: str, tensors: dict[str, Tensor], policy_version: int,
                      base_model_id: str, run_id: str = "") -> AdapterPayload:
    """The adapter as in-memory safetensors bytes (PEFT's tensor names) plus its PEFT config."""
    weights = safetensors.torch.save(tensors, metadata={"format": "pt"})
    payload = AdapterPayload(policy_version=policy_version, base_model_id=base_model_id, config_json=config_json,
                             weights=weights, run_id=run_id)
    _ = payload.checksum  # hashed here, once per version and off the event loop, not when each push starts
    return payload


@dataclass(frozen=True)
class PushOutcome:
    """How one push to one generator ended."""

    target: str
    policy_version: int
    ok: bool
    seconds: float
    error: str = ""


class AdapterPusher:
    """Pushes adapter versions to every generator; remembers what each one acknowledged."""

    def __init__(self, generators: list[str], settings: PushSettings, client: ClientConfig):
        self.generators = generators
        """Targets; a `dns:///name:port` one is resolved at every push and each address pushed to separately."""
        self.settings = settings
        self.client = client
        self.acked: dict[str, int] = {}
        self.latest: AdapterPayload | None = None
        self._inflight: dict[str, asyncio.Task] = {}
        self._clients: dict[str, GeneratorClient] = {}
        self._sources: dict[str, str] = {}  # address -> the configured target it was resolved from

    async def push(self, payload: AdapterPayload) -> list[PushOutcome]:
        """Makes `payload` the newest version and sends it to every generator not busy with an older push.

        A busy generator gets the newest version as soon as its current push ends (versions in
        between are skipped), so every reachable generator converges to the newest version. Returns
        the outcomes of the pushes started here, once they (and their catch-ups) are done.
        """
        self.latest = payload
        replicas = await asyncio.to_thread(expand_replicas, self.generators)
        self._sources.update(replicas)
        targets = list(replicas)
        started = []
        for target in targets:
            if target in self._inflight and not self._inflight[target].done():
                metrics.PUSHES.labels("deferred_busy").inc()
                continue
            task = asyncio.ensure_future(self._serve_target(target))
            self._inflight[target] = task
            started.append(task)
        return list(await asyncio.gather(*started))

    async def _serve_target(self, target: str) -> PushOutcome:
        """Pushes the newest version to `target` until it has it (or a push fails)."""
        while True:
            payload = self.latest
            outcome = await self._push_one(target, payload)
            if not outcome.ok or self.latest.policy_version <= payload.policy_version:
                return outcome

    async def _push_one(self, target: str, payload: AdapterPayload) -> PushOutcome:
        start = time.perf_counter()
        try:
            reply = await asyncio.wait_for(self._client(target).load_adapter(
                payload, self.settings.chunk_bytes, timeout=self.settings.timeout_seconds), self.settings.timeout_seconds)
        except Exception as err:  # noqa: BLE001 - one generator's failure must not reach the others or training
            metrics.PUSHES.labels("failed").inc()
            log.warning("push of version %d to %s failed: %s", payload.policy_version, target, err)
            return PushOutcome(target, payload.policy_version, False, time.perf_counter() - start, str(err))
        self.acked[target] = max(self.acked.get(target, 0), int(reply.policy_version))
        metrics.PUSHES.labels("ok").inc()
        metrics.PUSH_BYTES.inc(payload.nbytes)
        metrics.GENERATOR_VERSION.labels(target).set(self.acked[target])
        seconds = time.perf_counter() - start
        metrics.PUSH_SECONDS.observe(seconds)
        return PushOutcome(target, payload.policy_version, True, seconds)

    def _client(self, target: str) -> GeneratorClient:
        if target not in self._clients:
            self._clients[target] = GeneratorClient(target, replica_config(self.client, self._sources[target]))
        return self._clients[target]

    async def drain(self, timeout: float) -> None:
        """Waits up to `timeout` seconds for pushes in flight (at shutdown)."""
        pending = [t for t in self._inflight.values() if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def close(self) -> None:
        for task in self._inflight.values():
            task.cancel()
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
