"""Reward functions of a user's script: finding them, calling them and checking what they return.

Everything here runs inside a worker process (never in the server process): the script was
executed by rlfleet.workers.scripts.load_script, and calling its functions runs arbitrary code.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reward_server.items import Outcome
from rlfleet.outcomes import RewardItem, RewardStatus
from rlfleet.workers.scripts import MODULE_NAME, describe


@dataclass(frozen=True)
class RewardFunction:
    """A callable reward with its calling convention, as discovered in a script or among the built-ins."""

    name: str
    fn: Callable[..., Any]
    batched: bool
    kind: str
    description: str

    def accepted(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments this function can take: all of them with **kwargs, else the named ones."""
        names = _keyword_names(self.fn)
        return kwargs if names is None else {k: v for k, v in kwargs.items() if k in names}


@functools.cache
def _keyword_names(fn: Callable[..., Any]) -> frozenset[str] | None:
    """None when `fn` takes **kwargs, else its parameter names (cached: inspect.signature costs ~20 us a call)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return frozenset(params)


def calling_form(fn: Callable[..., Any]) -> bool | None:
    """True for f(prompts, completions, ...), False for f(prompt, completion, ...), None for anything else."""
    try:
        names = list(inspect.signature(fn).parameters)[:2]
    except (TypeError, ValueError):
        return None
    if names == ["prompts", "completions"]:
        return True
    if names == ["prompt", "completion"]:
        return False
    return None


def script_functions(module: types.ModuleType) -> dict[str, RewardFunction]:
    """Public functions defined in the script (not imported into it) with a reward calling form."""
    found = {}
    for name, fn in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != MODULE_NAME:
            continue
        form = calling_form(fn)
        if form is not None:
            found[name] = RewardFunction(name, fn, form, "function", describe(fn))
    return found


def check_value(value: Any) -> Outcome:
    """One returned value -> OK (a finite float or None) or INVALID_OUTPUT saying what was wrong."""
    if type(value) is float and math.isfinite(value):  # the common case, without the ABC check below
        return Outcome(RewardStatus.OK, value)
    if value is None:
        return Outcome(RewardStatus.OK, None)
    if isinstance(value, numbers.Real):  # bool included: TRL scripts often return True/False
        number = float(value)
        if math.isfinite(number):
            return Outcome(RewardStatus.OK, number)
        return Outcome(RewardStatus.INVALID_OUTPUT, error=f"returned {number} (not finite)")
    return Outcome(RewardStatus.INVALID_OUTPUT,
                   error=f"returned {type(value).__name__} {str(value)[:80]!r}, not a number")


def _failure(err: BaseException) -> str:
    if isinstance(err, SystemExit):
        return f"called sys.exit({err.code!r})"
    return f"{type(err).__name__}: {err}"[:500]


def call_batched(function: RewardFunction, items: Sequence[RewardItem]) -> list[Outcome] | str:
    """Calls a TRL-form function once for all items; a string is the exception it raised."""
    per_item = [item.kwargs() for item in items]
    # TRL passes each column as a list over the batch; an item without the column gets None.
    columns = {key: [kw.get(key) for kw in per_item] for key in {k for kw in per_item for k in kw}}
    try:
        values = function.fn([i.prompt for i in items], [i.completion for i in items], **function.accepted(columns))
    except BaseException as err:  # noqa: BLE001 - user code; SystemExit included
        return _failure(err)
    if hasattr(values, "tolist"):  # numpy arrays and torch tensors
        values = values.tolist()
    if not isinstance(values, list | tuple):
        bad = Outcome(RewardStatus.INVALID_OUTPUT,
                      error=f"returned {type(values).__name__}, not a list of {len(items)}")
        return [bad] * len(items)
    if len(values) != len(items):
        bad = Outcome(RewardStatus.INVALID_OUTPUT, error=f"returned {len(values)} values for {len(items)} items")
        return [bad] * len(items)
    return [check_value(v) for v in values]


def call_one(function: RewardFunction, item: RewardItem) -> Outcome:
    """Calls a per-item function; an exception (or sys.exit) becomes an ERROR outcome."""
    try:
        value = function.fn(item.prompt, item.completion, **function.accepted(item.kwargs()))
    except BaseException as err:  # noqa: BLE001 - user code; SystemExit included
        return Outcome(RewardStatus.ERROR, error=_failure(err))
    return check_value(value)
