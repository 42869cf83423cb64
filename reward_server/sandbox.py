"""Runs untrusted code (a model's program and its tests) in a throw-away subprocess.

What is enforced, and where:
- always (Linux/macOS): a fresh temporary working directory, deleted afterwards; a new session
  (`start_new_session`), and on timeout SIGKILL to the whole process group, so grandchildren die
  too; output goes to files, not pipes, so a grandchild holding them cannot hang the caller
  (cpython #76116); rlimits on CPU time, address space, open files and file size; `python -I`
  (no user site, no PYTHON* variables); an empty environment apart from PATH.
- Linux with `unshare -n` (root) or `unshare -rn` (unprivileged user namespaces): no network
  at all (a new network namespace holding only a down loopback). Elsewhere network access is NOT
  blocked; `network_isolation()` says which applies and the server logs it at start.
- Linux: the child gets SIGKILL if its parent (the reward worker) dies (PR_SET_PDEATHSIG).
- Not enforced: a process that calls setsid() escapes the group kill (it still dies of its CPU
  rlimit); a PID namespace or a cgroup would catch it.
"""

from __future__ import annotations

import ctypes
import functools
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class SandboxLimits:
    """Resource limits of one sandboxed run."""

    timeout_seconds: float = 5.0
    address_space_bytes: int = 1024**3
    open_files: int = 64
    file_size_bytes: int = 16 * 1024**2


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed run ended, with the head of its output."""

    exit_code: int | None
    """None when killed on timeout; negative = killed by that signal."""
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float


@functools.cache
def network_isolation() -> tuple[str, ...]:
    """The command prefix that removes network access here: ("unshare", "-n"), ("unshare", "-rn") or ()."""
    for prefix in (("unshare", "-n"), ("unshare", "-rn")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def _limit_child(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec: rlimits, and die with the parent."""
    cpu = int(limits.timeout_seconds) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (limits.address_space_bytes, limits.address_space_bytes))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def kill_group(pgid: int) -> None:
    """SIGKILL every process of a group, repeating while members remain (a forking one may add some)."""
    for _ in range(20):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.005)


def run_python(source: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Runs `python -I -c source` in a new session and temp dir, without network where possible."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rlfleet-sandbox-") as tmp:
        out, err, inp = (Path(tmp) / name for name in ("stdout", "stderr", "stdin"))
        inp.write_text(stdin)
        work = Path(tmp) / "work"
        work.mkdir()
        with open(out, "wb") as fout, open(err, "wb") as ferr, open(inp, "rb") as fin:
            proc = subprocess.Popen(
                [*network_isolation(), sys.executable, "-I", "-c", source], cwd=work, stdin=fin, stdout=fout,
                stderr=ferr, start_new_session=True, env={"PATH": "/usr/bin:/bin"},
                preexec_fn=functools.partial(_limit_child, limits))
            try:
                code: int | None = proc.wait(timeout=limits.timeout_seconds)
            except subprocess.TimeoutExpired:
                code = None
            kill_group(proc.pid)  # also reaps grandchildren left behind by a finished program
            proc.wait()
        return SandboxResult(code, out.read_text(errors="replace")[:10_000], err.read_text(errors="replace")[:10_000],
                             code is None, time.monotonic() - start)
