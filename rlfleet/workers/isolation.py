"""Fences around workers running user code: clean environment, namespaces, drop to an unprivileged user, tree kills.

Server side: `plan_fence()` picks the command prefix that starts a worker in its own PID, mount and
(by default) network namespaces (`unshare`, util-linux), `clean_environ()` builds the only
environment a worker gets, `make_undumpable()` hides the server's /proc/PID/environ and memory from
processes of its own uid. Worker side: `expose()` and `drop_privileges()` run in a fresh worker
before any user code, `harden()` right after.
"""

from __future__ import annotations

import ctypes
import fnmatch
import functools
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
DEFAULT_PASS_ENV = ("PATH", "LANG", "LC_*", "TZ", "TMPDIR", "PYTHONPATH", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM")
NEVER_PASSED = "RLFLEET_"
"""Prefix of the service's own settings (its bearer token among them): never in a worker's environment."""


@dataclass(frozen=True)
class Fence:
    """How workers start on this machine, and what that enforces (logged at start)."""

    prefix: tuple[str, ...]
    """Command put before `python -m rlfleet.workers.worker_main`; () when no namespace can be made here."""
    uid: int | None = None
    """User the worker switches to before user code runs (set only when the service runs as root)."""
    gid: int | None = None
    network_blocked: bool = False

    def describe(self) -> str:
        parts = ["own PID and mount namespaces" if self.prefix else "NO namespaces (no working unshare here): "
                 "a process that calls setsid() can outlive its worker"]
        parts.append("no network" if self.network_blocked else "network NOT blocked")
        parts.append(f"uid {self.uid}" if self.uid is not None else f"the service's uid {os.geteuid()}")
        return ", ".join(parts)


@functools.cache
def _works(prefix: tuple[str, ...]) -> bool:
    try:
        return subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def plan_fence(allow_network: bool, run_as_user: str) -> Fence:
    """The strongest fence this machine allows; raises ValueError naming the setting for an unknown user."""
    root = os.geteuid() == 0
    uid = gid = None
    if root and run_as_user not in ("root", "0"):
        try:
            entry = pwd.getpwuid(int(run_as_user)) if run_as_user.isdigit() else pwd.getpwnam(run_as_user)
        except KeyError:
            raise ValueError(f"limits.run_as_user: no user {run_as_user!r} on this machine") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    # --kill-child: the worker dies with this wrapper; as PID 1 of its namespace its death kills every
    # process it started, setsid() or double fork notwithstanding.
    flags = ("--pid", "--fork", "--kill-child", "--mount-proc") + (() if allow_network else ("--net",))
    prefix = ("unshare", *flags) if root else ("unshare", "--map-root-user", *flags)
    if _works(prefix):
        return Fence(prefix, uid, gid, not allow_network)
    return Fence((), uid, gid, False)


def clean_environ(patterns: Sequence[str], environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables of `environ` (default: this process's) whose names match a pattern, RLFLEET_* excepted."""
    environ = os.environ if environ is None else environ
    return {name: value for name, value in environ.items()
            if not name.startswith(NEVER_PASSED) and any(fnmatch.fnmatchcase(name, p) for p in patterns)}


def _prctl(option: int, value: int) -> None:
    if sys.platform.startswith("linux"):
        if ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"prctl({option}) failed")


def make_undumpable() -> None:
    """Makes this process's /proc/PID/environ, /proc/PID/mem and ptrace refuse other processes of the same uid."""
    _prctl(PR_SET_DUMPABLE, 0)


def harden() -> None:
    """In a worker, after dropping privileges: no setuid gains, and death with the parent (cleared by setuid)."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def needed_paths(extra: Iterable[str]) -> list[str]:
    """Directories a worker's Python must still read after the drop: its installation, sys.path, loaded packages."""
    candidates = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path, *extra,
                  os.path.dirname(os.path.realpath(sys.executable))}
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if "." not in name and where:
            candidates.add(os.path.dirname(where))
    real = sorted({os.path.realpath(p) for p in candidates if p and os.path.isdir(p)})
    return [p for p in real if not any(p.startswith(q.rstrip("/") + "/") for q in real if q != p)]


def _searchable(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
    return bool(st.st_mode & bit)


def _blocker(path: str, uid: int, gid: int) -> str | None:
    """The outermost directory above `path` that uid/gid may not enter, if any."""
    for parent in reversed(Path(path).parents[:-1]):  # from the top, "/" excluded
        if not _searchable(str(parent), uid, gid):
            return str(parent)
    return None


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s):
        return None if s is None else s.encode()

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount on {target}: {os.strerror(err)}")


def blocked(paths: Iterable[str], uid: int, gid: int) -> list[str]:
    """The `paths` that uid/gid cannot reach because a parent folder is closed to them."""
    return [p for p in paths if _blocker(p, uid, gid) is not None]


def expose(paths: Iterable[str], uid: int, gid: int) -> None:
    """In the worker's own mount namespace (as root): make `paths` readable by uid/gid where a parent blocks them.

    E.g. Python installed under /root (mode 0700): a tmpfs covers /root and only the installation is
    bound back, read-only. Everything else under a blocking directory disappears from the worker's view.
    Never call it outside a private mount namespace: the mounts would cover the host's folders.
    """
    groups: dict[str, list[str]] = {}
    for path in paths:
        blocker = _blocker(path, uid, gid)
        if blocker is not None:
            groups.setdefault(blocker, []).append(path)
    for blocker, inside in groups.items():
        handles = [os.open(p, os.O_PATH) for p in inside]  # still reachable once the tmpfs covers them
        _mount("tmpfs", blocker, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")
        for path, fd in zip(inside, handles, strict=True):
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
            _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            os.close(fd)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc; [] elsewhere or once it is gone)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used by `pid` and everything it started, reaped or alive; None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        own = sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    except (OSError, ValueError, IndexError):
        return None
    return own + sum(tree_cpu_seconds(child) or 0.0 for child in children(pid))


def kill_group(pgid: int) -> None:
    """SIGKILL every process of a group, repeating while members remain (a forking one may add some)."""
    for _ in range(20):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.005)
