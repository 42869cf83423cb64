"""`rlfleet env-server --check SCRIPT [--sample rows.jsonl]`: load a script, list its environments and tools, play rows.

Each sample row is a dataset row (its columns go to reset()) with an optional `actions` list: tool
calls as {"name": ..., "arguments": {...}} and model messages as strings, played in order until one
ends the session; then Finish prints the reward. Exit status 0 when every call was OK, 1 when one
was not, 2 for a script or sample file that cannot be used.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from env_server.config import EnvConfig
from env_server.core import EnvironmentCore
from rlfleet.environments import EnvStatus, ToolCall
from rlfleet.errors import RlfleetError
from rlfleet.outcomes import RewardStatus
from rlfleet.workers.scripts import ScriptError


def _action(value: Any, where: str) -> ToolCall | str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        arguments = value.get("arguments", {})
        return ToolCall(value["name"], arguments if isinstance(arguments, str) else json.dumps(arguments))
    raise ScriptError(f"{where}: an action is a tool call {{\"name\", \"arguments\"}} or a message string")


def read_rows(path, limit: int) -> list[tuple[dict[str, Any], list[ToolCall | str]]]:
    """The first `limit` JSONL rows as (columns, actions)."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if len(rows) == limit:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ScriptError(f"{path}:{number}: a row is a JSON object of columns")
            actions = row.pop("actions", [])
            if not isinstance(actions, list):
                raise ScriptError(f"{path}:{number}: `actions` is a list")
            rows.append((row, [_action(a, f"{path}:{number}") for a in actions]))
    return rows


def _describe(core: EnvironmentCore) -> None:
    catalog = core.catalog()
    print(f"script_version {catalog.script_version}")
    for env in catalog.environments:
        print(f"environment {env.name}{' (get_reward)' if env.has_reward else ''}: {env.description}".rstrip(": "))
        for tool in env.tools:
            print(f"  tool {tool.name}({', '.join(tool.parameters.get('properties', {}))}): {tool.description}")


async def _play(core: EnvironmentCore, index: int, columns: dict[str, Any], actions: list[ToolCall | str]) -> bool:
    session_id = f"check-{index}"
    start = await core.start(session_id, "", columns)
    print(f"row {index}: {start.environment} reset {start.status.name} {start.observation!r} {start.error}".rstrip())
    ok = start.ok
    for step, action in enumerate(actions if ok else []):
        result = await core.step(session_id, step, action)
        label = f"{action.name}({action.arguments_json})" if isinstance(action, ToolCall) else f"message {action!r}"
        print(f"  step {step}: {label} -> {result.status.name}{' done' if result.done else ''} "
              f"{result.observation[:200]!r} {result.error}".rstrip())
        ok = ok and result.status is EnvStatus.OK
        if result.done:
            break
    score = await core.finish(session_id)
    if score is None:
        print("  reward: none (no get_reward, or it returned None)")
    else:
        parts = " ".join(f"{k}={v:g}" for k, v in score.components.items())
        print(f"  reward: {score.status.name} {score.reward:g} {parts} {score.error}".rstrip())
        ok = ok and score.status is RewardStatus.OK
    await core.close_session(session_id)
    return ok


async def _check(core: EnvironmentCore, rows) -> bool:
    _describe(core)
    ok = True
    for index, (columns, actions) in enumerate(rows):
        try:
            ok = await _play(core, index, columns, actions) and ok
        except RlfleetError as err:  # a row the service would refuse, e.g. an unknown environment
            print(f"row {index}: refused: {err}")
            ok = False
    return ok


def run_check(config: EnvConfig) -> int:
    config = config.model_copy(update={"script": config.check, "workers": 1})
    try:
        rows = read_rows(config.sample, config.check_rows) if config.sample else []
        core = EnvironmentCore(config)
        core.start_workers()
    except (ScriptError, OSError, json.JSONDecodeError) as err:
        print(f"rlfleet env-server --check: error: {err}", file=sys.stderr)
        return 2
    try:
        return 0 if asyncio.run(_check(core, rows)) else 1
    finally:
        core.close()
