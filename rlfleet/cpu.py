"""Where each service's CPU-seconds go: process-tree CPU from /proc, charged to named phases, exported to Prometheus.

    from rlfleet import cpu
    cpu.start_account("learner")            # once per process (GrpcServer.start does it for every service)
    cpu.ready()                             # start-up over (GrpcServer.set_ready)
    with cpu.phase("wait"):                 # explicit phases: the learner's loop
        ...
    cpu.switch("optimizer")                 # replace the current explicit phase (inside a `phase` block)

The counter `rlfleet_cpu_seconds_total{service, phase}` counts the CPU-seconds (user + system) of
the process and its children (vLLM's EngineCore, reward workers), charged to the phase current
when they were spent. Without an explicit phase, the phase is the application RPC in flight (the
interceptor reports them: `generate`, `load_adapter`, `score`, `log_probs`, ...), else `startup`
until the service is ready and `idle` after, which is where an engine that spins between calls
shows up. One thread can be given a phase of its own
(`own_thread`): the learner's event loop, whose pipeline calls run while the trainer's threads
compute, is charged to `pipeline` and not to the training phase it overlaps.

Deltas are taken at every phase change and once a second by a daemon thread, from /proc (Linux);
elsewhere the account stays empty.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import Counter

from rlfleet.metrics import child

CPU_SECONDS = Counter(
    "rlfleet_cpu_seconds_total",
    "CPU-seconds (user + system) of the service's process and its children, by the phase they were spent in.",
    ["service", "phase"])

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PROC = Path("/proc")


def _stat_fields(path: Path) -> list[str] | None:
    try:
        text = path.read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields after the command name, which may hold spaces


def process_seconds(pid: int, with_reaped_children: bool = True) -> float:
    """utime + stime of `pid` (and cutime + cstime: its children that exited and were waited for); 0 if gone."""
    fields = _stat_fields(_PROC / str(pid) / "stat")
    if fields is None:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    if with_reaped_children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _TICK


def thread_seconds(tid: int, pid: int | None = None) -> float:
    """utime + stime of one thread of process `pid` (default: this one)."""
    fields = _stat_fields(_PROC / str(pid or os.getpid()) / "task" / str(tid) / "stat")
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / _TICK


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's children file; a scan of /proc where the kernel lacks it)."""
    tasks = _PROC / str(pid) / "task"
    try:
        files = [t / "children" for t in tasks.iterdir()]
    except OSError:
        return []
    if files and files[0].exists():
        found: list[int] = []
        for f in files:
            with contextlib.suppress(OSError):
                found += [int(c) for c in f.read_text().split()]
        return found
    children = []
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(entry / "stat")
            if fields is not None and int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def tree_pids(pid: int) -> list[int]:
    """`pid` and every live descendant."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue += child_pids(current)
    return found


def tree_seconds(pid: int | None = None, pids: list[int] | None = None) -> float:
    """CPU-seconds of a process tree: each live process's own time plus its waited-for children's."""
    return sum(process_seconds(p) for p in (pids if pids is not None else tree_pids(pid or os.getpid())))


# Health checks and reflection are not work of the service: the phase stays what it was.
_PROBES = frozenset({"Check", "Watch", "ServerReflectionInfo"})
CHILDREN_READ_SECONDS = 0.02
"""At RPC boundaries, children's CPU is read from /proc at most this often (it counts 10 ms ticks: reading it more
often measures rounding, at ~65 us a walk)."""


@functools.cache  # twice per RPC; method names are few
def _snake(method: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", method).lower()


class CpuAccount:
    """Charges this process tree's CPU-seconds to phases; see the module docstring.

    The process's own CPU comes from its CPU clock (clock_gettime: ~1 us, exact), charged at every phase
    change. Its children's (and reaped children's) CPU comes from /proc, read at most every
    CHILDREN_READ_SECONDS at RPC boundaries (a walk over the tree cost ~65 us, twice per RPC: 135 us of a
    batch-64 Score's ~1 ms), and always at explicit phase changes and ticks. When several phases passed
    since the last read, the children's CPU is split among them by the wall time each was current.
    """

    def __init__(self, service: str, interval: float = 1.0):
        self.service = service
        self.interval = interval
        self._lock = threading.Lock()
        self._stack: list[str] = []
        self._rpcs: dict[str, int] = {}
        self.starting = True                      # until the service is ready: phase `startup`
        self._pid = os.getpid()
        self._pids = tree_pids(self._pid)
        self._own: dict[int, tuple[str, int]] = {}  # native thread id -> (its phase, its CPU clock id)
        self._last_own = time.process_time()
        self._last_rest = self._rest_seconds()
        self._last_threads: dict[int, float] = {}
        self._since = self._last_read = time.perf_counter()
        self._wall: dict[str, float] = {}         # phase -> wall seconds it was current since the last /proc read
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="cpu-account", daemon=True)

    def _rest_seconds(self) -> float:
        """CPU of everything in the tree but this process's own threads: live children and reaped ones (/proc)."""
        fields = _stat_fields(_PROC / str(self._pid) / "stat")
        reaped = 0.0 if fields is None else (int(fields[13]) + int(fields[14])) / _TICK  # cutime, cstime
        return reaped + sum(process_seconds(p) for p in self._pids if p != self._pid)

    def start(self) -> CpuAccount:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.charge()

    @property
    def current(self) -> str:
        if self._stack:
            return self._stack[-1]
        return next(reversed(self._rpcs), "startup" if self.starting else "idle")

    def charge(self) -> None:
        """Charges the CPU spent since the last charge to the current phase (own threads to theirs)."""
        with self._lock:
            self._charge_locked()

    def _charge_locked(self, read_children: bool = True) -> None:
        now, current = time.perf_counter(), self.current
        self._wall[current] = self._wall.get(current, 0.0) + now - self._since
        self._since = now
        own_total = time.process_time()
        own, self._last_own = own_total - self._last_own, own_total
        for tid, (name, clock) in self._own.items():
            try:
                seconds = time.clock_gettime(clock)
            except OSError:  # the thread is gone
                continue
            mine = min(max(0.0, seconds - self._last_threads.get(tid, seconds)), max(own, 0.0))
            self._last_threads[tid] = seconds
            child(CPU_SECONDS, self.service, name).inc(mine)
            own -= mine
        if own > 0:
            child(CPU_SECONDS, self.service, current).inc(own)
        if not read_children and now - self._last_read < CHILDREN_READ_SECONDS:
            return
        rest_total = self._rest_seconds()
        rest, self._last_rest, self._last_read = rest_total - self._last_rest, rest_total, now
        wall, self._wall = self._wall, {}
        spent = sum(wall.values())
        if rest > 0:
            for name, seconds in wall.items():
                share = rest * seconds / spent if spent > 0 else rest if name == current else 0.0
                if share > 0:
                    child(CPU_SECONDS, self.service, name).inc(share)

    def _tick(self) -> None:
        refresh = 0
        while not self._stop.wait(self.interval):
            refresh += 1
            if refresh % 5 == 0:
                # Children come and go rarely (an engine's start, a replaced worker). A new one is charged
                # all its CPU at once; one that exited and was waited for moved into its parent's cutime.
                pids = tree_pids(self._pid)
                with self._lock:
                    self._pids = pids
                    self._charge_locked()
            else:
                self.charge()

    # -- phases ------------------------------------------------------------------------------------

    def push(self, name: str) -> None:
        with self._lock:
            self._charge_locked()
            self._stack.append(name)

    def pop(self) -> None:
        with self._lock:
            self._charge_locked()
            self._stack.pop()

    def switch(self, name: str) -> None:
        with self._lock:
            self._charge_locked()
            if self._stack:
                self._stack[-1] = name

    def ready(self) -> None:
        """Start-up is over: CPU outside any phase or RPC is `idle` from now on."""
        with self._lock:
            self._charge_locked()
            self.starting = False

    def rpc_started(self, method: str) -> None:
        if method in _PROBES:
            return
        with self._lock:
            self._charge_locked(read_children=False)
            phase = _snake(method)
            self._rpcs[phase] = self._rpcs.pop(phase, 0) + 1  # re-inserted: the newest RPC names the phase

    def rpc_ended(self, method: str) -> None:
        if method in _PROBES:
            return
        with self._lock:
            self._charge_locked(read_children=False)
            phase = _snake(method)
            left = self._rpcs.pop(phase, 1) - 1
            if left > 0:
                self._rpcs[phase] = left

    def own_thread(self, name: str) -> None:
        """The calling thread's CPU is charged to `name` from now on, whatever the current phase."""
        tid = threading.get_native_id()
        clock = time.pthread_getcpuclockid(threading.get_ident())
        with self._lock:
            self._charge_locked()
            self._own[tid] = (name, clock)
            self._last_threads[tid] = time.clock_gettime(clock)


_ACCOUNT: CpuAccount | None = None


def start_account(service: str) -> CpuAccount:
    """The process's account (started once; later calls return it)."""
    global _ACCOUNT
    if _ACCOUNT is None:
        _ACCOUNT = CpuAccount(service).start()
    return _ACCOUNT


def account() -> CpuAccount | None:
    return _ACCOUNT


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Charges this process's CPU to `name` while the block runs (nested blocks: the innermost)."""
    if _ACCOUNT is None:
        yield
        return
    _ACCOUNT.push(name)
    try:
        yield
    finally:
        _ACCOUNT.pop()


def switch(name: str) -> None:
    """Renames the innermost running phase from here on (no-op outside a `phase` block or without an account)."""
    if _ACCOUNT is not None:
        _ACCOUNT.switch(name)


def ready() -> None:
    if _ACCOUNT is not None:
        _ACCOUNT.ready()


def own_thread(name: str) -> None:
    """The calling thread's CPU goes to `name` from now on (no-op without an account)."""
    if _ACCOUNT is not None:
        _ACCOUNT.own_thread(name)


def rpc_started(method: str) -> None:
    if _ACCOUNT is not None:
        _ACCOUNT.rpc_started(method)


def rpc_ended(method: str) -> None:
    if _ACCOUNT is not None:
        _ACCOUNT.rpc_ended(method)
