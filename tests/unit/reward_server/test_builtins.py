"""Built-in rewards, including the known reward hacks, and the code sandbox."""

from __future__ import annotations

import time

from reward_server.builtins import code_tests, exact_match, math_answer, normalized_match, overlong_penalty
from reward_server.builtins.answer import boxed_contents, final_answer
from reward_server.builtins.format_check import think_answer_format
from reward_server.sandbox import SandboxLimits, network_isolation, run_python


def test_final_answer_prefers_answer_tag_then_last_boxed_then_last_line():
    assert final_answer("x <answer> 7 </answer>") == "7"
    assert final_answer(r"so \boxed{\frac{1}{2}} done") == r"\frac{1}{2}"
    assert boxed_contents(r"\boxed{a{b}c} \boxed{d}") == ["a{b}c", "d"]
    assert final_answer("work\n\n42\n") == "42"
    assert final_answer("   ") == ""


def test_string_match_rejects_empty_and_hedged_answers():
    assert exact_match("q", "<answer>4</answer>", answer="4") == 1.0
    assert exact_match("q", "<answer></answer>", answer="4") == 0.0  # empty answer (a substring check says 1)
    assert exact_match("q", "<answer>3 or 4 or 5</answer>", answer="4") == 0.0
    assert exact_match("q", "4", answer=None) is None
    assert normalized_match("q", "<answer>The  Paris!</answer>", answer="paris") == 1.0
    assert normalized_match("q", "<answer>Paris or Lyon</answer>", answer="paris") == 0.0


def test_format_check_needs_non_empty_blocks_and_a_finished_completion():
    assert think_answer_format("q", "<think>a</think>\n<answer>b</answer>") == 1.0
    assert think_answer_format("q", "<think></think>x") == 0.0
    assert think_answer_format("q", "<think> </think><answer>b</answer>") == 0.0
    assert think_answer_format("q", "<think>a</think><answer>b</answer><answer>c</answer>") == 0.0
    assert think_answer_format("q", "<think>a</think><answer>b</answer>", finish_reason="length") == 0.0


def test_math_answer_equivalence_and_hacks():
    assert math_answer("q", r"so $\boxed{0.5}$", answer=r"\frac{1}{2}") == 1.0
    assert math_answer("q", r"$\boxed{\frac{2}{4}}$", answer="0.5") == 1.0
    assert math_answer("q", r"$\boxed{3}$", answer="4") == 0.0
    assert math_answer("q", r"\boxed{3} \boxed{4}", answer="4") == 0.0  # several boxed answers
    assert math_answer("q", "it is 3 or 4", answer="4") == 0.0  # Math-Verify alone says 1 (it reads the 4)
    assert math_answer("q", "", answer="4") == 0.0
    assert math_answer("q", r"$\boxed{4}$", answer="4", finish_reason="length") == 0.0  # truncated
    assert math_answer("q", r"$\boxed{4}$") is None


def test_overlong_penalty_follows_dapo():
    # L_max 1024, L_cache 256: free up to 768; L = 800 -> (768 - 800) / 256 = -0.125
    assert overlong_penalty("q", "", completion_tokens=800) == -0.125
    assert overlong_penalty("q", "", completion_tokens=768) == 0.0
    assert overlong_penalty("q", "", completion_tokens=1025) == -1.0
    assert overlong_penalty("q", "", completion_tokens=10, finish_reason="length") == -1.0
    assert overlong_penalty("q", "") is None


def test_code_tests_counts_passing_asserts_and_defeats_early_exit():
    program = "```python\ndef add(a, b):\n    return a + b\n```"
    assert code_tests("q", program, tests=["assert add(1, 2) == 3", "assert add(2, 2) == 5"]) == 0.5
    for hack in ("exit(0)", "import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"):
        assert code_tests("q", f"```python\n{hack}\n```", tests=["assert False"]) == 0.0, hack
    assert code_tests("q", "while True: pass", tests=["assert True"], timeout=1) == 0.0
    assert code_tests("q", program) is None


def test_sandbox_kills_grandchildren_and_blocks_network():
    start = time.monotonic()
    # a grandchild in the same group keeps stdout open; the run still ends at the timeout
    result = run_python("import subprocess, time\nsubprocess.Popen(['sleep', '30'])\ntime.sleep(30)",
                        limits=SandboxLimits(timeout_seconds=1))
    assert result.timed_out and time.monotonic() - start < 5
    result = run_python("import os; print(os.getcwd()); open('f', 'w').write('x')")
    assert result.exit_code == 0 and "rlfleet-sandbox-" in result.stdout
    if network_isolation():
        net = run_python("import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)")
        assert net.exit_code == 1 and "unreachable" in net.stderr


def test_docstring_examples_run():
    import doctest
    import importlib
    import importlib.util
    from pathlib import Path

    modules = [importlib.import_module(f"reward_server.builtins.{name}")
               for name in ("exact_match", "format_check", "math_answer", "code_tests", "length")]
    root = Path(__file__).resolve().parents[3] / "examples" / "rewards"
    for path in sorted(root.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        modules.append(module)
    for module in modules:
        result = doctest.testmod(module)
        assert result.attempted >= 1 and result.failed == 0, module.__name__
