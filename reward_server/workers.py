"""The pool of worker processes that run reward code, never in the server process or on its RPC threads.

- Each worker is a fresh interpreter (`python -m reward_server.worker_main`) started with only the
  environment variables `limits.pass_env` names, inside the fence `isolation.plan_fence()` found:
  its own PID and mount namespaces and, unless `limits.allow_network`, its own network namespace;
  as root it drops to `limits.run_as_user`. Nothing is forked from the server, so nothing of its
  memory (tokens included) is in a worker, and starting one is safe while gRPC threads run.
- The server writes requests as pickles and reads replies as JSON only: reward code can write to
  the reply pipe, and a pickle from it would run code in the server.
- Each worker has a feeder thread in the server. The thread sends one chunk of items, then waits
  on the reply pipe, on the process (a pidfd, which fires even when a grandchild keeps the pipe
  open) and on deadlines. A hung chunk gets its worker's namespace killed, every descendant with it
  (setsid() or a double fork do not escape a PID namespace), and a fresh worker started.
- Per-item progress is a shared-memory counter the worker bumps before each item, so the feeder
  knows which item hung or crashed, and restarts the clock for each item (within a cap of
  item_timeout x items per call, as reward code could bump the counter itself).
- Retry policy: a per-item function that hangs or kills its worker costs that item TIMEOUT/ERROR;
  the rest of the chunk is re-run on a fresh worker. A batch (TRL-form) function that raises,
  hangs or crashes is retried item by item, so only the bad items fail. A batch function whose
  output is malformed (wrong length, NaN) is not retried: its items are INVALID_OUTPUT.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import logging
import mmap
import os
import pickle
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import wait

from reward_server import isolation, metrics
from reward_server.items import Outcome, RewardItem
from reward_server.replies import Frames, MalformedReply, decode_catalog, decode_reply, write_frame
from reward_server.sandbox import kill_group
from reward_server.scripts import ScriptError, ScriptSource
from reward_server.worker_main import SHARED_BYTES, Job, WorkerLimits
from rlfleet.outcomes import RewardStatus

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05
CPU_CHECK_TICKS = 10
"""The per-item CPU budget is checked every this many ticks (a /proc walk per check)."""
RECYCLE_AT, RECYCLE_CHECK_SECONDS = 0.9, 10.0
"""A worker past this share of limits.cpu_seconds_per_worker is replaced between calls; its CPU reading may be this
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


@dataclass(frozen=True)
class _Launch:
    """Everything needed to start one more worker."""

    command: tuple[str, ...]
    env: dict[str, str]
    job: Job
    fenced: bool
    """True when the command starts the worker as PID 1 of its own namespace (kill that, and all is gone)."""


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker vanished"
    if code == -signal.SIGKILL:  # not by us: we report our kills ourselves
        return "worker killed by SIGKILL (the kernel's OOM killer, or limits.cpu_seconds_per_worker reached)"
    if code < 0:
        return f"worker killed by {signal.Signals(-code).name}"
    return f"worker exited with code {code}"


class _Worker:
    """One worker process seen from the server: process, pipes, shared progress counter."""

    def __init__(self, launch: _Launch):
        self.launch = launch
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        self._shared_file = tempfile.TemporaryFile()
        self._shared_file.truncate(SHARED_BYTES)
        self._shared = mmap.mmap(self._shared_file.fileno(), SHARED_BYTES)
        self.progress = ctypes.c_int64.from_buffer(self._shared, 0)
        self._status = ctypes.c_int64.from_buffer(self._shared, 8)
        fds = (requests_r, replies_w, self._shared_file.fileno())
        try:
            self.process = subprocess.Popen([*launch.command, *map(str, fds)], env=launch.env, pass_fds=fds,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(requests_r)
            os.close(replies_w)
        self.requests, self.replies = requests_w, Frames(replies_r)
        self._closed = False
        self._cpu: tuple[float, float | None] | None = None
        os.set_blocking(requests_w, False)
        self.sentinel = os.pidfd_open(self.process.pid) if hasattr(os, "pidfd_open") else None

    @property
    def root_pid(self) -> int:
        """The process whose death ends the worker and all it started: its namespace's init, or the worker."""
        if self.launch.fenced:
            inner = isolation.children(self.process.pid)
            if inner:
                return inner[0]
        return self.process.pid

    def send(self, message, deadline: float) -> None:
        write_frame(self.requests, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL), deadline)

    def next_event(self, timeout: float) -> bytes | bool:
        """A complete reply frame; True when the worker is gone (or closed its pipe); False after `timeout`.

        Raises MalformedReply for a frame header no honest worker writes.
        """
        frame = self.replies.pop()
        if frame is not None:
            return frame
        ready = wait([self.replies] + ([self.sentinel] if self.sentinel is not None else []), timeout)
        if self.replies in ready:
            try:
                self.replies.fill()
            except EOFError:
                self._settle(1.0)
                return True
            frame = self.replies.pop()
            if frame is not None:
                return frame
        return self.process.poll() is not None

    def _settle(self, seconds: float) -> None:
        """Gives a worker that is going away a moment to exit, so that its exit status is known."""
        try:
            self.process.wait(seconds)
        except subprocess.TimeoutExpired:
            pass

    def exit_message(self) -> str:
        if self._status.value:  # the worker's own status, as its namespace's init saw it
            return describe_exit(os.waitstatus_to_exitcode(self._status.value - 1))
        if self.process.poll() is None:
            return "worker closed its reply pipe"
        return describe_exit(self.process.returncode)

    def handshake(self, timeout: float) -> list[FunctionInfo]:
        """Sends the job and waits for the worker to import the script; raises ScriptError with its message."""
        deadline = time.monotonic() + timeout
        event: bytes | bool = True
        try:
            self.send(self.launch.job, deadline)
            while (event := self.next_event(max(deadline - time.monotonic(), 0))) is False:
                if time.monotonic() >= deadline:
                    self.kill()
                    raise ScriptError(f"reward worker did not finish importing the script within {timeout:g} s")
        except (OSError, TimeoutError, MalformedReply):
            event = True
        if event is True:
            self._settle(1.0)
            message = self.exit_message()
            self.kill()
            raise ScriptError(f"reward worker failed while starting: {message}")
        try:
            kind, catalog = decode_catalog(event)
        except MalformedReply as err:
            self.kill()
            raise ScriptError(f"reward worker sent a malformed catalog: {err}") from None
        if kind == "import_error":
            self.kill()
            raise ScriptError(catalog)
        return [FunctionInfo(*info) for info in catalog]

    def cpu_seconds(self, max_age: float = 0.0) -> float | None:
        """CPU seconds of the worker and all it started; a reading up to `max_age` s old may be reused (a /proc walk
        costs ~40 us, too much for every call of a cheap reward)."""
        now = time.monotonic()
        if self._cpu is None or now - self._cpu[0] > max_age:
            self._cpu = (now, isolation.tree_cpu_seconds(self.root_pid))
        return self._cpu[1]

    def kill(self) -> None:
        """SIGKILLs the worker's namespace (or process group) and waits until every process in it is gone."""
        if self._closed:
            return
        self._closed = True
        root = self.root_pid
        # The namespace's init exits on SIGTERM (worker_main.init) and unshare then exits quietly
        # (SIGKILL makes it complain on stderr); SIGKILL from out here reaches an init whatever it did.
        for sig, seconds in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is None and (self.launch.fenced or sig == signal.SIGKILL):
                try:
                    os.kill(root, sig)
                except ProcessLookupError:
                    break
                self._settle(seconds)  # unshare exits once its child, the init, did: the namespace is empty
        kill_group(self.process.pid)
        self.process.kill()
        self.process.wait(5)
        for fd in (self.requests, self.replies.fd, self.sentinel):
            if fd is not None:
                os.close(fd)
        del self.progress, self._status
        self._shared.close()
        self._shared_file.close()


Worker = _Worker
"""One worker process, for a pool that drives its workers one by one (env_server's sessions stay on theirs)."""


def plan_launch(script: ScriptSource | None, limits: WorkerLimits,
                serve_with: str = "") -> tuple[isolation.Fence, _Launch]:
    """The strongest fence this machine allows and how to start a worker inside it (Job.serve_with: whose loop)."""
    try:
        fence = isolation.plan_fence(limits.allow_network, limits.run_as_user)
    except ValueError as err:
        raise ScriptError(str(err)) from None
    readable = [os.getcwd()] + ([os.path.dirname(script.path)] if script else [])
    job = Job(script, limits, fence.uid, fence.gid, tuple(readable), bool(fence.prefix), serve_with)
    command = (*fence.prefix, sys.executable, "-m", "reward_server.worker_main")
    return fence, _Launch(command, isolation.clean_environ(limits.pass_env), job, bool(fence.prefix))


class WorkerPool:
    """A fixed number of worker processes, each fed by its own thread; tasks are chunks of items."""

    def __init__(self, script: ScriptSource | None, size: int, limits: WorkerLimits, item_timeout: float,
                 start_timeout: float = 120.0):
        self.script, self.size, self.limits = script, size, limits
        self.item_timeout, self.start_timeout = item_timeout, start_timeout
        self.functions: dict[str, FunctionInfo] = {}
        self.fence: isolation.Fence | None = None
        self._launch: _Launch | None = None
        self._tasks: queue.Queue[_Task | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._pending = 0
        self._lock = threading.Lock()

    def _plan(self) -> _Launch:
        self.fence, launch = plan_launch(self.script, self.limits)
        return launch

    def start(self) -> dict[str, FunctionInfo]:
        """Starts every worker and waits until each imported the script; raises ScriptError if one cannot."""
        self._launch = self._plan()
        isolation.make_undumpable()  # workers of this uid cannot read our /proc/PID/environ or memory
        (log.info if self.fence.prefix else log.warning)("reward workers: %s", self.fence.describe())
        workers = [_Worker(self._launch) for _ in range(self.size)]
        catalogs = []
        try:
            for worker in workers:
                catalogs.append(worker.handshake(self.start_timeout))
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
        holder[0] = _Worker(self._launch)
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

    def _budget(self, items: int) -> float | None:
        per_item = self.limits.cpu_seconds_per_item
        return None if per_item is None else per_item * items

    def _ready_worker(self, holder: list[_Worker]) -> _Worker:
        """The holder's worker, replaced first if it died while idle or might reach its lifetime CPU limit."""
        if holder[0].process.poll() is not None:  # died while idle (e.g. the kernel's OOM killer)
            self._replace(holder, "crash")
        lifetime = self.limits.cpu_seconds_per_worker
        used = holder[0].cpu_seconds(RECYCLE_CHECK_SECONDS) if lifetime is not None else None
        if used is not None and used > RECYCLE_AT * lifetime:
            self._replace(holder, "recycled")
        return holder[0]

    def _call(self, holder: list[_Worker], task: _Task, items: list[RewardItem]) -> _Call:
        """One round trip: send the items, wait for the answer, a death, a stall or the caller's cancel."""
        worker = self._ready_worker(holder)
        worker.progress.value = 0
        start, budget = time.monotonic(), self._budget(len(items))
        try:
            worker.send((task.function, items), start + self.item_timeout)
            event = worker.next_event(TICK_SECONDS)
        except (OSError, TimeoutError):
            event = True
        except MalformedReply as err:
            event = err
        seen, since, ticks, cpu_start = 0, start, 0, None
        while True:
            done = max(min(worker.progress.value, len(items)) - 1, 0)
            if isinstance(event, bytes):
                try:
                    result = decode_reply(event, len(items))
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
            if task.future.cancelled():
                self._replace(holder, "abandoned")
                return _Call(abandoned=True)
            now, ticks = time.monotonic(), ticks + 1
            if worker.progress.value != seen:
                seen, since = worker.progress.value, now
            if now - since > self.item_timeout or now - start > self.item_timeout * len(items):
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
