"""Configuration of `rlfleet env-server` (TOML table [env], RLFLEET_* variables, flags)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from rlfleet.config import ServiceConfig
from rlfleet.workers.limits import LimitsConfig


class EnvConfig(ServiceConfig):
    """Serves the environments of a Python script (TRL's environment_factory form) as sessions over gRPC."""

    section = "env"

    script: Path | None = None
    """Python file defining `environment_factory` (a callable or a dict of them, as TRL takes it) or environment
    classes (each class with a reset() method)."""
    environment: list[str] = []
    """Names of the script's environments to serve; empty = every one."""
    workers: int = Field(2, ge=1, le=256)
    """Worker processes running environment code; each session stays on one."""
    call_timeout_seconds: float = Field(30.0, gt=0)
    """Deadline of one call of environment code (making and reset, one tool, on_message, get_reward); past it the
    worker is killed and replaced, the session ends as TIMEOUT and the worker's other sessions are lost."""
    max_sessions: int = Field(1024, ge=1)
    """Sessions open at once; past it StartSession answers RESOURCE_EXHAUSTED (clients back off and retry)."""
    session_idle_seconds: float = Field(600.0, gt=0)
    """A session with no call for this long is closed by the service (a client that died never calls Close)."""
    max_observation_chars: int = Field(65536, ge=16)
    """Longest observation (reset's text, a tool's result, on_message's reply); a longer one is INVALID_OUTPUT."""
    limits: LimitsConfig = LimitsConfig()
    """Resource limits of each worker process (limits.cpu_seconds_per_item: CPU budget of one call)."""
    check: Path | None = None
    """Dry run: load this script, list its environments and tools, play the rows of --sample (if given), exit."""
    sample: Path | None = None
    """JSONL rows for --check: dataset columns, plus an optional `actions` list of tool calls ({"name", "arguments"})
    and messages (strings) to play after reset."""
    check_rows: int = Field(5, ge=1)
    """Rows of --sample played by --check."""

    @model_validator(mode="after")
    def _something_to_serve(self) -> EnvConfig:
        if self.check is None and self.script is None:
            raise ValueError("give --script FILE.py (or --check FILE.py for a dry run)")
        if len(set(self.environment)) != len(self.environment):
            raise ValueError(f"an environment is named twice: {self.environment}")
        return self
