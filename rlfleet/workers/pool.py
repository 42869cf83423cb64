"""Worker processes that run user code, seen from the server: start one inside the fence, talk to it, kill it whole.

- Each worker is a fresh interpreter (`python -m rlfleet.workers.worker_main`) started with only the
  environment variables `limits.pass_env` names, inside the fence `isolation.plan_fence()` found:
  its own PID and mount namespaces and, unless `limits.allow_network`, its own network namespace;
  as root it drops to `limits.run_as_user`. Nothing is forked from the server, so nothing of its
  memory (tokens included) is in a worker, and starting one is safe while gRPC threads run.
- The server writes requests as pickles and reads replies as JSON only: user code can write to
  the reply pipe, and a pickle from it would run code in the server.
- The server waits on the reply pipe and on the process (a pidfd, which fires even when a grandchild
  keeps the pipe open). A worker that has to go gets its namespace killed, every descendant with it
  (setsid() or a double fork do not escape a PID namespace).
- Per-item progress is a shared-memory counter the worker bumps before each item, so the server
  knows which item hung or crashed.

Each service's pool (reward_server.workers, env_server.pool) drives its Workers with its own policy.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

from rlfleet.workers import isolation
from rlfleet.workers.frames import Frames, write_frame
from rlfleet.workers.isolation import kill_group
from rlfleet.workers.scripts import ScriptError, ScriptSource
from rlfleet.workers.worker_main import SHARED_BYTES, Job, WorkerLimits

TICK_SECONDS = 0.05
"""How often a pool's feeder looks at its worker's progress, deadlines and the caller's cancel."""
CPU_CHECK_TICKS = 10
"""The per-item CPU budget is checked every this many ticks (a /proc walk per check)."""
RECYCLE_AT = 0.9
"""A worker past this share of limits.cpu_seconds_per_worker is replaced before the kernel's RLIMIT_CPU kills it."""


@dataclass(frozen=True)
class Launch:
    """Everything needed to start one more worker."""

    command: tuple[str, ...]
    env: dict[str, str]
    job: Job
    fenced: bool
    """True when the command starts the worker as PID 1 of its own namespace (kill that, and all is gone)."""


PIPE_BYTES = 1 << 20
"""Pipe buffer asked for (Linux's default unprivileged maximum): a chunk of 512 items (~80 KB) then goes in one write,
where the default 64 KiB took two and a wait for the worker to read in between."""


def _widen(fd: int) -> None:
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:  # not Linux, or past /proc/sys/fs/pipe-max-size: the default size works, with more writes
        pass


def describe_exit(code: int | None) -> str:
    if code is None:
        return "worker vanished"
    if code == -signal.SIGKILL:  # not by us: we report our kills ourselves
        return "worker killed by SIGKILL (the kernel's OOM killer, or limits.cpu_seconds_per_worker reached)"
    if code < 0:
        return f"worker killed by {signal.Signals(-code).name}"
    return f"worker exited with code {code}"


class Worker:
    """One worker process seen from the server: process, pipes, shared progress counter."""

    def __init__(self, launch: Launch):
        self.launch = launch
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        for fd in (requests_w, replies_w):
            _widen(fd)
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
        # One poll object for the worker's life: multiprocessing.connection.wait() built a selector per call.
        self._poller = select.poll()
        for fd in (replies_r, self.sentinel):
            if fd is not None:
                self._poller.register(fd, select.POLLIN)

    @property
    def root_pid(self) -> int:
        """The process whose death ends the worker and all it started: its namespace's init, or the worker."""
        if self.launch.fenced:
            inner = isolation.children(self.process.pid)
            if inner:
                return inner[0]
        return self.process.pid

    def send(self, message, deadline: float) -> None:
        """Writes `message` pickled, or as is when it is bytes (a service's own encoding: reward_server.chunks)."""
        data = message if isinstance(message, bytes) else pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        write_frame(self.requests, data, deadline)

    def next_event(self, timeout: float) -> bytes | bool:
        """A complete reply frame; True when the worker is gone (or closed its pipe); False after `timeout`.

        Raises MalformedReply for a frame header no honest worker writes.
        """
        frame = self.replies.pop()
        if frame is not None:
            return frame
        ready = {fd for fd, _ in self._poller.poll(max(timeout, 0.0) * 1000)}
        if self.replies.fd in ready:
            try:
                self.replies.fill()
            except EOFError:
                self.settle(1.0)
                return True
            frame = self.replies.pop()
            if frame is not None:
                return frame
        return self.process.poll() is not None

    def settle(self, seconds: float) -> None:
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
        # The namespace's init exits on SIGTERM (rlfleet.workers.worker_main.init) and unshare then exits quietly
        # (SIGKILL makes it complain on stderr); SIGKILL from out here reaches an init whatever it did.
        for sig, seconds in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is None and (self.launch.fenced or sig == signal.SIGKILL):
                try:
                    os.kill(root, sig)
                except ProcessLookupError:
                    break
                self.settle(seconds)  # unshare exits once its child, the init, did: the namespace is empty
        kill_group(self.process.pid)
        self.process.kill()
        self.process.wait(5)
        for fd in (self.requests, self.replies.fd, self.sentinel):
            if fd is not None:
                os.close(fd)
        del self.progress, self._status
        self._shared.close()
        self._shared_file.close()


def plan_launch(script: ScriptSource | None, limits: WorkerLimits,
                serve_with: str) -> tuple[isolation.Fence, Launch]:
    """The strongest fence this machine allows and how to start a worker inside it running `serve_with`'s loop."""
    try:
        fence = isolation.plan_fence(limits.allow_network, limits.run_as_user)
    except ValueError as err:
        raise ScriptError(str(err)) from None
    readable = [os.getcwd()] + ([os.path.dirname(script.path)] if script else [])
    job = Job(serve_with, script, limits, fence.uid, fence.gid, tuple(readable), bool(fence.prefix))
    command = (*fence.prefix, sys.executable, "-m", "rlfleet.workers.worker_main")
    return fence, Launch(command, isolation.clean_environ(limits.pass_env), job, bool(fence.prefix))
