"""The pipeline's rollout step: issued dataset rows -> one Group each, generated at or after a given policy version.

    driver = SingleTurnDriver(pool, config, stats)
    async for row, group in driver.rollout(rows, min_version=3):
        ...   # one (row, group) per row, in the order they finish; failures are retried inside

This is the seam a multi-turn driver plugs into: `PipelineSource` only calls `rollout` and scores
what it yields. The single-turn driver sends the rows as few, large Generate calls (by default the
whole batch, split evenly over the generators that are up), so vLLM's continuous batching sees
every sequence at once; a call that fails sends the prompts it did not return to another generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc

from learner.pipeline import metrics
from learner.pipeline.config import PipelineConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.generators import Endpoint, GeneratorPool
from rlfleet.generation import PromptInput, Sampling
from rlfleet.rollouts import Group

log = logging.getLogger(__name__)


class GeneratorLagging(Exception):
    """A generator did not reach the policy version a request needs in time (a failed push, say)."""


@dataclass
class RolloutStats:
    """Counts of the calls a driver made (pipeline_accounting.json)."""

    generate_calls: int = 0
    generator_failures: int = 0


@dataclass(frozen=True)
class Dropped:
    """A row a driver could not roll out for a reason of its own (its environment would not start, say)."""

    prompt_id: str
    reason: str                  # a short label: the `outcome` of rlfleet_pipeline_prompts_total
    detail: str = ""


class RolloutDriver(ABC):
    """Turns rows into Groups; every group it yields was generated at policy version >= `min_version`."""

    @abstractmethod
    def rollout(self, rows: list[PromptRow], min_version: int) -> AsyncIterator[tuple[PromptRow, Group | Dropped]]:
        """Yields (row, group) once per row, `group.columns` set from the row; retries failed work itself.
        A row that cannot be rolled out at all comes back as Dropped instead of a group.

        Cancelling the iteration (closing the generator) cancels the work in flight."""

    async def close(self) -> None:
        """Releases the driver's own connections (the pipeline closes the generator pool)."""


class SingleTurnDriver(RolloutDriver):
    """One Generate call per generator for the rows of one issue (or calls of `prompts_per_request`)."""

    def __init__(self, pool: GeneratorPool, config: PipelineConfig, stats: RolloutStats | None = None):
        self.pool = pool
        self.config = config
        self.stats = stats or RolloutStats()
        self._calls = asyncio.Semaphore(config.max_inflight_requests)
        self._request_counter = 0
        self._running = 0

    async def rollout(self, rows: list[PromptRow], min_version: int) -> AsyncIterator[tuple[PromptRow, Group]]:
        results: asyncio.Queue[tuple[str, object]] = asyncio.Queue()
        calls: set[asyncio.Task] = set()

        async def launch(chunk_rows: list[PromptRow]) -> None:
            for chunk in await self._split(chunk_rows):
                task = asyncio.create_task(self._call(chunk, min_version, results))
                calls.add(task)
                task.add_done_callback(calls.discard)

        await launch(rows)
        try:
            for _ in range(len(rows)):
                while True:
                    kind, payload = await results.get()
                    if kind == "group":
                        yield payload
                        break
                    if kind == "retry":
                        await launch(payload)
                    else:
                        raise payload
        finally:
            for task in list(calls):
                task.cancel()
            await asyncio.gather(*calls, return_exceptions=True)

    async def _split(self, rows: list[PromptRow]) -> list[list[PromptRow]]:
        """Chunks of `prompts_per_request`, or one even share per generator that is up."""
        size = self.config.prompts_per_request
        if size is None:
            await self.pool.refresh()
            shares = max(1, sum(e.up for e in self.pool.endpoints.values()))
            size = math.ceil(len(rows) / shares)
        return [rows[i:i + size] for i in range(0, len(rows), size)]

    def _sampling(self) -> Sampling:
        self._request_counter += 1
        c = self.config
        return Sampling(n=c.group_size, max_tokens=c.max_tokens, temperature=c.temperature, top_p=c.top_p,
                        stop=tuple(c.stop), seed=c.seed * 1_000_003 + self._request_counter)

    async def _call(self, rows: list[PromptRow], min_version: int, results: asyncio.Queue) -> None:
        """One Generate call; the rows it did not return go back as a "retry" (another generator takes them)."""
        remaining: dict[str, list[PromptRow]] = {}
        for row in rows:
            remaining.setdefault(row.prompt_id, []).append(row)
        try:
            async with self._calls, self._counted():
                endpoint = await self.pool.acquire()
                start, failed = time.perf_counter(), False
                self.stats.generate_calls += 1
                try:
                    await self._wait_for_version(endpoint, min_version)
                    async for group in self._groups(endpoint, rows):
                        if isinstance(group, Group):
                            endpoint.policy_version = max(endpoint.policy_version, group.policy_version)
                        row = _pop(remaining, group.prompt_id)
                        if row is not None:
                            if isinstance(group, Group):
                                group.columns = dict(row.columns)
                            results.put_nowait(("group", (row, group)))
                except (grpc.aio.AioRpcError, GeneratorLagging) as err:
                    failed = True
                    self.stats.generator_failures += 1
                    reason = f"{err.code().name}: {err.details()}" if isinstance(err, grpc.aio.AioRpcError) else str(err)
                    log.warning("generator %s failed (%s); resubmitting %d prompts elsewhere", endpoint.address,
                                reason, sum(map(len, remaining.values())))
                finally:
                    self.pool.release(endpoint, failed)
                    metrics.GENERATE_LATENCY.observe(time.perf_counter() - start)
        except asyncio.CancelledError:
            raise
        except Exception as err:  # noqa: BLE001 - an unexpected failure stops the rollout, never hangs it
            results.put_nowait(("error", err))
            return
        left = [row for rows_of_id in remaining.values() for row in rows_of_id]
        if left:
            results.put_nowait(("retry", left))

    def _groups(self, endpoint: Endpoint, rows: list[PromptRow]) -> AsyncIterator[Group | Dropped]:
        """The rows' groups from `endpoint`, in the order they finish (learner/pipeline/multiturn.py overrides it)."""
        prompts = [PromptInput.from_dataset(row.prompt_id, row.prompt, self.config.chat_template) for row in rows]
        return endpoint.client.generate(prompts, self._sampling(), timeout=self.config.generate_timeout_seconds)

    @contextlib.asynccontextmanager
    async def _counted(self):
        self._running += 1
        metrics.INFLIGHT.set(self._running)
        try:
            yield
        finally:
            self._running -= 1
            metrics.INFLIGHT.set(self._running)

    async def _wait_for_version(self, endpoint: Endpoint, needed: int) -> None:
        """Waits until `endpoint` serves at least version `needed`, so no rollout is generated only to be stale.

        The learner pushes in the background and the pipeline issues the next batch at once; without
        this wait the first calls after an update ran on the old adapter.
        """
        deadline = time.monotonic() + self.config.version_wait_seconds
        while endpoint.policy_version < needed:
            endpoint.policy_version = (await endpoint.client.info(timeout=5.0)).policy_version
            if endpoint.policy_version >= needed:
                return
            if time.monotonic() > deadline:
                raise GeneratorLagging(f"serves policy v{endpoint.policy_version}, needs v{needed} "
                                       f"within {self.config.version_wait_seconds:.0f}s")
            await asyncio.sleep(0.05)


def _pop(remaining: dict[str, list[PromptRow]], prompt_id: str) -> PromptRow | None:
    rows = remaining.get(prompt_id)
    if not rows:
        return None
    row = rows.pop(0)
    if not rows:
        del remaining[prompt_id]
    return row
