"""[limits] of a service that runs user code in workers (reward_server, env_server): what each worker may use.

The worker itself gets these as a plain rlfleet.workers.worker_main.WorkerLimits (no pydantic in a worker).
"""

from __future__ import annotations

import fnmatch

from pydantic import Field, field_validator

from rlfleet.config import ConfigModel
from rlfleet.workers.isolation import DEFAULT_PASS_ENV


class LimitsConfig(ConfigModel):
    """What each worker process may use and reach (examples/rewards/README.md says where each is enforced)."""

    address_space_bytes: int | None = Field(4 * 1024**3, ge=64 * 1024**2)
    """RLIMIT_AS (hard = soft): virtual memory per worker; a memory bomb gets MemoryError. Unset = inherited."""
    open_files: int | None = Field(256, ge=16)
    """RLIMIT_NOFILE (hard = soft): open file descriptors per worker."""
    processes: int | None = Field(256, ge=1)
    """RLIMIT_NPROC (hard = soft): processes and threads of the workers' user, counted over the whole machine; not
    enforced for root (as root, workers drop to run_as_user by default, where it is)."""
    cpu_seconds_per_item: float | None = Field(60.0, gt=0)
    """CPU budget per item of a worker and everything it started (a call on n items gets n times it), measured by
    the server; past it the worker is killed and replaced and the item is ERROR."""
    cpu_seconds_per_worker: float | None = Field(3600.0, gt=0)
    """RLIMIT_CPU (hard = soft) over a worker's life; a worker past 90 % of it is replaced between calls."""
    allow_network: bool = False
    """Let reward code open network connections (an LLM judge, a remote verifier). Off: each worker runs in its own
    network namespace with only a down loopback, where this machine allows one (the start-up log says)."""
    pass_env: list[str] = list(DEFAULT_PASS_ENV)
    """Names (or fnmatch patterns) of the service's environment variables that workers receive; nothing else is
    passed, and RLFLEET_* (the service's own settings, its token among them) never is. Add e.g. OPENAI_API_KEY for a
    judge that needs it."""
    run_as_user: str = "nobody"
    """When the service runs as root: the user (name or uid) workers switch to before any reward code runs, so that
    they cannot read the service's /proc/PID/environ, memory or root-only files. "root" keeps root: no isolation
    from the service. Ignored when the service is not root."""

    @field_validator("pass_env")
    @classmethod
    def _no_own_secrets(cls, value: list[str]) -> list[str]:
        for pattern in value:
            if fnmatch.fnmatchcase("RLFLEET_SERVER__AUTH_TOKEN", pattern):
                raise ValueError(f"{pattern!r} would pass the service's own settings (RLFLEET_*, its token among "
                                 "them) to reward code; name the variables reward code needs")
        return value
