"""A worker process: `python -m rlfleet.workers.worker_main REQUESTS_FD REPLIES_FD SHARED_FD` (started by pool.py).

Reads its Job (the service's loop, script, limits, user) from REQUESTS_FD, imports the service's loop
(Job.serve_with: reward_server.worker, env_server.worker), fences itself in (rlimits with hard = soft,
the drop to an unprivileged user, no new privileges), then hands over to that loop, which imports the
user's script and answers. Requests are pickles written by the server (the worker trusts its server);
every reply is JSON (`plain data`, rlfleet.workers.frames), because the server must never unpickle what
user code could have written. SHARED_FD is a 16-byte shared file: the index (from 1) of the item being
worked on, then the worker's wait status + 1 once it ended (written by the namespace's init, see init()).
"""

from __future__ import annotations

import ctypes
import importlib
import mmap
import os
import pickle
import resource
import signal
import sys
from dataclasses import dataclass, field

from rlfleet.workers import isolation
from rlfleet.workers.frames import read_frame, send
from rlfleet.workers.scripts import ScriptError, ScriptSource

SHARED_BYTES = 16


# Here rather than beside LimitsConfig (limits.py): the worker unpickles it, and limits.py imports
# pydantic, which would add ~0.5 s to every worker start.
@dataclass(frozen=True)
class WorkerLimits:
    """What one worker may use and reach (limits.LimitsConfig documents each field); None = not limited."""

    address_space_bytes: int | None = 4 * 1024**3
    open_files: int | None = 256
    processes: int | None = 256
    cpu_seconds_per_item: float | None = 60.0
    cpu_seconds_per_worker: float | None = 3600.0
    allow_network: bool = False
    pass_env: tuple[str, ...] | list[str] = isolation.DEFAULT_PASS_ENV
    run_as_user: str = "nobody"


@dataclass(frozen=True)
class Job:
    """The first message a worker reads: whose loop to run, what to load and how to fence itself."""

    serve_with: str
    """A module whose serve(job, requests, replies, progress) answers once the worker is fenced."""
    script: ScriptSource | None
    limits: WorkerLimits
    uid: int | None = None
    gid: int | None = None
    readable: tuple[str, ...] = field(default_factory=tuple)
    """Directories the worker must still read after dropping to uid (the script's folder, the service's cwd)."""
    private_mounts: bool = False
    """True when the worker has its own mount namespace, where expose() may mount without touching the host."""


def apply_limits(limits: WorkerLimits) -> None:
    """setrlimit with hard = soft, so neither the worker nor anything it starts can raise a limit again."""
    cpu = None if limits.cpu_seconds_per_worker is None else int(limits.cpu_seconds_per_worker) + 1
    for which, value in ((resource.RLIMIT_AS, limits.address_space_bytes),
                         (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_NPROC, limits.processes),
                         (resource.RLIMIT_CPU, cpu)):
        if value is not None:
            resource.setrlimit(which, (value, value))


def fence(job: Job) -> None:
    """Limits, then (as root) the paths to keep readable and the drop to job.uid, then no new privileges.

    Raises ScriptError when the worker cannot be fenced as configured.
    """
    apply_limits(job.limits)
    if job.uid is not None:
        paths = isolation.needed_paths(job.readable)
        blocked = isolation.blocked(paths, job.uid, job.gid)
        if blocked and not job.private_mounts:
            raise ScriptError(f"limits.run_as_user: {job.limits.run_as_user} cannot read {blocked[0]} (a parent "
                              "folder is closed to it) and this machine gives workers no mount namespace to fix "
                              "that; make it readable or set limits.run_as_user to root")
        try:
            isolation.expose(paths, job.uid, job.gid)
            isolation.drop_privileges(job.uid, job.gid)
        except OSError as err:
            raise ScriptError(f"limits.run_as_user: cannot switch the worker to {job.limits.run_as_user}: {err}") from None
    isolation.harden()


def serve(requests: int, replies: int, progress) -> None:
    job: Job = pickle.loads(read_frame(requests))
    # The service's own loop (trusted code) is imported before the fence, so that needed_paths()
    # keeps its package readable after the drop to job.uid.
    handler = importlib.import_module(job.serve_with).serve
    try:
        fence(job)
    except ScriptError as err:
        send(replies, ["import_error", str(err)])
        return
    handler(job, requests, replies, progress)


def init(worker: int, status) -> None:
    """PID 1 of the worker's namespace: reaps every orphan the worker leaves, exits when the worker does.

    Its exit tears the namespace down (the kernel kills whatever is left). The worker's own wait
    status goes to the shared file, since PID 1 cannot re-raise a signal on itself. The server stops
    it with SIGTERM, which reaches a namespace's init only through a handler.
    """
    signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
    while True:
        try:
            pid, code = os.wait()
        except ChildProcessError:
            os._exit(0)
        if pid == worker:
            status.value = code + 1
            exit_code = os.waitstatus_to_exitcode(code)
            os._exit(exit_code if exit_code >= 0 else 128 - exit_code)


def main(argv: list[str]) -> None:
    requests_fd, replies_fd, shared_fd = (int(a) for a in argv)
    shared = mmap.mmap(shared_fd, SHARED_BYTES)
    progress, status = (ctypes.c_int64.from_buffer(shared, offset) for offset in (0, 8))
    if os.getpid() == 1:  # started by `unshare --pid --fork`: stay as the namespace's init, work in a child
        worker = os.fork()
        if worker:
            os.close(requests_fd)
            os.close(replies_fd)
            init(worker, status)
    serve(requests_fd, replies_fd, progress)


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy, so that the pickled Job's classes are this code's.
    from rlfleet.workers import worker_main

    worker_main.main(sys.argv[1:])
