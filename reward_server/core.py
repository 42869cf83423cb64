"""The reward service's work, without gRPC: admit a request, fan it out to workers and the model, combine.

    core = RewardCore(config)
    core.start_workers()          # before any gRPC server exists (forking next to gRPC threads is unsafe)
    core.load_model()             # may take a while; health stays NOT_SERVING meanwhile
    scores = await core.score("req-1", RewardBatch([prompt], [completion], {"answer": ["4"]}))
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import pickle
import time
from collections.abc import Sequence

import xxhash

from reward_server import metrics
from reward_server.config import RewardConfig
from reward_server.items import Outcome, Outcomes, RewardSpec
from reward_server.scripts import checked
from reward_server.workers import WorkerPool
from rlfleet.errors import InvalidRequest, Overloaded
from rlfleet.metrics import child
from rlfleet.outcomes import BatchScores, RewardBatch, RewardStatus, worst
from rlfleet.workers.scripts import ScriptError, ScriptSource, script_version
from rlfleet.workers.worker_main import WorkerLimits

log = logging.getLogger(__name__)
NAN = math.nan
OK, INVALID_OUTPUT = RewardStatus.OK, RewardStatus.INVALID_OUTPUT


def score_columns(specs: Sequence[RewardSpec], outcomes: Sequence[Outcomes], n: int) -> BatchScores:
    """Per item, what `rlfleet.outcomes.combine` gives over the functions (weighted sum, worst status, every
    failed function named), computed on columns: items that are all OK cost no Python object.

    A component that returned None is left out of the sum (not counted as 0); an item whose every
    component is None gets reward 0.0 with status OK and no components (TRL's nansum does the same).
    """
    rewards: list[float] | None = None
    components: dict[str, list[float]] = {}
    failed: dict[int, list[tuple[str, Outcome]]] = {}
    for spec, out in zip(specs, outcomes, strict=True):
        weight, values = spec.weight, out.values
        if len(values) != n:
            raise ValueError(f"{spec.name}: {len(values)} outcomes for {n} items")
        if rewards is None:  # the first function: a copy in C when its weight is 1 (the common single reward)
            rewards = list(values) if weight == 1.0 else [weight * value for value in values]
        else:
            rewards = [total + weight * value for total, value in zip(rewards, values, strict=True)]
        column = values
        if out.absent or out.failures:
            column = list(column)
            for i in out.absent:
                column[i] = NAN
            for i, failure in out.failures.items():
                column[i] = NAN
                failed.setdefault(i, []).append((spec.name, failure))
        components[spec.name] = column
    if rewards is None:
        rewards = [0.0] * n
    statuses = [OK] * n
    errors: dict[int, str] = {}
    for i in sorted(failed):  # a made-up reward is never trained on: 0.0, and every cause named
        parts = failed[i]
        statuses[i] = worst(failure.status for _, failure in parts)
        errors[i] = "; ".join(f"{name}: {failure.status.name}: {failure.error}" for name, failure in parts)
        rewards[i] = 0.0
    if not math.isfinite(sum(rewards)):  # one pass in C; a sum of finite totals may overflow, so look at each
        for i, total in enumerate(rewards):
            if not math.isfinite(total):
                statuses[i], errors[i], rewards[i] = INVALID_OUTPUT, f"weighted total {total} is not finite", 0.0
    return BatchScores(rewards, statuses, components, errors)


def batch_digest(batch: RewardBatch) -> bytes:
    """A digest of every column (in order): with the request_id, the dedupe key of a request, so that an id
    reused for other items is scored afresh rather than answered with the old result."""
    return xxhash.xxh3_128_digest(pickle.dumps(batch, protocol=pickle.HIGHEST_PROTOCOL))


class _Work:
    """One request's scoring: its parts in flight (pool chunks, model calls) and the callers waiting for it.

    Driven by callbacks on the event loop, not by a task per request: the last part to arrive combines
    the scores and hands them to every waiter in the loop iteration that delivered it. A task awaited
    through asyncio.shield took three more iterations per call (~15-20 us each on this machine).
    """

    def __init__(self, core: RewardCore, key: tuple[str, bytes] | None, batch: RewardBatch):
        self.core, self.key, self.n = core, key, len(batch)
        self.waiters: list[asyncio.Future] = []
        self.handles: list = []  # pool chunks and model tasks: cancelled when abandoned
        self.parts: list[list[Outcomes | None]] = []
        self.missing = 0
        self.finished = False
        start = time.perf_counter()
        chunks = core._chunks(batch)
        for s, spec in enumerate(core.specs):
            if spec.kind == "model":
                self.parts.append([None])
                task = asyncio.ensure_future(core._score_model(spec, batch))
                task.add_done_callback(functools.partial(self._model_done, s))
                self.handles.append(task)
            else:
                self.parts.append([None] * len(chunks))
                self.handles += [core.pool.submit(spec.name, chunk, functools.partial(self._part_done, s, c, start))
                                 for c, chunk in enumerate(chunks)]
            self.missing += len(self.parts[-1])
        if self.missing == 0:  # no reward function at all (a model still loading): every item OK with reward 0
            asyncio.get_running_loop().call_soon(self._complete)

    def _model_done(self, s: int, task: asyncio.Task) -> None:
        if task.cancelled():
            return
        error = task.exception()
        self._part_done(s, 0, None, None if error else task.result(), error)

    def _part_done(self, s: int, c: int, start: float | None, outcomes: Outcomes | None,
                   error: BaseException | None) -> None:
        if self.finished:
            return
        if error is not None:
            self._finish(error)
            return
        if start is not None:
            child(metrics.SCORE_LATENCY, self.core.specs[s].name).observe(time.perf_counter() - start)
        self.parts[s][c] = outcomes
        self.missing -= 1
        if self.missing == 0:
            self._complete()

    def _complete(self) -> None:
        if self.finished:
            return
        try:
            per_spec = [Outcomes.concat(parts) for parts in self.parts]
            self.core._record(per_spec)
            self._finish(score_columns(self.core.specs, per_spec, self.n))
        except Exception as err:  # noqa: BLE001 - it goes to the callers, as a task's exception would
            self._finish(err)

    def _finish(self, result: BatchScores | BaseException) -> None:
        self.finished = True
        self.core._running.pop(self.key, None)
        if self.key and not isinstance(result, BaseException):
            self.core._remember(self.key, result)
        self._cancel_parts()  # parts still running after one failed
        for waiter in self.waiters:
            if not waiter.done():
                if isinstance(result, BaseException):
                    waiter.set_exception(result)
                else:
                    waiter.set_result(result)

    def abandon(self) -> None:
        """Nobody waits any more: queued chunks are dropped, busy workers killed."""
        self.finished = True
        self.core._running.pop(self.key, None)
        self._cancel_parts()

    def _cancel_parts(self) -> None:
        for handle in self.handles:
            handle.cancel()
        # The handles' callbacks refer back to this object: dropping them breaks the cycle, so that
        # reference counting frees the request at once instead of the cyclic GC (which took ~90 us per
        # call of 512 items, scanning every young list).
        self.handles, self.parts = [], []


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
        self._done: collections.OrderedDict[tuple[str, bytes], BatchScores] = collections.OrderedDict()
        self._running: dict[tuple[str, bytes], _Work] = {}
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

    async def score(self, request_id: str, batch: RewardBatch, digest: bytes | None = None) -> BatchScores:
        """Scores of the batch's items in order; the first answer for a request_id and the same items is reused by
        its retries. `digest` identifies the items (the servicer hashes the request's bytes); None: a digest of
        the batch itself.

        A retry that arrives while the first call still runs waits for the same work. The work is
        abandoned (queued chunks dropped, busy workers killed) once every caller waiting on it gave up.
        A request that could never fit the queue is InvalidRequest, not Overloaded (which callers retry).
        """
        n = len(batch)
        if n > self.config.max_queued_items:
            raise InvalidRequest("items", f"{n} items in one request, more than the whole queue holds "
                                          f"(max_queued_items = {self.config.max_queued_items}); split the request")
        key = (request_id, digest if digest is not None else batch_digest(batch)) if request_id else None
        if key in self._done:
            metrics.DUPLICATE_REQUESTS.inc()
            return self._done[key]
        work = self._running.get(key) if key else None
        if work is not None:
            metrics.DUPLICATE_REQUESTS.inc()
        else:
            if self.pool.pending_items + n > self.config.max_queued_items:
                metrics.REJECTED_ITEMS.inc(n)
                raise Overloaded(f"{self.pool.pending_items} items queued; at most {self.config.max_queued_items} "
                                 f"(max_queued_items) may wait; retry later")
            work = _Work(self, key, batch)
            if key:
                self._running[key] = work
        mine = asyncio.get_running_loop().create_future()  # one per caller: cancelling it leaves the others'
        work.waiters.append(mine)
        try:
            return await mine
        finally:
            work.waiters.remove(mine)
            if not work.waiters and not work.finished:
                work.abandon()

    def _remember(self, key: tuple[str, bytes], scores: BatchScores) -> None:
        """Keeps `scores` for retries of the same request (the last dedupe_cache_size requests)."""
        if self.config.dedupe_cache_size:
            self._done[key] = scores
            while len(self._done) > self.config.dedupe_cache_size:
                self._done.popitem(last=False)

    def _chunks(self, batch: RewardBatch) -> list[RewardBatch]:
        # One chunk per worker, as large as max_batch_items allows: every chunk costs a pipe round trip and
        # two thread hand-offs in the server, whatever its size.
        n = len(batch)
        size = min(self.config.max_batch_items, max(8, math.ceil(n / self.config.workers)))
        return [batch] if size >= n else [batch.slice(i, i + size) for i in range(0, n, size)]

    async def _score_model(self, spec: RewardSpec, batch: RewardBatch) -> Outcomes:
        start = time.perf_counter()
        values = await asyncio.to_thread(self.model.score_items, batch.prompts, batch.completions)
        child(metrics.SCORE_LATENCY, spec.name).observe(time.perf_counter() - start)
        return checked(values)

    def _record(self, per_spec: list[Outcomes]) -> None:
        for spec, out in zip(self.specs, per_spec, strict=True):
            if len(out) > len(out.failures):
                child(metrics.ITEMS_SCORED, spec.name, "OK").inc(len(out) - len(out.failures))
            if out.failures:
                for status, count in collections.Counter(f.status.name for f in out.failures.values()).items():
                    child(metrics.ITEMS_SCORED, spec.name, status).inc(count)
            values = out.values
            if out.absent or out.failures:
                skip = set(out.absent) | out.failures.keys()
                values = [v for i, v in enumerate(values) if i not in skip]
            self._window.add(spec.name, values)

    def close(self) -> None:
        self.pool.close()
