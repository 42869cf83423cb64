"""The environment server's worker processes: every session stays on the worker that started it.

The workers are rlfleet.workers.pool's (a fresh interpreter per worker, its own
PID, mount and network namespaces, a clean environment, rlimits, JSON replies only), started with
Job.serve_with = "env_server.worker". Unlike the reward pool, each worker has a queue and a feeder
thread of its own, so a session's calls reach its worker one at a time and in order.

A call that outlives call_timeout or the per-call CPU budget (limits.cpu_seconds_per_item), kills
its worker, or answers something malformed costs a kill of the worker's whole namespace and a
fresh worker. The slot's generation then goes up: the other sessions the old worker held are lost
with it, and their queued and later calls answer "lost" without reaching the new worker.
"""

from __future__ import annotations

import concurrent.futures
import logging
import pickle
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from env_server import metrics
from env_server.replies import Described, decode_catalog
from rlfleet.environments import EnvStatus
from rlfleet.workers.frames import MalformedReply
from rlfleet.workers.pool import CPU_CHECK_TICKS, RECYCLE_AT, TICK_SECONDS, Worker, plan_launch
from rlfleet.workers.scripts import ScriptError, ScriptSource
from rlfleet.workers.worker_main import WorkerLimits

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Call:
    """How one round trip ended: the decoded reply, or a failure that cost the worker (or found the session lost)."""

    reply: Any
    """What the task's decode made of the reply frame; None on failure."""
    generation: int
    """The slot's worker generation the call ran on (a start's session lives there)."""
    status: EnvStatus = EnvStatus.OK
    error: str = ""
    lost: bool = False
    """The session was lost with its worker before this call reached it."""


@dataclass
class _Task:
    request: tuple
    decode: Callable[[bytes], Any]
    generation: int | None
    """The generation the session lives on; None for a start (any)."""
    future: concurrent.futures.Future


@dataclass
class Slot:
    index: int
    worker: Worker
    tasks: queue.Queue = field(default_factory=queue.Queue)
    generation: int = 0
    ended: dict[int, str] = field(default_factory=dict)
    """Why each past generation ended, for the sessions lost with it."""
    sessions: int = 0
    """Sessions open on this slot (kept by the core)."""


def handshake(worker: Worker, timeout: float) -> list[Described]:
    """Sends the job and waits for the catalog; ScriptError with the worker's message if it cannot serve."""
    deadline = time.monotonic() + timeout
    event: bytes | bool = True
    try:
        worker.send(worker.launch.job, deadline)
        while (event := worker.next_event(max(deadline - time.monotonic(), 0))) is False:
            if time.monotonic() >= deadline:
                worker.kill()
                raise ScriptError(f"environment worker did not load the script within {timeout:g} s")
        catalog = decode_catalog(event) if isinstance(event, bytes) else None
    except (OSError, TimeoutError, MalformedReply) as err:
        worker.kill()
        raise ScriptError(f"environment worker failed while starting: {err}") from None
    if catalog is None:
        message = worker.exit_message()
        worker.kill()
        raise ScriptError(f"environment worker failed while starting: {message}")
    if isinstance(catalog, str):
        worker.kill()
        raise ScriptError(catalog)
    return catalog


class SessionPool:
    """`size` workers, each with its own queue; `submit` runs one request on one slot's worker."""

    def __init__(self, script: ScriptSource, size: int, limits: WorkerLimits, call_timeout: float,
                 start_timeout: float = 120.0):
        self.script, self.size, self.limits = script, size, limits
        self.call_timeout, self.start_timeout = call_timeout, start_timeout
        self.slots: list[Slot] = []
        self.fence = None
        self._launch = None
        self._threads: list[threading.Thread] = []

    def start(self) -> list[Described]:
        """Starts every worker; returns the catalog; ScriptError if the script cannot be served."""
        self.fence, self._launch = plan_launch(self.script, self.limits, serve_with="env_server.worker")
        (log.info if self.fence.prefix else log.warning)("environment workers: %s", self.fence.describe())
        workers = [Worker(self._launch) for _ in range(self.size)]
        try:
            catalogs = [handshake(worker, self.start_timeout) for worker in workers]
        except ScriptError:
            for worker in workers:
                worker.kill()
            raise
        self.slots = [Slot(i, worker) for i, worker in enumerate(workers)]
        for slot in self.slots:
            thread = threading.Thread(target=self._feed, args=(slot,), name=f"env-worker-{slot.index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return catalogs[0]

    def least_busy(self) -> Slot:
        return min(self.slots, key=lambda s: s.sessions)

    def submit(self, slot: Slot, request: tuple, decode: Callable[[bytes], Any],
               generation: int | None) -> concurrent.futures.Future:
        """Queues `request` for the slot's worker; the future gets a Call with `decode(reply frame)`."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        slot.tasks.put(_Task(request, decode, generation, future))
        return future

    def lost(self, slot: Slot, generation: int) -> str | None:
        """Why a session of `generation` is gone, or None while its worker still runs."""
        if generation == slot.generation:
            return None
        return f"session lost: {slot.ended.get(generation, 'its worker was replaced')}"

    def close(self) -> None:
        for slot in self.slots:
            slot.tasks.put(None)
        for thread in self._threads:
            thread.join(10)

    def _feed(self, slot: Slot) -> None:
        while (task := slot.tasks.get()) is not None:
            try:
                self._ready(slot)
                if task.generation is not None and task.generation != slot.generation:
                    call = Call(None, task.generation, EnvStatus.ERROR, self.lost(slot, task.generation) or "", True)
                else:
                    call = self._call(slot, task.request, task.decode)
                task.future.set_result(call)
            except Exception as err:  # noqa: BLE001 - a feeder must outlive any one task
                log.exception("environment worker feeder failed")
                if not task.future.done():
                    task.future.set_exception(err)
        slot.worker.kill()

    def _replace(self, slot: Slot, reason: str, why: str) -> None:
        """Kills the slot's worker (its sessions are lost, `why` says how) and starts a fresh one."""
        slot.worker.kill()
        metrics.WORKER_RESTARTS.labels(reason).inc()
        slot.ended[slot.generation] = why
        slot.generation += 1
        slot.worker = Worker(self._launch)
        handshake(slot.worker, self.start_timeout)

    def _ready(self, slot: Slot) -> None:
        """Replaces a worker that died while idle, or one near its lifetime CPU limit that holds no session."""
        if slot.worker.process.poll() is not None:
            self._replace(slot, "crash", f"its worker died while idle ({slot.worker.exit_message()})")
            return
        lifetime = self.limits.cpu_seconds_per_worker
        if lifetime is not None and slot.sessions == 0:
            used = slot.worker.cpu_seconds(10.0)
            if used is not None and used > RECYCLE_AT * lifetime:
                self._replace(slot, "recycled", "its worker was recycled")

    def _fail(self, slot: Slot, generation: int, status: EnvStatus, reason: str, error: str) -> Call:
        self._replace(slot, reason, f"another session's call on its worker failed ({error})")
        return Call(None, generation, status, error)

    def _call(self, slot: Slot, request: tuple, decode: Callable[[bytes], Any]) -> Call:
        """One round trip on the slot's worker: the reply, or the failure that cost the worker."""
        worker, generation = slot.worker, slot.generation
        start = time.monotonic()
        budget, cpu_start, ticks = self.limits.cpu_seconds_per_item, None, 0
        try:
            worker.send(request, start + self.call_timeout)
            event = worker.next_event(TICK_SECONDS)
        except (OSError, TimeoutError, pickle.PicklingError):
            event = True
        except MalformedReply as err:
            return self._fail(slot, generation, EnvStatus.ERROR, "malformed", f"malformed reply: {err}")
        while True:
            if isinstance(event, bytes):
                try:
                    return Call(decode(event), generation)
                except MalformedReply as err:
                    return self._fail(slot, generation, EnvStatus.ERROR, "malformed", f"malformed reply: {err}")
            if event is True:
                message = worker.exit_message()
                return self._fail(slot, generation, EnvStatus.ERROR, "crash", f"environment worker crashed: {message}")
            ticks += 1
            if time.monotonic() - start > self.call_timeout:
                return self._fail(slot, generation, EnvStatus.TIMEOUT, "timeout",
                                  f"no answer within {self.call_timeout:g} s (call_timeout_seconds); worker killed")
            if budget is not None and ticks == 1:
                cpu_start = worker.cpu_seconds()
            elif budget is not None and cpu_start is not None and ticks % CPU_CHECK_TICKS == 0:
                used = (worker.cpu_seconds() or cpu_start) - cpu_start
                if used > budget:
                    return self._fail(slot, generation, EnvStatus.ERROR, "cpu",
                                      f"used {used:.1f} CPU seconds, more than limits.cpu_seconds_per_item "
                                      f"({budget:g}); worker killed")
            try:
                event = worker.next_event(TICK_SECONDS)
            except MalformedReply as err:
                return self._fail(slot, generation, EnvStatus.ERROR, "malformed", f"malformed reply: {err}")
