"""Reward functions of a user's script: finding them, calling them and checking what they return.

Everything here runs inside a worker process (never in the server process): the script was
executed by rlfleet.workers.scripts.load_script, and calling its functions runs arbitrary code.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import math
import numbers
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from reward_server.items import Outcome, Outcomes
from rlfleet.outcomes import RewardBatch, RewardStatus
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


def keyword_columns(batch: RewardBatch) -> dict[str, list[Any]]:
    """The columns a reward function gets as keyword arguments: the dataset's, completion_tokens and finish_reason.

    TRL passes each column as a list over the batch (an item without it has None there); a per-item
    function gets entry i of each.
    """
    n = len(batch)
    return {**batch.columns, "completion_tokens": batch.completion_tokens or [0] * n,
            "finish_reason": batch.finish_reasons or [None] * n}


def _check_into(out: Outcomes, i: int, value: Any) -> None:
    """Puts the i-th returned value into `out` (already holding 0.0 there): a value, absent, or INVALID_OUTPUT."""
    outcome = check_value(value)
    if outcome.status is not RewardStatus.OK:
        out.failures[i] = outcome
    elif outcome.value is None:
        out.absent.append(i)
    else:
        out.values[i] = outcome.value


def checked(values: Sequence[Any]) -> Outcomes:
    """Returned values as Outcomes; finite floats (the common case) go through without a per-item object."""
    # A sum of finite floats may overflow to inf: then the slow path finds every value fine.
    if all(type(v) is float for v in values) and math.isfinite(sum(values)):
        return Outcomes(list(values))
    out = Outcomes([0.0] * len(values))
    for i, value in enumerate(values):
        _check_into(out, i, value)
    return out


def call_batched(function: RewardFunction, batch: RewardBatch) -> Outcomes | str:
    """Calls a TRL-form function once for the whole batch; a string is the exception it raised."""
    try:
        values = function.fn(batch.prompts, batch.completions, **function.accepted(keyword_columns(batch)))
    except BaseException as err:  # noqa: BLE001 - user code; SystemExit included
        return _failure(err)
    if hasattr(values, "tolist"):  # numpy arrays and torch tensors
        values = values.tolist()
    if not isinstance(values, list | tuple):
        error = f"returned {type(values).__name__}, not a list of {len(batch)}"
        return Outcomes.failed(len(batch), Outcome(RewardStatus.INVALID_OUTPUT, error=error))
    if len(values) != len(batch):
        error = f"returned {len(values)} values for {len(batch)} items"
        return Outcomes.failed(len(batch), Outcome(RewardStatus.INVALID_OUTPUT, error=error))
    return checked(values)


@functools.cache
def _item_loop(names: tuple[str, ...]) -> Callable[..., None]:
    """A loop calling f(prompt, completion, name=value, ...) for each item, with `names` spelled out as keywords.

    Generated because it is what costs least per item: the regex built-in takes ~0.95 us; a loop building
    a kwargs dict per item and calling f(p, c, **kwargs) added ~0.8 us, this one ~0.2 us (batch 512).
    `names` are identifiers (the servicer checks column names), so the source below is only ever that
    of the template; a Python keyword (a column named "class") is passed through a ** dict instead.
    """
    if not all(name.isidentifier() for name in names):
        raise ValueError(f"column names must be identifiers: {names}")
    params = [f"v{i}" for i in range(len(names))]
    keywords = ", ".join(f"{n}={v}" for n, v in zip(names, params, strict=True) if not keyword.iskeyword(n))
    others = ", ".join(f"{n!r}: {v}" for n, v in zip(names, params, strict=True) if keyword.iskeyword(n))
    arguments = ", ".join(["p", "c", *([keywords] if keywords else []), *([f"**{{{others}}}"] if others else [])])
    columns = "".join(f", {v}s" for v in params)
    source = (f"def loop(f, prompts, completions{columns}, progress, values, odd):\n"
              f"    for i, (p, c{''.join(', ' + v for v in params)}) in enumerate(zip(prompts, completions{columns})):\n"
              f"        progress.value = i + 1\n"
              f"        try:\n"
              f"            value = f({arguments})\n"
              f"        except BaseException as err:\n"  # user code; SystemExit included
              f"            odd[i] = err\n"
              f"            continue\n"
              f"        if type(value) is float and value - value == 0.0:\n"  # finite: inf - inf and NaN are NaN
              f"            values[i] = value\n"
              f"        else:\n"
              f"            odd[i] = value\n")
    namespace: dict[str, Any] = {}
    exec(compile(source, f"<reward item loop {names}>", "exec"), namespace)  # noqa: S102 - our template only
    return namespace["loop"]


class _NoProgress:
    value = 0


def call_each(function: RewardFunction, batch: RewardBatch, progress=None) -> Outcomes:
    """Calls a per-item function on each item; an exception (or sys.exit) is that item's ERROR.

    `progress.value` is set to i + 1 before item i: the server reads it to know which item hung or crashed.
    """
    columns = function.accepted(keyword_columns(batch))
    out = Outcomes([0.0] * len(batch))
    odd: dict[int, Any] = {}  # index -> what the function raised, or a value that is not a finite float
    # `progress is None`, not `progress or`: a ctypes c_int64 holding 0 is falsy.
    _item_loop(tuple(columns))(function.fn, batch.prompts, batch.completions, *columns.values(),
                               _NoProgress() if progress is None else progress, out.values, odd)
    for i, value in odd.items():
        if isinstance(value, BaseException):
            out.failures[i] = Outcome(RewardStatus.ERROR, error=_failure(value))
        else:
            _check_into(out, i, value)
    return out
