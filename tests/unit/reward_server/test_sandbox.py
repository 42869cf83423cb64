"""The code sandbox and code_tests against hostile programs: reward hacks, writes outside the temp dir, escapes."""

from __future__ import annotations

import ast
import tempfile
import time
from pathlib import Path

import pytest

from reward_server.builtins.code_tests import code_tests
from reward_server.sandbox import SandboxLimits, isolation, run_python

TESTS = ["assert add(1, 2) == 3", "assert add(2, 5) == 7"]


def _program(code: str) -> str:
    return f"```python\n{code}\n```"


def test_honest_solution_scores_one_and_a_wrong_one_by_fraction():
    assert code_tests("q", _program("def add(a, b):\n    return a + b"), tests=TESTS) == 1.0
    assert code_tests("q", _program("def add(a, b):\n    return a + b + (a > 1)"), tests=TESTS) == 0.5


# The two hacks that scored 1.0 against the single-process harness, and two classics.
NONCE_FROM_MAIN = """
import __main__, os
job = vars(__main__).get("job", {})
nonce = getattr(__main__, "nonce", "") or job.get("nonce", "")
os.write(1, f"\\n{nonce} 2\\n".encode())
os._exit(0)
"""
PATCHED_EXEC = """
import builtins
_real = builtins.exec
def exec(source, *args, **kwargs):
    try:
        return _real(source, *args, **kwargs)
    except BaseException:
        return None
builtins.exec = exec
def add(a, b):
    return 0
"""
ALWAYS_EQUAL = """
class Anything:
    def __eq__(self, other):
        return True
def add(a, b):
    return Anything()
"""
SHADOWED_BUILTINS = """
import math
def add(a, b):
    return 0
def abs(x):
    return 0
class math:
    isclose = staticmethod(lambda *a, **k: True)
"""


@pytest.mark.parametrize("hack", [NONCE_FROM_MAIN, PATCHED_EXEC, ALWAYS_EQUAL, SHADOWED_BUILTINS, "exit(0)",
                                  "raise SystemExit", "import os\nos._exit(0)"])
def test_reward_hacks_score_zero(hack):
    tests = TESTS + ["assert abs(add(2, 2) - 4) < 1e-9", "assert math.isclose(add(2, 2), 4)"]
    assert code_tests("q", _program(hack), tests=tests) == 0.0


def test_values_cross_as_plain_data_and_objects_stay_in_the_solution():
    program = _program("""
import math
def parts(x):
    return {"a": (1, 2), 3: {4}}, b"x", None, 1.5, [x]
class Counter:
    def __init__(self, start):
        self.value = start
    def add(self, k):
        self.value += k
        return self.value
def fail(x):
    raise ValueError(f"bad {x}")
def squares(n):
    return (i * i for i in range(n))
""")
    tests = ["assert parts(7) == ({'a': (1, 2), 3: {4}}, b'x', None, 1.5, [7])",
             "c = Counter(2)\nassert c.add(3) == 5 and c.value == 5",
             "try:\n    fail(1)\n    assert False\nexcept ValueError as err:\n    assert 'bad 1' in str(err)",
             "assert list(squares(4)) == [0, 1, 4, 9]",
             "assert math.sqrt(16) == 4",  # `math` from the solution's import is the real module
             "assert Counter(1) == Counter(1)"]  # two objects in the solution are never equal here
    assert code_tests("q", program, tests=tests) == pytest.approx(5 / 6)


def test_a_hung_program_scores_zero_and_tests_after_a_hang_fail():
    assert code_tests("q", "while True: pass", tests=["assert True"], timeout=1) == 0.0
    program = _program("def add(a, b):\n    while b == 99:\n        pass\n    return a + b")
    assert code_tests("q", program, tests=TESTS + ["assert add(0, 99) == 99"], timeout=2) == pytest.approx(2 / 3)


needs_bwrap = pytest.mark.skipif(isolation() != "bwrap", reason="filesystem isolation needs bubblewrap")


@needs_bwrap
def test_model_code_cannot_write_outside_its_temp_dir():
    outside = Path(tempfile.mkdtemp(prefix="rlfleet-outside-"))
    outside.chmod(0o777)  # writable by anyone on the host: only the sandbox can stop the write
    repo_file = Path(__file__).resolve()
    before = repo_file.read_bytes()
    program = f"""
import os
written = []
for path in ({str(outside / 'x')!r}, {str(repo_file)!r}, "/etc/rlfleet-x", "/usr/rlfleet-x"):
    try:
        with open(path, "a") as f:
            f.write("pwned")
        written.append(path)
    except OSError:
        pass
open("mine", "w").write("ok")
print((written, os.listdir("/tmp"), os.listdir("/run") if os.path.isdir("/run") else []))
"""
    try:
        result = run_python(program)
        assert result.exit_code == 0, result.stderr
        written, tmp_entries, run_entries = ast.literal_eval(result.stdout)
        assert written == []
        assert list(outside.iterdir()) == [] and repo_file.read_bytes() == before
        assert len(tmp_entries) == 1 and run_entries == []  # only its own folder in /tmp; /run is empty
    finally:
        outside.rmdir()


@needs_bwrap
def test_a_setsid_grandchild_does_not_outlive_the_sandbox():
    marker = f"{time.time() % 1000:.6f}"
    program = f"""
import os
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", {marker!r}])
    os._exit(0)
"""
    result = run_python(program, limits=SandboxLimits(timeout_seconds=2))
    assert result.exit_code == 0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and _alive(marker):
        time.sleep(0.05)
    assert not _alive(marker)


def _alive(marker: str) -> bool:
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                return (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            continue
    return False
