"""What runs inside a reward worker process: limits, script import, then a loop of reward calls.

Imported by the fork server (see workers.PRELOAD), so it stays light and never imports grpc.
"""

from __future__ import annotations

import math
import os
import resource
from dataclasses import dataclass
from multiprocessing.connection import Connection

from reward_server.items import RewardItem
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


@dataclass(frozen=True)
class WorkerLimits:
    """rlimits applied inside each worker; None leaves a limit as inherited."""

    address_space_bytes: int | None = 4 * 1024**3
    open_files: int | None = 256
    processes: int | None = 256
    cpu_seconds_per_item: float | None = 60.0


def apply_limits(limits: WorkerLimits) -> None:
    for which, value in ((resource.RLIMIT_AS, limits.address_space_bytes),
                         (resource.RLIMIT_NOFILE, limits.open_files),
                         (resource.RLIMIT_NPROC, limits.processes)):
        if value is not None:
            resource.setrlimit(which, (value, value))


def arm_cpu_limit(limits: WorkerLimits, items: int) -> None:
    """Moves the soft CPU limit to (CPU used so far + budget): RLIMIT_CPU counts the process's whole life."""
    if limits.cpu_seconds_per_item is None:
        return
    usage = resource.getrusage(resource.RUSAGE_SELF)
    soft = math.ceil(usage.ru_utime + usage.ru_stime + limits.cpu_seconds_per_item * items)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def available_functions(script: ScriptSource | None) -> dict[str, RewardFunction]:
    """Built-ins, then the script's functions (a script function shadows a built-in of the same name)."""
    from reward_server.builtins import BUILTINS

    functions = {name: RewardFunction(name, fn, bool(calling_form(fn)), "builtin", describe(fn))
                 for name, fn in BUILTINS.items()}
    if script is not None:
        functions.update(script_functions(load_script(script)))
    return functions


def run_chunk(function: RewardFunction, items: list[RewardItem], progress, limits: WorkerLimits) -> tuple:
    """("ok", outcomes) or ("raised", message) for a batch function that raised."""
    # One CPU budget for the whole chunk: re-arming per item costs two syscalls (~5 us) per item, and
    # the per-item wall-clock deadline enforced by the server is what catches a single hung item.
    arm_cpu_limit(limits, len(items))
    if function.batched:
        progress.value = 1
        result = call_batched(function, items)
        return ("raised", result) if isinstance(result, str) else ("ok", result)
    outcomes = []
    for i, item in enumerate(items):
        progress.value = i + 1  # the server reads this to know which item hung or crashed
        outcomes.append(call_one(function, item))
    return ("ok", outcomes)


def worker_main(conn: Connection, progress, script: ScriptSource | None, limits: WorkerLimits) -> None:
    """Entry point of a worker process."""
    os.setsid()  # lead a new process group so that one killpg reaches everything this worker starts
    apply_limits(limits)
    try:
        functions = available_functions(script)
    except ScriptError as err:
        conn.send(("import_error", str(err)))
        return
    conn.send(("ready", [(f.name, f.batched, f.kind, f.description) for f in functions.values()]))
    while True:
        try:
            name, items = conn.recv()
        except EOFError:
            return
        conn.send(run_chunk(functions[name], items, progress, limits))
