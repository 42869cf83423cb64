"""Code execution reward: the completion's program run against test asserts in the sandbox."""

from __future__ import annotations

import json
import re
import secrets

from reward_server.sandbox import SandboxLimits, run_python

CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)

# The harness reads the program and tests from stdin, so the program cannot read the nonce from a
# file; it prints the nonce only after every test ran, so `exit(0)` / `os._exit(0)` before the
# asserts (SandboxFusion's antihack list) yields no nonce and scores 0 instead of passing.
HARNESS = """
import json, os, sys
job = json.loads(sys.stdin.read())
nonce = job.pop("nonce")
scope = {"__name__": "__main__"}
exec(compile(job["code"], "solution.py", "exec"), scope)
passed = 0
for test in job["tests"]:
    try:
        exec(compile(test, "test.py", "exec"), scope)
        passed += 1
    except Exception:
        pass
sys.stdout.flush()
os.write(1, ("\\n" + nonce + " " + str(passed) + "\\n").encode())
"""


def extract_code(completion: str) -> str:
    """The last fenced code block, or the whole completion when it has none."""
    blocks = CODE_BLOCK.findall(completion)
    return blocks[-1] if blocks else completion


def code_tests(prompt: str, completion: str, tests: list[str] | str | None = None, timeout: float = 5.0,
               **columns) -> float | None:
    """Fraction of `tests` (assert statements, a list or one string) that pass after running the program.

    The program is the last ```python block of the completion (or all of it). Runs in
    `reward_server.sandbox` (temp dir, no network where possible, killed with its children after
    `timeout` seconds). A program that exits before the tests finish scores 0. None without tests.

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
    nonce = secrets.token_hex(16)
    job = json.dumps({"code": extract_code(completion), "tests": tests, "nonce": nonce})
    result = run_python(HARNESS, stdin=job, limits=SandboxLimits(timeout_seconds=timeout))
    for line in reversed(result.stdout.splitlines()):
        if line.startswith(nonce + " ") and result.exit_code == 0:
            return int(line.split()[1]) / len(tests)
    return 0.0
