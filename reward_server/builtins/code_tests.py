"""Code execution reward: the completion's program run against test asserts in the sandbox."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from reward_server.sandbox import Sandbox, SandboxLimits

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
VERDICT = re.compile(r"^(\d+) (pass|fail)$", re.MULTILINE)
# Executed as text in each sandboxed half; see its docstring for why the halves are separate processes.
HARNESS = Path(__file__).with_name("code_harness.py").read_text()


def extract_code(completion: str) -> str:
    """The last fenced code block, or the whole completion when it has none."""
    blocks = CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def run_tests(code: str, tests: list[str], timeout: float) -> list[bool]:
    """Whether each test passed: the program and the tests in two sandboxes joined by two pipes."""
    to_solution, to_tests = os.pipe(), os.pipe()  # (read, write) each
    limits = SandboxLimits(timeout_seconds=timeout)
    runs = []
    try:
        runs.append(Sandbox(HARNESS, json.dumps({"code": code}), limits, pass_fds=(to_solution[0], to_tests[1]),
                            argv=("solution", str(to_solution[0]), str(to_tests[1]))))
        runs.append(Sandbox(HARNESS, json.dumps({"tests": tests}), limits, pass_fds=(to_tests[0], to_solution[1]),
                            argv=("tests", str(to_tests[0]), str(to_solution[1]))))
    finally:
        for fd in (*to_solution, *to_tests):
            os.close(fd)  # each half holds its ends: EOF reaches one as soon as the other exits
    deadline = runs[0].start + timeout
    results = [run.finish(deadline) for run in reversed(runs)]  # the tests first: the solution waits on them
    passed = [False] * len(tests)
    for index, verdict in VERDICT.findall(results[0].stdout):
        if int(index) < len(tests):
            passed[int(index)] = verdict == "pass"
    return passed


def code_tests(prompt: str, completion: str, tests: list[str] | str | None = None, timeout: float = 5.0,
               **columns) -> float | None:
    """Fraction of `tests` (assert statements, a list or one string) that pass against the completion's program.

    The program is the last ```python block of the completion (or all of it). It runs in one
    sandbox (`reward_server.sandbox`: no network, a private temp dir, read-only elsewhere where
    bubblewrap exists) and the tests in another, which calls the program's functions over a pipe
    and gets plain data back (`code_harness`): the program cannot see or patch the tests, exit
    early to pass, or return an object that equals anything. Both are killed after `timeout`
    seconds; tests not reached by then fail. None without tests.

        >>> code_tests("add", "```python\\ndef add(a, b):\\n    return a + b\\n```", tests=["assert add(1, 2) == 3"])
        1.0
        >>> code_tests("add", "```python\\nexit(0)\\n```", tests=["assert add(1, 2) == 3"])
        0.0
    """
    if tests is None:
        return None
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not tests:
        return None
    return sum(run_tests(extract_code(completion), tests, timeout)) / len(tests)
