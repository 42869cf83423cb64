"""The reward server's pool of worker processes: chunks of items scored by reward code, never in the server process.

The workers are rlfleet.workers.pool's (a fresh interpreter each, in its own namespaces, with a clean
environment, rlimits and JSON replies only), started with Job.serve_with = "reward_server.worker".
- Each worker has a feeder thread in the server, which takes chunks from one shared queue. The thread
  sends one chunk of items, then waits on the reply pipe, on the process and on deadlines. A hung chunk
  gets its worker's namespace killed, every descendant with it, and a fresh worker started.
- Per-item progress (the worker bumps a shared counter before each item) tells the feeder which item
  hung or crashed, and restarts the clock for each item (within a cap of item_timeout x items per call,
  as reward code could bump the counter itself).
- Retry policy: a per-item function that hangs or kills its worker costs that item TIMEOUT/ERROR;
  the rest of the chunk is re-run on a fresh worker. A batch (TRL-form) function that raises,
  hangs or crashes is retried item by item, so only the bad items fail. A batch function whose
  output is malformed (wrong length, NaN) is not retried: its items are INVALID_OUTPUT.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from reward_server import metrics
from reward_server.chunks import encode_chunk
from reward_server.items import Outcome, Outcomes, RewardBatch
from reward_server.replies import decode_catalog, decode_reply
from rlfleet.outcomes import RewardStatus
from rlfleet.workers import isolation
from rlfleet.workers.frames import MalformedReply
from rlfleet.workers.pool import CPU_CHECK_TICKS, RECYCLE_AT, TICK_SECONDS, Launch, Worker, plan_launch
from rlfleet.workers.scripts import ScriptError, ScriptSource
from rlfleet.workers.worker_main import WorkerLimits

log = logging.getLogger(__name__)

RECYCLE_CHECK_SECONDS = 10.0
"""A worker past RECYCLE_AT of limits.cpu_seconds_per_worker is replaced between calls; its CPU reading may be this
old. (One that reaches the limit within a call is killed by the kernel: that item is an ERROR, a fresh worker
takes over.)"""


@dataclass(frozen=True)
class FunctionInfo:
    """A reward function as a worker reported it (the callable itself stays in the worker)."""

    name: str
    batched: bool
    kind: str
    description: str


@dataclass
class Chunk:
    """A chunk of items submitted to the pool; `cancel()` (on the event loop) abandons it."""

    function: str
    batched: bool
    batch: RewardBatch
    on_done: Callable[[Outcomes | None, BaseException | None], None]
    loop: asyncio.AbstractEventLoop
    abandoned: bool = False
    """Set on the event loop; the feeder reads it (a plain attribute: no lock)."""

    def cancel(self) -> None:
        self.abandoned = True

    def settle(self, outcomes: Outcomes | None, error: BaseException | None = None) -> None:
        """Hands the result to the event loop (from the feeder thread); nothing when nobody waits any more."""
        if not self.abandoned:
            try:
                self.loop.call_soon_threadsafe(self._deliver, outcomes, error)
            except RuntimeError:  # the event loop is closed: the service is stopping
                pass

    def _deliver(self, outcomes: Outcomes | None, error: BaseException | None) -> None:
        if not self.abandoned:
            self.on_done(outcomes, error)


@dataclass
class _Call:
    """How one round trip to a worker ended."""

    outcomes: Outcomes | None = None
    raised: str | None = None
    failure: Outcome | None = None
    at: int = 0
    abandoned: bool = False


def _without(batch: RewardBatch, k: int) -> RewardBatch:
    """`batch` without its item k (the one that hung or crashed a per-item function)."""
    def cut(values):
        return None if values is None else values[:k] + values[k + 1:]

    return RewardBatch(cut(batch.prompts), cut(batch.completions), {n: cut(v) for n, v in batch.columns.items()},
                       cut(batch.completion_tokens), cut(batch.finish_reasons))


def handshake(worker: Worker, timeout: float) -> list[FunctionInfo]:
    """Sends the job and waits for the worker to import the script; raises ScriptError with its message."""
    deadline = time.monotonic() + timeout
    event: bytes | bool = True
    try:
        worker.send(worker.launch.job, deadline)
        while (event := worker.next_event(max(deadline - time.monotonic(), 0))) is False:
            if time.monotonic() >= deadline:
                worker.kill()
                raise ScriptError(f"reward worker did not finish importing the script within {timeout:g} s")
    except (OSError, TimeoutError, MalformedReply):
        event = True
    if event is True:
        worker.settle(1.0)
        message = worker.exit_message()
        worker.kill()
        raise ScriptError(f"reward worker failed while starting: {message}")
    try:
        kind, catalog = decode_catalog(event)
    except MalformedReply as err:
        worker.kill()
        raise ScriptError(f"reward worker sent a malformed catalog: {err}") from None
    if kind == "import_error":
        worker.kill()
        raise ScriptError(catalog)
    return [FunctionInfo(*info) for info in catalog]


class WorkerPool:
    """A fixed number of worker processes, each fed by its own thread; tasks are chunks of items."""

    def __init__(self, script: ScriptSource | None, size: int, limits: WorkerLimits, item_timeout: float,
                 start_timeout: float = 120.0):
        self.script, self.size, self.limits = script, size, limits
        self.item_timeout, self.start_timeout = item_timeout, start_timeout
        self.functions: dict[str, FunctionInfo] = {}
        self.fence: isolation.Fence | None = None
        self._launch: Launch | None = None
        self._tasks: queue.SimpleQueue[Chunk | None] = queue.SimpleQueue()  # C: cheaper per hand-off than Queue
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._lock = threading.Lock()

    def _plan(self) -> Launch:
        self.fence, launch = plan_launch(self.script, self.limits, serve_with="reward_server.worker")
        return launch

    def start(self) -> dict[str, FunctionInfo]:
        """Starts every worker and waits until each imported the script; raises ScriptError if one cannot."""
        self._launch = self._plan()
        isolation.make_undumpable()  # workers of this uid cannot read our /proc/PID/environ or memory
        (log.info if self.fence.prefix else log.warning)("reward workers: %s", self.fence.describe())
        workers = [Worker(self._launch) for _ in range(self.size)]
        catalogs = []
        try:
            for worker in workers:
                catalogs.append(handshake(worker, self.start_timeout))
        except ScriptError:
            for worker in workers:
                worker.kill()
            raise
        self.functions = {info.name: info for info in catalogs[0]}
        for i, worker in enumerate(workers):
            thread = threading.Thread(target=self._feed, args=(worker,), name=f"reward-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self.functions

    @property
    def pending_items(self) -> int:
        """Items submitted and not finished yet (queued or running)."""
        return self._pending

    def submit(self, function: str, batch: RewardBatch,
               on_done: Callable[[Outcomes | None, BaseException | None], None]) -> Chunk:
        """Queues one chunk (call it on the event loop); `on_done(outcomes, error)` runs on the loop once it is scored.

        A callback the feeder schedules with call_soon_threadsafe: a concurrent.futures.Future awaited
        through asyncio.wrap_future cost two futures, a condition variable and a callback chain.
        """
        chunk = Chunk(function, self.functions[function].batched, batch, on_done, asyncio.get_running_loop())
        with self._lock:
            self._pending += len(batch)
            metrics.QUEUE_ITEMS.set(self._pending)
        self._tasks.put(chunk)
        return chunk

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join(10)

    def _feed(self, worker: Worker) -> None:
        """Feeder thread: runs tasks on its worker, replacing the worker whenever it had to be killed."""
        holder = [worker]
        while (task := self._tasks.get()) is not None:
            try:
                if not task.abandoned:
                    outcomes = self._execute(holder, task, task.batch)
                    if outcomes is not None:
                        task.settle(outcomes)
            except Exception as err:  # noqa: BLE001 - a feeder must outlive any one task
                log.exception("reward worker feeder failed")
                task.settle(None, err)
            finally:
                with self._lock:
                    self._pending -= len(task.batch)
                    metrics.QUEUE_ITEMS.set(self._pending)
        holder[0].kill()

    def _replace(self, holder: list[Worker], reason: str) -> None:
        holder[0].kill()
        metrics.WORKER_RESTARTS.labels(reason).inc()
        holder[0] = Worker(self._launch)
        handshake(holder[0], self.start_timeout)

    def _execute(self, holder: list[Worker], task: Chunk, batch: RewardBatch) -> Outcomes | None:
        """Outcomes for `batch` (None if abandoned), retrying around failures as the module docstring says."""
        call = self._call(holder, task, batch)
        if call.abandoned:
            return None
        if call.outcomes is not None:
            return call.outcomes
        failure = call.failure or Outcome(RewardStatus.ERROR, error=call.raised or "")
        n = len(batch)
        if n == 1:
            return Outcomes.failed(1, failure)
        if task.batched:
            parts: list[Outcomes] = []
            for i in range(n):
                one = self._execute(holder, task, batch.slice(i, i + 1))
                if one is None:
                    return None
                parts.append(one)
            return Outcomes.concat(parts)
        k = min(call.at, n - 1)
        rest = self._execute(holder, task, _without(batch, k))
        return None if rest is None else rest.inserted(k, failure)

    def _budget(self, items: int) -> float | None:
        per_item = self.limits.cpu_seconds_per_item
        return None if per_item is None else per_item * items

    def _ready_worker(self, holder: list[Worker]) -> Worker:
        """The holder's worker, replaced first if it died while idle or might reach its lifetime CPU limit."""
        if holder[0].process.poll() is not None:  # died while idle (e.g. the kernel's OOM killer)
            self._replace(holder, "crash")
        lifetime = self.limits.cpu_seconds_per_worker
        used = holder[0].cpu_seconds(RECYCLE_CHECK_SECONDS) if lifetime is not None else None
        if used is not None and used > RECYCLE_AT * lifetime:
            self._replace(holder, "recycled")
        return holder[0]

    def _call(self, holder: list[Worker], task: Chunk, batch: RewardBatch) -> _Call:
        """One round trip: send the items, wait for the answer, a death, a stall or the caller's cancel."""
        worker = self._ready_worker(holder)
        worker.progress.value = 0
        items = len(batch)
        start, budget = time.monotonic(), self._budget(items)
        try:
            worker.send(encode_chunk(task.function, batch), start + self.item_timeout)
            event = worker.next_event(TICK_SECONDS)
        except (OSError, TimeoutError):
            event = True
        except MalformedReply as err:
            event = err
        seen, since, ticks, cpu_start = 0, start, 0, None
        while True:
            done = max(min(worker.progress.value, items) - 1, 0)
            if isinstance(event, bytes):
                try:
                    result = decode_reply(event, items)
                    return _Call(raised=result) if isinstance(result, str) else _Call(outcomes=result)
                except MalformedReply as err:
                    event = err
            if isinstance(event, MalformedReply):
                self._replace(holder, "malformed")
                return _Call(failure=Outcome(RewardStatus.ERROR, error=f"reward worker sent a malformed reply ({event}); "
                                                                 "worker killed and replaced"), at=done)
            if event is True:
                message = worker.exit_message()
                self._replace(holder, "crash")
                return _Call(failure=Outcome(RewardStatus.ERROR, error=message), at=done)
            if task.abandoned:
                self._replace(holder, "abandoned")
                return _Call(abandoned=True)
            now, ticks = time.monotonic(), ticks + 1
            if worker.progress.value != seen:
                seen, since = worker.progress.value, now
            if now - since > self.item_timeout or now - start > self.item_timeout * items:
                self._replace(holder, "timeout")
                return _Call(failure=Outcome(RewardStatus.TIMEOUT, error=f"no result within {self.item_timeout:g} s; "
                                                                   "worker killed and replaced"), at=done)
            if budget is not None and ticks == 1:
                cpu_start = worker.cpu_seconds()  # a call that ends within a tick is too short to check
            elif budget is not None and cpu_start is not None and ticks % CPU_CHECK_TICKS == 0:
                used = (worker.cpu_seconds() or cpu_start) - cpu_start
                if used > budget:
                    self._replace(holder, "cpu")
                    return _Call(failure=Outcome(RewardStatus.ERROR, error=f"worker used {used:.1f} CPU seconds, more "
                                                 f"than its {budget:g} (limits.cpu_seconds_per_item); killed"), at=done)
            try:
                event = worker.next_event(TICK_SECONDS)
            except MalformedReply as err:
                event = err
