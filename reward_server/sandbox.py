"""Runs untrusted code (a model's program, a dataset's tests) in a throw-away subprocess.

What is enforced, and where:
- always (Linux/macOS): a fresh temporary working directory, deleted afterwards; a new session
  (`start_new_session`), and on timeout SIGKILL to the whole process group; output goes to files,
  not pipes, so a grandchild holding them cannot hang the caller (cpython #76116); rlimits with
  hard = soft on CPU time, address space, open files and file size; `python -I` (no user site,
  no PYTHON* variables); an empty environment apart from PATH and HOME.
- Linux with bubblewrap (`bwrap`, Debian's `bubblewrap`): the filesystem is read-only except the
  private working directory; /tmp, /dev and /proc are fresh and private; /home, /root, /run, /srv,
  /mnt, /media, /opt and /var are empty (unless the Python installation lives there, then that one
  stays, read-only); no network; an own PID namespace, so nothing it starts outlives it; no
  capabilities. `isolation()` says what applies and the server logs it at start.
- Linux without bwrap, with `unshare -n` (root) or `unshare -rn` (user namespaces): no network
  only. The filesystem is then NOT isolated beyond file permissions, and a process that calls
  setsid() escapes the group kill (it still dies of its CPU rlimit).
- Linux: the child gets SIGKILL if its parent (the reward worker) dies (PR_SET_PDEATHSIG).
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlfleet.workers.isolation import kill_group, needed_paths

PR_SET_PDEATHSIG = 1
HIDDEN = ("/home", "/root", "/run", "/srv", "/mnt", "/media", "/opt", "/var")
"""Covered by an empty tmpfs in the bubblewrap sandbox: where secrets live (/run/secrets, service-account tokens)."""


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


def _bwrap(work: Path) -> list[str]:
    """bubblewrap's arguments for a program whose only writable directory is `work`."""
    keep = needed_paths(())
    args = ["bwrap", "--die-with-parent", "--new-session", "--unshare-all", "--cap-drop", "ALL",
            "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for hidden in HIDDEN:
        if os.path.isdir(hidden) and not any(k == hidden or k.startswith(hidden + "/") for k in keep):
            args += ["--tmpfs", hidden]
    return args + ["--bind", str(work), str(work), "--chdir", str(work), "--"]


@functools.cache
def network_isolation() -> tuple[str, ...]:
    """Without bwrap: the command prefix that removes network access here, ("unshare", "-n"), ("unshare", "-rn") or ()."""
    for prefix in (("unshare", "-n"), ("unshare", "-rn")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


@functools.cache
def isolation() -> str:
    """"bwrap", "unshare" (network only) or "none": the strongest sandbox that works for this process."""
    with tempfile.TemporaryDirectory(prefix="rlfleet-sandbox-probe-") as tmp:
        try:
            if subprocess.run([*_bwrap(Path(tmp)), "true"], capture_output=True, timeout=10).returncode == 0:
                return "bwrap"
        except (OSError, subprocess.TimeoutExpired):
            pass
    return "unshare" if network_isolation() else "none"


def describe() -> str:
    """One line for the start-up log: what the code sandbox enforces here."""
    return {"bwrap": "bubblewrap: read-only filesystem but a private temp dir, no network, own PID namespace",
            "unshare": f"{' '.join(network_isolation())}: no network; filesystem NOT isolated (install bubblewrap)",
            "none": "NONE: network and filesystem NOT isolated (install bubblewrap)"}[isolation()]


def _limit_child(limits: SandboxLimits) -> None:
    """Runs in the child between fork and exec: rlimits (hard = soft), and die with the parent."""
    cpu = int(limits.timeout_seconds) + 1
    for which, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, limits.address_space_bytes),
                         (resource.RLIMIT_NOFILE, limits.open_files), (resource.RLIMIT_FSIZE, limits.file_size_bytes)):
        resource.setrlimit(which, (value, value))
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Sandbox:
    """One program started in the sandbox; `finish()` waits for it, kills what is left and cleans up.

    `pass_fds` stay open in the program (pipes to another sandboxed program, say); `argv` become its sys.argv[1:].
    """

    def __init__(self, source: str, stdin: str = "", limits: SandboxLimits = SandboxLimits(),
                 pass_fds: Sequence[int] = (), argv: Sequence[str] = ()):
        self.start = time.monotonic()
        self._tmp = tempfile.TemporaryDirectory(prefix="rlfleet-sandbox-")
        root = Path(self._tmp.name)
        (root / "stdin").write_text(stdin)
        work = root / "work"
        work.mkdir()
        prefix = {"bwrap": _bwrap(work), "unshare": list(network_isolation()), "none": []}[isolation()]
        self._out, self._err = open(root / "stdout", "wb+"), open(root / "stderr", "wb+")  # noqa: SIM115
        with open(root / "stdin", "rb") as stdin_file:
            self.process = subprocess.Popen(
                [*prefix, sys.executable, "-I", "-c", source, *argv], cwd=work, stdin=stdin_file, stdout=self._out,
                stderr=self._err, start_new_session=True, env={"PATH": "/usr/bin:/bin", "HOME": str(work)},
                pass_fds=tuple(pass_fds), preexec_fn=functools.partial(_limit_child, limits))

    def finish(self, deadline: float) -> SandboxResult:
        """Waits until `deadline` (time.monotonic), kills the program's group and returns how it ended."""
        try:
            code: int | None = self.process.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            code = None
        kill_group(self.process.pid)  # also reaps grandchildren left behind by a finished program
        self.process.wait()
        outputs = []
        for f in (self._out, self._err):
            f.seek(0)
            outputs.append(f.read(10_000).decode(errors="replace"))
            f.close()
        self._tmp.cleanup()
        return SandboxResult(code, outputs[0], outputs[1], code is None, time.monotonic() - self.start)


def run_python(source: str, stdin: str = "", limits: SandboxLimits = SandboxLimits()) -> SandboxResult:
    """Runs `python -I -c source` in the sandbox and waits at most `limits.timeout_seconds`."""
    run = Sandbox(source, stdin, limits)
    return run.finish(run.start + limits.timeout_seconds)
