"""The two sandboxed halves of `code_tests`: `solution` runs the model's program, `tests` runs the asserts.

Run as `python -I -c <this file's text> solution|tests FD_IN FD_OUT`, two pipes connecting the halves
(stdlib only: it is executed as text, never imported inside the sandbox). The split is what makes
the verdict trustworthy: the tests, their results and the harness live in a process that never
runs a line of the completion, so the completion cannot read a secret, patch `exec` or `builtins`,
define an always-equal object or exit early to pass. It can only answer calls, and every answer
crosses the pipe as plain data (JSON of numbers, strings, lists, tuples, dicts, sets, bytes, None);
anything else stays in the solution process as an opaque handle whose methods the tests may call.

Known limits: a test that checks its own argument after a call (in-place mutation) sees it
unchanged, and a function cannot be passed to the solution (a lambda argument fails the test).
"""

from __future__ import annotations

import builtins
import importlib
import json
import os
import sys
import types

PLAIN = (type(None), bool, int, float, str)


def encode(value, other):
    """`value` as JSON-ready data; `other(value)` encodes what is not plain data (a handle, or TypeError)."""
    if isinstance(value, bool) or value is None:
        return value
    for base in (int, float, str):  # subclasses (an IntEnum, a str subclass) cross as their base type
        if isinstance(value, base):
            return base(value)
    if isinstance(value, list):
        return [encode(v, other) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v, other) for v in value]}
    if isinstance(value, set | frozenset):
        return {type(value).__name__ if type(value) in (set, frozenset) else "set": [encode(v, other) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k, other), encode(v, other)] for k, v in value.items()]}
    if isinstance(value, bytes):
        return {"bytes": value.hex()}
    return other(value)


def decode(data, handle):
    """Plain data back from JSON; `handle(n)` makes the stand-in for handle n. Raises ValueError on anything else."""
    if type(data) in PLAIN:
        return data
    if type(data) is list:
        return [decode(v, handle) for v in data]
    if type(data) is not dict or len(data) != 1:
        raise ValueError("not an encoded value")
    (kind, inner), = data.items()
    if kind in ("tuple", "set", "frozenset") and type(inner) is list:
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](decode(v, handle) for v in inner)
    if kind == "dict" and type(inner) is list:
        return {decode(k, handle): decode(v, handle) for k, v in inner}
    if kind == "bytes" and type(inner) is str:
        return bytes.fromhex(inner)
    if kind == "handle" and type(inner) is int:
        return handle(inner)
    raise ValueError(f"unknown encoding {kind!r}")


def serve_solution(requests, replies) -> None:
    """Runs the program, reports its top-level names, then answers calls until the tests hang up."""
    job = json.loads(sys.stdin.read())
    scope = {"__name__": "__main__"}
    exec(compile(job["code"], "solution.py", "exec"), scope)  # noqa: S102 - running it is the point
    handles: list = []

    def keep(value):
        if hasattr(value, "tolist") and not isinstance(value, type):  # numpy arrays and scalars
            return encode(value.tolist(), keep)
        handles.append(value)
        return {"handle": len(handles) - 1}

    names = {}
    for name, value in list(scope.items()):
        if name.startswith("__"):
            continue
        try:
            names[name] = {"module": value.__name__} if isinstance(value, types.ModuleType) else encode(value, keep)
        except RecursionError:  # a self-referencing structure stays behind as a handle
            names[name] = keep(value)
    replies.write(json.dumps(names) + "\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        try:
            target = handles[request["target"]]
            if request["op"] == "call":
                args = decode(request["args"], handles.__getitem__)
                result = target(*args, **decode(request["kwargs"], handles.__getitem__))
            elif request["op"] == "getattr":
                result = getattr(target, request["name"])
            else:
                result = list(target)
            reply = {"value": encode(result, keep)}
        except BaseException as err:  # noqa: BLE001 - the tests decide what an exception means
            reply = {"raised": type(err).__name__, "message": str(err)[:500]}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()


class SolutionGone(Exception):
    """The solution process exited or answered with something that is not an encoded value."""


class Remote:
    """A value that stayed in the solution process: calls and attributes are asked for over the pipe."""

    def __init__(self, ask, ident: int):
        object.__setattr__(self, "_ask", ask)
        object.__setattr__(self, "_id", ident)

    def __call__(self, *args, **kwargs):
        return self._ask({"op": "call", "target": self._id, "args": encode(list(args), _handle_of),
                          "kwargs": encode(kwargs, _handle_of)})

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ask({"op": "getattr", "target": self._id, "name": name})

    def __iter__(self):
        return iter(self._ask({"op": "list", "target": self._id}))

    def __repr__(self):
        return f"<solution object {self._id}>"


def _handle_of(value):
    if isinstance(value, Remote):
        return {"handle": object.__getattribute__(value, "_id")}
    raise TypeError(f"cannot pass {type(value).__name__} to the solution")


def _raise_remote(name: str, message: str):
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):  # never SystemExit or KeyboardInterrupt
        raise kind(message)
    raise RuntimeError(f"{name}: {message}")


def run_tests(requests, replies, verdicts) -> None:
    """Builds the tests' globals from the solution's names, runs each test, writes "i pass" / "i fail"."""

    def ask(request):
        requests.write(json.dumps(request) + "\n")
        requests.flush()
        try:
            reply = json.loads(replies.readline())
            if "raised" not in reply:
                return decode(reply["value"], lambda n: Remote(ask, n))
            name, message = str(reply["raised"]), str(reply.get("message", ""))
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
            raise SolutionGone(str(err)) from None
        _raise_remote(name, message)

    tests = json.loads(sys.stdin.read())["tests"]
    scope = {"__name__": "__main__"}
    try:
        names = json.loads(replies.readline())
        for name, data in names.items():
            if name in vars(builtins):
                continue  # a solution's `abs` must not stand in for the real one in the tests
            if type(data) is dict and set(data) == {"module"}:
                if str(data["module"]).split(".")[0] in sys.stdlib_module_names:
                    scope[name] = importlib.import_module(data["module"])
            elif name not in sys.stdlib_module_names:  # nor an object named `math` for the module
                scope[name] = decode(data, lambda n: Remote(ask, n))
    except (ValueError, TypeError, AttributeError, RecursionError, ImportError):
        names = None  # the program never finished: every test fails
    for i, test in enumerate(tests):
        passed = names is not None
        if passed:
            try:
                exec(compile(test, f"test_{i}.py", "exec"), scope)  # noqa: S102
            except BaseException:  # noqa: BLE001 - any failure of a test is a fail
                passed = False
        os.write(verdicts, f"{i} {'pass' if passed else 'fail'}\n".encode())


if __name__ == "__main__":
    role, fd_in, fd_out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if role == "solution":
        serve_solution(os.fdopen(fd_in, "r"), os.fdopen(fd_out, "w"))
    else:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no ptrace or /proc/PID/fd from the solution
        # The tests' own prints go nowhere; verdicts go to the real stdout, which only this code writes.
        verdict_fd = os.dup(1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        run_tests(os.fdopen(fd_out, "w"), os.fdopen(fd_in, "r"), verdict_fd)
