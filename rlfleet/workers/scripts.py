"""User scripts (reward functions, environments): read once by the server, executed only inside a worker.

The server only reads the file's bytes, to hash them and to hand the same source to every worker,
so a file edited on disk mid-run cannot make workers disagree. `load_script` executes the text, and
with it arbitrary code: call it in a fenced worker process (rlfleet.workers.worker_main), never in a server.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
import traceback
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODULE_NAME = "rlfleet_reward_script"
"""The module a script runs as (reward_server.scripts finds the script's own functions by it)."""


class ScriptError(Exception):
    """The user's script cannot be used; the message starts with `FILE:LINE:` where one is known."""


@dataclass(frozen=True)
class ScriptSource:
    """A user's script read once by the server: its path (for tracebacks) and its exact text."""

    path: str
    text: str

    @classmethod
    def read(cls, path: str | Path) -> ScriptSource:
        path = Path(path).resolve()
        try:
            return cls(str(path), path.read_text())
        except OSError as err:
            raise ScriptError(f"{path}: cannot read reward script: {err.strerror}") from None


def describe(fn: Callable[..., Any]) -> str:
    """First line of a function's docstring."""
    doc = inspect.getdoc(fn) or ""
    return doc.splitlines()[0] if doc else ""


def _error_location(err: BaseException, path: str) -> str:
    """`FILE:LINE: Type: message` pointing into the script where possible."""
    if isinstance(err, SyntaxError) and err.filename == path:
        return f"{path}:{err.lineno}: SyntaxError: {err.msg}"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == path]
    where = f"{path}:{frames[-1].lineno}" if frames else path
    return f"{where}: {type(err).__name__}: {err}"


def load_script(source: ScriptSource) -> types.ModuleType:
    """Executes the script as a module; raises ScriptError naming the file and line on any failure."""
    module = types.ModuleType(MODULE_NAME)
    module.__file__ = source.path
    sys.modules[MODULE_NAME] = module
    # Scripts may import helper modules that sit beside them.
    sys.path.insert(0, str(Path(source.path).parent))
    try:
        exec(compile(source.text, source.path, "exec"), module.__dict__)  # noqa: S102 - running it is the point
    except BaseException as err:  # noqa: BLE001 - SystemExit at import is a broken script too
        raise ScriptError(_error_location(err, source.path)) from None
    return module


def script_version(source: ScriptSource | None, weights: Sequence[tuple[str, float]], model_id: str = "") -> str:
    """Short hash of the script text, the reward names and weights, and the reward model's identity."""
    digest = hashlib.sha256((source.text if source else "").encode())
    digest.update(repr(sorted(weights)).encode())
    digest.update(model_id.encode())
    return digest.hexdigest()[:16]
