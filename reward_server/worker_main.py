"""A reward worker process: `python -m reward_server.worker_main REQUESTS_FD REPLIES_FD SHARED_FD` (started by workers.py).

Reads its job (script, limits, user) from REQUESTS_FD, fences itself in (rlimits with hard = soft,
the drop to an unprivileged user, no new privileges), imports the script, then answers chunks.
Requests are pickles written by the server (the worker trusts its server); every reply is JSON
(`plain data`), because the server must never unpickle what reward code could have written.
SHARED_FD is a 16-byte shared file: the index (from 1) of the item being scored, then the worker's
wait status + 1 once it ended (written by the namespace's init, see init()).
A Job with `serve_with` hands the fenced worker to another service's loop instead of the reward
chunks (env_server.worker: environment sessions), so both run behind the same fence.
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

from reward_server import isolation
from reward_server.items import RewardItem
from reward_server.replies import encode_outcomes, read_frame, send
from reward_server.scripts import (
    RewardFunction,
    ScriptError,
    ScriptSource,
    call_batched,
    call_one,
    calling_form,
    describe,
    load_script,
    script_functions,
)

SHARED_BYTES = 16


@dataclass(frozen=True)
class WorkerLimits:
    """What one worker may use and reach (config.LimitsConfig documents each field); None = not limited."""

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
    """The first message a worker reads: what to load and how to fence itself."""

    script: ScriptSource | None
    limits: WorkerLimits
    uid: int | None = None
    gid: int | None = None
    readable: tuple[str, ...] = field(default_factory=tuple)
    """Directories the worker must still read after dropping to uid (the script's folder, the service's cwd)."""
    private_mounts: bool = False
    """True when the worker has its own mount namespace, where expose() may mount without touching the host."""
    serve_with: str = ""
    """A module whose serve(job, requests, replies, progress) answers after the fence instead of the reward loop."""


def apply_limits(limits: WorkerLimits) -> None:
    """setrlimit with hard = soft, so neither the worker nor anything it starts can raise a limit again."""
    cpu = None if limits.cpu_seconds_per_worker is None else int(limits.cpu_seconds_per_worker) + 1
    for which, value in ((resource.RLIMIT_AS, limits.address_space_bytes),
                         (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_NPROC, limits.processes),
                         (resource.RLIMIT_CPU, cpu)):
        if value is not None:
            resource.setrlimit(which, (value, value))


def available_functions(script: ScriptSource | None) -> dict[str, RewardFunction]:
    """Built-ins, then the script's functions (a script function shadows a built-in of the same name)."""
    from reward_server.builtins import BUILTINS

    functions = {name: RewardFunction(name, fn, bool(calling_form(fn)), "builtin", describe(fn))
                 for name, fn in BUILTINS.items()}
    if script is not None:
        functions.update(script_functions(load_script(script)))
    return functions


def run_chunk(function: RewardFunction, items: list[RewardItem], progress) -> list:
    """["ok", outcomes] or ["raised", message] for a batch function that raised."""
    if function.batched:
        progress.value = 1
        result = call_batched(function, items)
        return ["raised", result] if isinstance(result, str) else ["ok", encode_outcomes(result)]
    outcomes = []
    for i, item in enumerate(items):
        progress.value = i + 1  # the server reads this to know which item hung or crashed
        outcomes.append(call_one(function, item))
    return ["ok", encode_outcomes(outcomes)]


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
    try:
        fence(job)
        handler = importlib.import_module(job.serve_with).serve if job.serve_with else None
        functions = {} if handler else available_functions(job.script)
    except ScriptError as err:
        send(replies, ["import_error", str(err)])
        return
    if handler is not None:
        return handler(job, requests, replies, progress)
    catalog = [[f.name, f.batched, f.kind, f.description] for f in functions.values()]
    send(replies, ["ready", catalog])
    while True:
        try:
            name, items = pickle.loads(read_frame(requests))
        except EOFError:
            return
        send(replies, run_chunk(functions[name], items, progress))


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
    from reward_server import worker_main

    worker_main.main(sys.argv[1:])
