"""The reward loop of a worker process: rlfleet.workers.worker_main hands over to serve() once the worker is fenced.

Requests are `(function name, RewardBatch)` chunks from the server (reward_server.workers), marshalled
as a few lists (reward_server.chunks), not an object per item. Each reply is one frame of the chunk's
outcomes as columns (reward_server.replies: raw doubles, then JSON), which the server checks field by
field. The first reply is the catalog of functions, or the script's import error.
"""

from __future__ import annotations

import gc
import json

from reward_server.chunks import decode_chunk
from reward_server.items import RewardBatch
from reward_server.replies import encode_outcomes
from reward_server.scripts import RewardFunction, call_batched, call_each, calling_form, script_functions
from rlfleet.workers.frames import read_frame, send, send_frame
from rlfleet.workers.scripts import ScriptError, ScriptSource, describe, load_script


def available_functions(script: ScriptSource | None) -> dict[str, RewardFunction]:
    """Built-ins, then the script's functions (a script function shadows a built-in of the same name)."""
    from reward_server.builtins import BUILTINS

    functions = {name: RewardFunction(name, fn, bool(calling_form(fn)), "builtin", describe(fn))
                 for name, fn in BUILTINS.items()}
    if script is not None:
        functions.update(script_functions(load_script(script)))
    return functions


def run_chunk(function: RewardFunction, batch: RewardBatch, progress) -> bytes:
    """The reply frame to one chunk: its outcomes (replies.encode_outcomes), or ["raised", message] for a batch
    function that raised."""
    if function.batched:
        progress.value = 1
        result = call_batched(function, batch)
        return json.dumps(["raised", result]).encode() if isinstance(result, str) else encode_outcomes(result)
    return encode_outcomes(call_each(function, batch, progress))


def serve(job, requests: int, replies: int, progress) -> None:
    """Imports job.script and the built-ins, sends the catalog, then scores chunks until the pipe closes."""
    try:
        functions = available_functions(job.script)
    except ScriptError as err:
        send(replies, ["import_error", str(err)])
        return
    catalog = [[f.name, f.batched, f.kind, f.description] for f in functions.values()]
    gc.freeze()  # the imported script and built-ins (sympy among them) stay out of the cyclic GC's scans
    send(replies, ["ready", catalog])
    while True:
        try:
            name, batch = decode_chunk(read_frame(requests))
        except EOFError:
            return
        send_frame(replies, run_chunk(functions[name], batch, progress))
