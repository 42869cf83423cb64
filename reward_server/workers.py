"""The pool of worker processes that run reward code, never on the server's RPC threads.

- Workers come from a `forkserver` context, started before the gRPC server exists (forking a
  process that runs gRPC threads is unsafe). Each calls `os.setsid()`, so it leads its own process
  group and a kill reaches everything it started; rlimits are set inside the worker.
- Each worker has a feeder thread in the server. The thread sends one chunk of items, then waits
  on the pipe, on the process sentinel (which fires even when a grandchild keeps the pipe open) and
  on a deadline. A hung chunk gets its worker's whole group SIGKILLed and a fresh worker forked.
- Per-item progress is a shared-memory counter the worker bumps before each item, so the feeder
  knows which item hung or crashed, and restarts the clock for each item.
- Retry policy: a per-item function that hangs or kills its worker costs that item TIMEOUT/ERROR;
  the rest of the chunk is re-run on a fresh worker. A batch (TRL-form) function that raises,
  hangs or crashes is retried item by item, so only the bad items fail. A batch function whose
  output is malformed (wrong length, NaN) is not retried: its items are INVALID_OUTPUT.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import queue
import signal
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

from reward_server import metrics
from reward_server.items import Outcome, RewardItem
from reward_server.sandbox import kill_group
from reward_server.scripts import ScriptError, ScriptSource
from reward_server.worker_main import WorkerLimits, worker_main
from rlfleet.outcomes import RewardStatus

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05
# Modules every worker needs, imported once in the fork server instead of in each new worker.
PRELOAD = ["reward_server.worker_main", "reward_server.builtins", "math_verify"]


@dataclass(frozen=True)
class FunctionInfo:
    """A reward function as a worker reported it (the callable itself stays in the worker)."""

    name: str
    batched: bool
    kind: str
    description: str


@dataclass
class _Task:
    function: str
    batched: bool
    items: list[RewardItem]
    future: concurrent.futures.Future


@dataclass
class _Call:
    """How one round trip to a worker ended."""

    outcomes: list[Outcome] | None = None
    raised: str | None = None
    failure: Outcome | None = None
    at: int = 0
    abandoned: bool = False


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker vanished"
    if code < 0:
        name = signal.Signals(-code).name
        return {"SIGXCPU": "worker exceeded its CPU time limit (SIGXCPU)"}.get(name, f"worker killed by {name}")
    return f"worker exited with code {code}"


class _Worker:
    """One worker process seen from the server: process, pipe, progress counter."""

    def __init__(self, ctx, script: ScriptSource | None, limits: WorkerLimits):
        self.conn, child = ctx.Pipe()
        self.progress = ctx.RawValue("q", 0)
        self.process = ctx.Process(target=worker_main, args=(child, self.progress, script, limits), daemon=True)
        self.process.start()
        child.close()

    def handshake(self, timeout: float) -> list[FunctionInfo]:
        """Waits for the worker to import the script; raises ScriptError with the worker's message."""
        ready = wait([self.conn, self.process.sentinel], timeout)
        if self.conn in ready:
            try:
                kind, payload = self.conn.recv()
            except EOFError:
                kind, payload = "died", None
            if kind == "ready":
                return [FunctionInfo(*info) for info in payload]
            if kind == "import_error":
                raise ScriptError(payload)
        if not ready:
            self.kill()
            raise ScriptError(f"reward worker did not finish importing the script within {timeout:g} s")
        self.process.join(1)
        raise ScriptError(f"reward worker failed while starting: {describe_exit(self.process.exitcode)}")

    def kill(self) -> None:
        """SIGKILLs the worker's whole process group (grandchildren included) and reaps the worker."""
        kill_group(self.process.pid)
        self.process.kill()  # in case it died before setsid() made it a group leader
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    """A fixed number of worker processes, each fed by its own thread; tasks are chunks of items."""

    def __init__(self, script: ScriptSource | None, size: int, limits: WorkerLimits, item_timeout: float,
                 start_timeout: float = 120.0):
        self.script, self.size, self.limits = script, size, limits
        self.item_timeout, self.start_timeout = item_timeout, start_timeout
        self.functions: dict[str, FunctionInfo] = {}
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._tasks: queue.Queue[_Task | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._lock = threading.Lock()

    def start(self) -> dict[str, FunctionInfo]:
        """Starts every worker and waits until each imported the script; raises ScriptError if one cannot."""
        workers = [_Worker(self._ctx, self.script, self.limits) for _ in range(self.size)]
        try:
            catalogs = [w.handshake(self.start_timeout) for w in workers]
        except ScriptError:
            for w in workers:
                w.kill()
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

    def submit(self, function: str, items: list[RewardItem]) -> concurrent.futures.Future:
        """Queues one chunk; the future gets one Outcome per item. Cancel the future to abandon it."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._pending += len(items)
            metrics.QUEUE_ITEMS.set(self._pending)
        self._tasks.put(_Task(function, self.functions[function].batched, items, future))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join(10)

    def _feed(self, worker: _Worker) -> None:
        """Feeder thread: runs tasks on its worker, replacing the worker whenever it had to be killed."""
        holder = [worker]
        while (task := self._tasks.get()) is not None:
            try:
                if not task.future.cancelled():
                    outcomes = self._execute(holder, task, task.items)
                    if outcomes is not None and not task.future.cancelled():
                        task.future.set_result(outcomes)
            except concurrent.futures.InvalidStateError:
                pass  # cancelled between the check and set_result: nobody waits for it
            except Exception as err:  # noqa: BLE001 - a feeder must outlive any one task
                log.exception("reward worker feeder failed")
                if not task.future.done():
                    task.future.set_exception(err)
            finally:
                with self._lock:
                    self._pending -= len(task.items)
                    metrics.QUEUE_ITEMS.set(self._pending)
        holder[0].kill()

    def _replace(self, holder: list[_Worker], reason: str) -> None:
        holder[0].kill()
        metrics.WORKER_RESTARTS.labels(reason).inc()
        holder[0] = _Worker(self._ctx, self.script, self.limits)
        holder[0].handshake(self.start_timeout)

    def _execute(self, holder: list[_Worker], task: _Task, items: list[RewardItem]) -> list[Outcome] | None:
        """Outcomes for `items` (None if abandoned), retrying around failures as the module docstring says."""
        call = self._call(holder, task, items)
        if call.abandoned:
            return None
        if call.outcomes is not None:
            return call.outcomes
        failure = call.failure or Outcome(RewardStatus.ERROR, error=call.raised or "")
        if len(items) == 1:
            return [failure]
        if task.batched:
            out: list[Outcome] = []
            for item in items:
                one = self._execute(holder, task, [item])
                if one is None:
                    return None
                out += one
            return out
        k = min(call.at, len(items) - 1)
        rest = self._execute(holder, task, items[:k] + items[k + 1:])
        return None if rest is None else rest[:k] + [failure] + rest[k:]

    def _call(self, holder: list[_Worker], task: _Task, items: list[RewardItem]) -> _Call:
        """One round trip: send the items, wait for the answer, a death, a stall or the caller's cancel."""
        if not holder[0].process.is_alive():  # died while idle (e.g. the kernel's OOM killer)
            self._replace(holder, "crash")
        worker = holder[0]
        worker.progress.value = 0
        worker.conn.send((task.function, items))
        seen, since = 0, time.monotonic()
        while True:
            ready = wait([worker.conn, worker.process.sentinel], TICK_SECONDS)
            if worker.conn in ready:
                try:
                    kind, payload = worker.conn.recv()
                    return _Call(outcomes=payload) if kind == "ok" else _Call(raised=payload)
                except (EOFError, OSError):
                    ready = [worker.process.sentinel]
            done = max(worker.progress.value - 1, 0)
            if worker.process.sentinel in ready:
                worker.process.join(1)
                message = describe_exit(worker.process.exitcode)
                self._replace(holder, "crash")
                return _Call(failure=Outcome(RewardStatus.ERROR, error=message), at=done)
            if task.future.cancelled():
                self._replace(holder, "abandoned")
                return _Call(abandoned=True)
            if worker.progress.value != seen:
                seen, since = worker.progress.value, time.monotonic()
            if time.monotonic() - since > self.item_timeout:
                self._replace(holder, "timeout")
                return _Call(failure=Outcome(RewardStatus.TIMEOUT, error=f"no result within {self.item_timeout:g} s; "
                                                                   "worker killed and replaced"), at=done)
