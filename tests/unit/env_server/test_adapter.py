"""TRL's environment_factory convention as the worker runs it: discovery, tools, calls, rewards (in-process, no worker)."""

from __future__ import annotations

import pytest

from env_server.adapter import Sessions, load_environments
from rlfleet.workers.scripts import ScriptError, ScriptSource

SCRIPT = '''
import asyncio
from collections import OrderedDict  # imported, not defined here: not an environment

MADE = [0]


class Helper:  # no reset: not an environment
    pass


class Board:
    """A board game."""

    def __init__(self):
        MADE[0] += 1
        self.moves = []

    def reset(self, size=3, **row):
        self.moves, self.done = [], False
        return None if size == 0 else size if size == 1 else f"board {size}"

    def move(self, cell: int) -> str:
        """Plays a cell.

        Args:
            cell: Which one.
        """
        if cell < 0:
            raise ValueError("no such cell")
        self.moves.append(cell)
        self.done = len(self.moves) == 2
        return self.moves

    async def look(self) -> str:
        """Shows the board."""
        await asyncio.sleep(0)
        return f"moves {self.moves}"

    def _private(self):
        return 1

    def get_reward(self):
        return {"moves": len(self.moves), "win": 1.0} if self.moves != [9] else "nine"
'''


def _load(tmp_path, text: str):
    path = tmp_path / "envs.py"
    path.write_text(text)
    return load_environments(ScriptSource.read(path)), str(path.resolve())


def test_classes_with_reset_are_environments_and_public_functions_are_tools(tmp_path):
    envs, _ = _load(tmp_path, SCRIPT)
    assert list(envs) == ["Board"]
    board = envs["Board"]
    assert list(board.tools) == ["look", "move"]  # not reset, get_reward, _private; sorted as getmembers does
    assert board.describe()["has_reward"] and not board.describe()["has_message"]
    assert board.describe()["description"] == "A board game."


def test_a_session_plays_tools_as_trl_calls_them(tmp_path):
    envs, path = _load(tmp_path, SCRIPT)
    sessions = Sessions(envs, path)
    assert sessions.start("a", "Board", {"size": 4, "prompt": "p"}) == ["ok", "board 4", False, ""]
    assert sessions.tool("a", "move", {"cell": 1}) == ["ok", "[1]", False, ""]  # str(result), as TRL
    raised = sessions.tool("a", "move", {"cell": -1})
    line = SCRIPT.splitlines().index('            raise ValueError("no such cell")') + 1
    assert raised == ["error", "{'error': 'no such cell'}", False,
                      f"tool move raised ValueError: no such cell ({path}:{line})"]
    assert sessions.tool("a", "look", {}) == ["ok", "moves [1]", False, ""]  # a coroutine, awaited
    assert sessions.tool("a", "move", {"cell": 5}) == ["ok", "[1, 5]", True, ""]  # self.done = True ends it
    assert sessions.message("a", "hi") == ["ok", "", True, ""]  # no on_message: a message ends the session
    assert sessions.finish("a") == ["ok", 3.0, {"moves": 2.0, "win": 1.0}, ""]  # 2 + 1


def test_instances_are_made_once_and_reset_often(tmp_path):
    envs, path = _load(tmp_path, SCRIPT)
    sessions = Sessions(envs, path)
    made = envs["Board"].cls.__init__.__globals__["MADE"]
    assert made == [1]  # the probe made at load time
    sessions.start("a", "Board", {})
    sessions.close("a")
    sessions.start("b", "Board", {})  # reuses the probe, as TRL's pool does
    sessions.start("c", "Board", {})  # a second one at once needs a new instance
    assert made == [2]


def test_bad_returns_are_invalid_output(tmp_path):
    envs, path = _load(tmp_path, SCRIPT)
    sessions = Sessions(envs, path)
    assert sessions.start("a", "Board", {"size": 1}) == ["invalid_output", None, True,
                                                          "reset() returned int, not str or None"]
    assert sessions.start("b", "Board", {"size": 0}) == ["ok", None, False, ""]
    sessions.tool("b", "move", {"cell": 9})
    status, reward, components, error = sessions.finish("b")
    assert (status, reward, components) == ("invalid_output", None, {}) and "'nine'" in error


@pytest.mark.parametrize(("text", "message"), [
    ("X = 1\n", "defines no environment"),
    ("environment_factory = 3\n", "environment_factory must be a callable or a dict of callables, not int"),
    ("environment_factory = {'a b': dict}\n", "environment name 'a b' is not"),
    ("environment_factory = {'plain': dict}\n", r"environment plain: dict defines no reset\(\) method"),
    ("def make():\n    raise OSError('no data')\n\nenvironment_factory = make\n", "raised OSError: no data"),
])
def test_scripts_that_cannot_serve_say_why(tmp_path, text, message):
    with pytest.raises(ScriptError, match=message):
        _load(tmp_path, text)


def test_a_single_factory_is_named_after_its_class(tmp_path):
    envs, _ = _load(tmp_path, SCRIPT + "\nenvironment_factory = lambda: Board()\n")
    assert list(envs) == ["Board"]
