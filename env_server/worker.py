"""The environment loop of a worker process: rlfleet.workers.worker_main hands over to serve() once the worker is fenced.

Requests are pickled tuples from the server, `(operation, session_id, *arguments)` with operation
one of start / tool / message / finish / close (env_server.adapter.Sessions' methods); each reply
is one JSON frame (rlfleet.workers.frames.send), which the server checks field by field
(env_server.replies). The first reply is the catalog, or the script's import error.
"""

from __future__ import annotations

import pickle

from env_server.adapter import Sessions, load_environments
from rlfleet.workers.frames import read_frame, send
from rlfleet.workers.scripts import ScriptError

OPERATIONS = frozenset({"start", "tool", "message", "finish", "close"})


def serve(job, requests: int, replies: int, progress) -> None:  # noqa: ARG001 - progress: reward items only
    """Loads the environments of job.script, sends the catalog, then answers session calls until the pipe closes."""
    try:
        if job.script is None:
            raise ScriptError("the environment server needs a script")
        environments = load_environments(job.script)
    except ScriptError as err:
        send(replies, ["import_error", str(err)])
        return
    send(replies, ["ready", [env.describe() for env in environments.values()]])
    sessions = Sessions(environments, job.script.path)
    while True:
        try:
            operation, *arguments = pickle.loads(read_frame(requests))
        except EOFError:
            return
        if operation not in OPERATIONS:
            send(replies, ["error", None, True, f"unknown operation {operation!r}"])
            continue
        try:
            send(replies, getattr(sessions, operation)(*arguments))
        except KeyError as err:  # a session this worker does not hold: the server's bookkeeping, not user code
            send(replies, ["error", None, True, f"this worker holds no session {err}"])
