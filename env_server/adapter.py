"""TRL's environment_factory convention, unchanged: which environments a script defines, their tools, and calling them.

Runs inside a worker process (it imports and calls user code). As in TRL 1.16 (trl/trainer/grpo_trainer.py):
- the script's `environment_factory` is a callable returning an instance, or a dict {name: callable}
  whose key a row's `environment` column selects; without one, every class the script defines with
  a `reset` method is an environment, named after the class;
- instances are made by the factory and reused ("construct once, reset often"): `reset(**row)`
  starts each session and returns text to append to the last user message, or None;
- the tools are the class's public functions (`inspect.getmembers(cls, inspect.isfunction)`) but
  reset and get_reward; a call gets the model's arguments as keywords and the model gets
  `str(result)`, or `str({"error": str(exception)})` when the tool raised;
- an optional `get_reward()` scores the session; coroutine tools and get_reward are awaited.
rlfleet's additions, which TRL ignores: `on_message(message) -> str | None` answers a model turn
without a tool call (returning None, or not defining it, ends the session, as in TRL); an instance
attribute `done = True` ends the session after the step that set it; get_reward may return a
dict of named components (the reward is their sum).
"""

from __future__ import annotations

import asyncio
import inspect
import math
import numbers
import re
import traceback
from dataclasses import dataclass, field
from typing import Any

from env_server.tools import SchemaError, tool_schema
from rlfleet.workers.scripts import ScriptError, ScriptSource, describe, load_script

NOT_TOOLS = frozenset({"reset", "get_reward", "on_message"})
NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
"""Environment names: they are metric labels and StartSession's `environment`."""

# Replies are [status, observation, done, error] (start, tool, message, close) or [status, reward, components, error]
# (finish), statuses being rlfleet.environments.EnvStatus / rlfleet.outcomes.RewardStatus values.


@dataclass
class EnvironmentType:
    """One environment of the script: how to make instances, its tools, and instances free for reuse."""

    name: str
    factory: Any
    cls: type
    tools: dict[str, dict[str, Any]]
    """Tool name -> its JSON schema, in name order."""
    idle: list[Any] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        """The catalog entry the server reads (plain JSON data)."""
        return {"name": self.name, "description": describe(self.cls), "tools": list(self.tools.values()),
                "has_reward": callable(getattr(self.cls, "get_reward", None)),
                "has_message": callable(getattr(self.cls, "on_message", None))}


def _where(fn: Any) -> str:
    code = getattr(fn, "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else getattr(fn, "__qualname__", repr(fn))


def located(err: BaseException, path: str) -> str:
    """`Type: message (FILE:LINE)` with the innermost line of the script, where the script is in the traceback."""
    if isinstance(err, SystemExit):
        return f"called sys.exit({err.code!r})"
    frames = [f for f in traceback.extract_tb(err.__traceback__) if f.filename == path]
    where = f" ({path}:{frames[-1].lineno})" if frames else ""
    return f"{type(err).__name__}: {err}"[:500] + where


def _factories(module: Any, path: str) -> dict[str | None, Any]:
    factory = vars(module).get("environment_factory")
    if factory is None:
        return {name: cls for name, cls in vars(module).items()
                if inspect.isclass(cls) and cls.__module__ == module.__name__ and not name.startswith("_")
                and callable(getattr(cls, "reset", None))}
    if isinstance(factory, dict):
        return dict(factory)
    if callable(factory):
        return {None: factory}
    raise ScriptError(f"{path}: environment_factory must be a callable or a dict of callables, "
                      f"not {type(factory).__name__}")


def load_environments(source: ScriptSource) -> dict[str, EnvironmentType]:
    """Every environment of the script, each probed with one instance (which is kept for reuse); ScriptError
    naming the file, line or environment that cannot be served."""
    module = load_script(source)
    environments: dict[str, EnvironmentType] = {}
    for key, factory in _factories(module, source.path).items():
        if not callable(factory):
            raise ScriptError(f"{source.path}: environment_factory[{key!r}] is not callable")
        try:
            probe = factory()
        except BaseException as err:  # noqa: BLE001 - user code; SystemExit included
            raise ScriptError(f"{source.path}: making environment {key or factory!r} raised "
                              f"{located(err, source.path)}") from None
        cls = type(probe)
        name = cls.__name__ if key is None else key
        if not (isinstance(name, str) and NAME.match(name)):
            raise ScriptError(f"{source.path}: environment name {name!r} is not 1-64 characters of [A-Za-z0-9_.:-]")
        if not callable(getattr(probe, "reset", None)):
            raise ScriptError(f"{source.path}: environment {name}: {cls.__name__} defines no reset() method")
        tools = {}
        for tool, fn in inspect.getmembers(cls, predicate=inspect.isfunction):
            if tool in NOT_TOOLS or tool.startswith("_"):
                continue
            try:
                tools[tool] = tool_schema(fn, tool)
            except SchemaError as err:
                raise ScriptError(f"{_where(fn)}: environment {name}: {err}") from None
        environments[name] = EnvironmentType(name, factory, cls, tools, [probe])
    if not environments:
        raise ScriptError(f"{source.path}: defines no environment (a class with a reset() method, or "
                          "environment_factory)")
    return environments


def _reward(value: Any, name: str) -> list:
    """A finish reply for what get_reward() returned: None, a finite number, or a dict of finite numbers."""
    if value is None:
        return ["ok", None, {}, ""]
    parts = value if isinstance(value, dict) else {name: value}
    components = {}
    for key, part in parts.items():
        if not isinstance(key, str) or not isinstance(part, numbers.Real) or not math.isfinite(float(part)):
            return ["invalid_output", None, {}, f"get_reward() returned {str(value)[:100]!r}: not a finite number "
                                                "or a dict of names to finite numbers"]
        components[key] = float(part)
    return ["ok", sum(components.values()), components, ""]


class Sessions:
    """The sessions a worker holds: one environment instance each, called as the server asks."""

    def __init__(self, environments: dict[str, EnvironmentType], path: str):
        self.environments, self.path = environments, path
        self.open: dict[str, tuple[EnvironmentType, Any]] = {}
        self.loop = asyncio.new_event_loop()  # one loop for the worker's life: async resources outlive a call

    def _run(self, value: Any) -> Any:
        return self.loop.run_until_complete(value) if inspect.isawaitable(value) else value

    def _done(self, instance: Any) -> bool:
        return getattr(instance, "done", False) is True

    def start(self, session_id: str, environment: str, columns: dict[str, Any]) -> list:
        env = self.environments[environment]
        instance = env.idle.pop() if env.idle else None
        try:
            instance = instance if instance is not None else env.factory()
            observation = self._run(instance.reset(**columns))
        except BaseException as err:  # noqa: BLE001 - user code; the instance is not reused
            return ["error", None, True, f"reset() raised {located(err, self.path)}"]
        if observation is not None and not isinstance(observation, str):
            return ["invalid_output", None, True, f"reset() returned {type(observation).__name__}, not str or None"]
        self.open[session_id] = (env, instance)
        return ["ok", observation, False, ""]

    def tool(self, session_id: str, name: str, arguments: dict[str, Any]) -> list:
        env, instance = self.open[session_id]
        try:
            result = self._run(getattr(instance, name)(**arguments))
            text = result if isinstance(result, str) else str(result)
        except BaseException as err:  # noqa: BLE001 - user code: the model sees the error, as in TRL
            return ["error", str({"error": str(err)}), self._done(instance),
                    f"tool {name} raised {located(err, self.path)}"]
        return ["ok", text, self._done(instance), ""]

    def message(self, session_id: str, text: str) -> list:
        env, instance = self.open[session_id]
        if not callable(getattr(instance, "on_message", None)):
            return ["ok", "", True, ""]
        try:
            reply = self._run(instance.on_message(text))
        except BaseException as err:  # noqa: BLE001 - user code
            return ["error", "", True, f"on_message() raised {located(err, self.path)}"]
        if reply is not None and not isinstance(reply, str):
            return ["invalid_output", "", True, f"on_message() returned {type(reply).__name__}, not str or None"]
        return ["ok", reply or "", reply is None or self._done(instance), ""]

    def finish(self, session_id: str) -> list:
        env, instance = self.open[session_id]
        if not callable(getattr(instance, "get_reward", None)):
            return ["ok", None, {}, ""]
        try:
            value = self._run(instance.get_reward())
        except BaseException as err:  # noqa: BLE001 - user code
            return ["error", None, {}, f"get_reward() raised {located(err, self.path)}"]
        return _reward(value, env.name)

    def close(self, session_id: str) -> list:
        """Frees the session; its instance waits for the next session of its environment (reset makes it new)."""
        env, instance = self.open.pop(session_id)
        env.idle.append(instance)
        return ["ok", None, False, ""]
