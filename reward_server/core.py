"""The reward service's work, without gRPC: admit a request, fan it out to workers and the model, combine.

    core = RewardCore(config)
    core.start_workers()          # before any gRPC server exists (forking next to gRPC threads is unsafe)
    core.load_model()             # may take a while; health stays NOT_SERVING meanwhile
    scores = await core.score("req-1", [RewardItem(prompt, completion, {"answer": "4"})])
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import pickle
import time
from collections.abc import Sequence
from dataclasses import dataclass

import xxhash

from reward_server import metrics
from reward_server.config import RewardConfig
from reward_server.items import Outcome, RewardSpec
from reward_server.scripts import check_value
from reward_server.workers import WorkerPool
from rlfleet.errors import InvalidRequest, Overloaded
from rlfleet.outcomes import ItemScore, RewardItem, RewardStatus, combine
from rlfleet.workers.scripts import ScriptError, ScriptSource, script_version
from rlfleet.workers.worker_main import WorkerLimits

log = logging.getLogger(__name__)


def score_items(specs: Sequence[RewardSpec], outcomes: dict[str, list[Outcome]], n: int) -> list[ItemScore]:
    """Per item, `rlfleet.outcomes.combine` over the functions: weighted sum, worst status, every error named.

    A component that returned None is left out of the sum (not counted as 0); an item whose every
    component is None gets reward 0.0 with status OK and no components (TRL's nansum does the same).
    """
    columns = [(spec.name, spec.weight, outcomes[spec.name]) for spec in specs]
    return [combine([(name, weight, out[i].score(name)) for name, weight, out in columns]) for i in range(n)]


def content_key(request_id: str, items: list[RewardItem]) -> tuple[str, bytes]:
    """The dedupe key of a request: its id and a digest of its items, so that an id reused for other
    items is scored afresh rather than answered with the old result."""
    # pickle carries every field (columns in order) and is the fastest full serialisation here:
    # ~100 us for 64 items of 2 KB, XXH3-128 on top ~2 us.
    return request_id, xxhash.xxh3_128_digest(pickle.dumps(items, protocol=pickle.HIGHEST_PROTOCOL))


@dataclass
class _Shared:
    """Scoring work for one request_id and how many calls (the first and its retries) wait for it."""

    task: asyncio.Task
    waiters: int = 0


class RewardCore:
    """Reward functions in a worker pool, an optional reward model, idempotency and admission control."""

    def __init__(self, config: RewardConfig):
        self.config = config
        self.script = ScriptSource.read(config.script) if config.script else None
        limits = WorkerLimits(**config.limits.model_dump())
        self.pool = WorkerPool(self.script, config.workers, limits, config.item_timeout_seconds)
        self.model = None
        self.specs: list[RewardSpec] = []
        self.version = ""
        self._done: collections.OrderedDict[tuple[str, bytes], list[ItemScore]] = collections.OrderedDict()
        self._running: dict[tuple[str, bytes], _Shared] = {}
        self._window = metrics.WindowMean(config.metrics_window)

    def start_workers(self) -> None:
        """Starts the pool and resolves the configured reward names; raises ScriptError on any problem."""
        weights = self.config.weights()
        if self.script is None and not weights:  # a reward model alone: no worker needed
            self.version = script_version(None, [])
            return
        functions = self.pool.start()
        if not weights:  # every reward function of the script, weight 1
            weights = [(info.name, 1.0) for info in functions.values() if info.kind == "function"]
            if not weights:
                raise ScriptError(f"{self.script.path}: no reward functions found (define f(prompts, completions, "
                                  "**columns) or f(prompt, completion, **columns))")
        for name, weight in weights:
            if name not in functions:
                where = f"{self.script.path} or the built-ins" if self.script else "the built-ins"
                raise ScriptError(f"no reward function {name!r} in {where} (available: {', '.join(functions)})")
            info = functions[name]
            self.specs.append(RewardSpec(name, weight, info.kind, info.description, info.batched))
        self.version = script_version(self.script, weights)

    def load_model(self) -> None:
        """Loads the reward model if one is configured (after the server started: health says NOT_SERVING)."""
        if self.config.model is None:
            return
        from reward_server.model import RewardModel

        self.model = RewardModel(self.config.model, self.config.model_max_batch_tokens)
        self.specs.append(RewardSpec(self.config.model_name, self.config.model_weight, "model", self.model.description))
        weights = [(s.name, s.weight) for s in self.specs]
        self.version = script_version(self.script, weights, self.model.model_id)

    async def score(self, request_id: str, items: list[RewardItem]) -> list[ItemScore]:
        """Scores of `items` in order; the first answer for a request_id and the same items is reused by its retries.

        A retry that arrives while the first call still runs waits for the same work. The work is
        abandoned (queued chunks dropped, busy workers killed) once every caller waiting on it gave up.
        A request that could never fit the queue is InvalidRequest, not Overloaded (which callers retry).
        """
        if len(items) > self.config.max_queued_items:
            raise InvalidRequest("items", f"{len(items)} items in one request, more than the whole queue holds "
                                          f"(max_queued_items = {self.config.max_queued_items}); split the request")
        key = content_key(request_id, items) if request_id else None
        if key in self._done:
            metrics.DUPLICATE_REQUESTS.inc()
            return self._done[key]
        shared = self._running.get(key)
        if shared is not None:
            metrics.DUPLICATE_REQUESTS.inc()
        else:
            if self.pool.pending_items + len(items) > self.config.max_queued_items:
                metrics.REJECTED_ITEMS.inc(len(items))
                raise Overloaded(f"{self.pool.pending_items} items queued; at most {self.config.max_queued_items} "
                                 f"(max_queued_items) may wait; retry later")
            shared = _Shared(asyncio.ensure_future(self._score(items)))
            if key:
                self._running[key] = shared
        shared.waiters += 1
        try:
            scores = await asyncio.shield(shared.task)
        finally:
            shared.waiters -= 1
            if shared.waiters == 0 and not shared.task.done():
                shared.task.cancel()
            if shared.task.done() or shared.waiters == 0:
                self._running.pop(key, None)
        if key and self.config.dedupe_cache_size:
            self._done[key] = scores
            while len(self._done) > self.config.dedupe_cache_size:
                self._done.popitem(last=False)
        return scores

    def _chunks(self, items: list[RewardItem]) -> list[list[RewardItem]]:
        # Spread one request over the workers, but keep chunks big enough to amortise a pipe round trip.
        size = min(self.config.max_batch_items, max(8, math.ceil(len(items) / self.config.workers)))
        return [items[i:i + size] for i in range(0, len(items), size)]

    async def _score(self, items: list[RewardItem]) -> list[ItemScore]:
        chunks = self._chunks(items)
        submitted, waits = [], []
        for spec in self.specs:
            if spec.kind == "model":
                waits.append(self._score_model(spec, items))
                continue
            futures = [self.pool.submit(spec.name, chunk) for chunk in chunks]
            submitted += futures
            waits.append(self._gather(spec, futures))
        try:
            per_spec = await asyncio.gather(*waits)
        except asyncio.CancelledError:
            for future in submitted:  # the feeders skip these, or kill the worker running one
                future.cancel()
            raise
        outcomes = {spec.name: out for spec, out in zip(self.specs, per_spec, strict=True)}
        self._record(outcomes)
        return score_items(self.specs, outcomes, len(items))

    async def _gather(self, spec: RewardSpec, futures) -> list[Outcome]:
        start = time.perf_counter()
        out: list[Outcome] = []
        for future in futures:
            out += await asyncio.wrap_future(future)
            metrics.SCORE_LATENCY.labels(spec.name).observe(time.perf_counter() - start)
        return out

    async def _score_model(self, spec: RewardSpec, items: list[RewardItem]) -> list[Outcome]:
        start = time.perf_counter()
        values = await asyncio.to_thread(self.model.score_items, [i.prompt for i in items], [i.completion for i in items])
        metrics.SCORE_LATENCY.labels(spec.name).observe(time.perf_counter() - start)
        return [check_value(v) for v in values]

    def _record(self, outcomes: dict[str, list[Outcome]]) -> None:
        for name, out in outcomes.items():
            counts = collections.Counter(o.status.name for o in out)
            for status, count in counts.items():
                metrics.ITEMS_SCORED.labels(name, status).inc(count)
            self._window.add(name, [o.value for o in out if o.status is RewardStatus.OK and o.value is not None])

    def close(self) -> None:
        self.pool.close()
