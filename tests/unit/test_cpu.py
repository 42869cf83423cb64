"""rlfleet.cpu: CPU-seconds read from /proc and charged to phases, checked against CPU burnt on purpose."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from prometheus_client import REGISTRY

from rlfleet import cpu

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads /proc (Linux)")

# /proc counts in clock ticks (10 ms at USER_HZ 100); two readings each round down by up to a tick.
SLACK = 0.05


def burn(seconds: float) -> None:
    """Spends `seconds` of this thread's CPU."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def charged(service: str, phase: str) -> float:
    return REGISTRY.get_sample_value("rlfleet_cpu_seconds_total", {"service": service, "phase": phase}) or 0.0


def test_tree_counts_a_live_child_and_then_its_reaped_time():
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.process_time() + 0.4\n"
                              "while time.process_time() < end: pass\ninput()"], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while cpu.process_seconds(child.pid) < 0.4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert child.pid in cpu.tree_pids(os.getpid())
        own = cpu.process_seconds(os.getpid())
        # Only this process and that child: the suite may have other live children (servers' workers).
        alive = cpu.tree_seconds(pids=[os.getpid(), child.pid])
        # the child's 0.4 s (plus its interpreter start) is in the tree while it lives ...
        assert alive - own >= 0.4 - SLACK
    finally:
        child.communicate(b"\n", timeout=30)
    # ... and, once waited for, in this process's cutime: the tree total does not drop
    assert cpu.process_seconds(os.getpid()) >= alive - SLACK
    assert child.pid not in cpu.tree_pids(os.getpid())


def test_phases_explicit_then_rpc_then_idle():
    account = cpu.CpuAccount("test-phases", interval=3600)  # no ticks: only the charges below
    account.ready()
    account.push("forward_backward")
    burn(0.3)
    account.switch("optimizer")
    burn(0.2)
    account.pop()
    account.rpc_started("Generate")
    account.rpc_started("Check")          # a health probe does not change the phase
    burn(0.2)
    account.rpc_ended("Check")
    account.rpc_ended("Generate")
    burn(0.1)
    account.charge()
    # 0.3 s forward_backward, 0.2 s optimizer, 0.2 s in the Generate RPC, 0.1 s with nothing running
    assert charged("test-phases", "forward_backward") == pytest.approx(0.3, abs=SLACK)
    assert charged("test-phases", "optimizer") == pytest.approx(0.2, abs=SLACK)
    assert charged("test-phases", "generate") == pytest.approx(0.2, abs=SLACK)
    assert charged("test-phases", "idle") == pytest.approx(0.1, abs=SLACK)
    assert charged("test-phases", "check") == 0.0


def test_an_own_thread_is_charged_apart_from_the_phase_it_overlaps():
    account = cpu.CpuAccount("test-own", interval=3600)
    account.own_thread("pipeline")        # this (the test's) thread, like the learner's event loop
    account.push("forward_backward")
    worker = threading.Thread(target=burn, args=(0.3,))
    worker.start()
    burn(0.2)
    worker.join()
    account.pop()
    # the worker's 0.3 s to the phase, this thread's 0.2 s to its own; start-up phase untouched
    assert charged("test-own", "forward_backward") == pytest.approx(0.3, abs=SLACK)
    assert charged("test-own", "pipeline") == pytest.approx(0.2, abs=SLACK)
