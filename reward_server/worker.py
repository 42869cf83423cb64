"""The reward loop of a worker process: rlfleet.workers.worker_main hands over to serve() once the worker is fenced.

Requests are pickled `(function name, items)` chunks from the server (reward_server.workers); each
reply is one JSON frame (rlfleet.workers.frames.send) of outcomes, which the server checks field by
field (reward_server.replies). The first reply is the catalog of functions, or the script's import error.
"""

from __future__ import annotations

import pickle

from reward_server.items import RewardItem
from reward_server.replies import encode_outcomes
from reward_server.scripts import RewardFunction, call_batched, call_one, calling_form, script_functions
from rlfleet.workers.frames import read_frame, send
from rlfleet.workers.scripts import ScriptError, ScriptSource, describe, load_script


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


def serve(job, requests: int, replies: int, progress) -> None:
    """Imports job.script and the built-ins, sends the catalog, then scores chunks until the pipe closes."""
    try:
        functions = available_functions(job.script)
    except ScriptError as err:
        send(replies, ["import_error", str(err)])
        return
    catalog = [[f.name, f.batched, f.kind, f.description] for f in functions.values()]
    send(replies, ["ready", catalog])
    while True:
        try:
            name, items = pickle.loads(read_frame(requests))
        except EOFError:
            return
        send(replies, run_chunk(functions[name], items, progress))
