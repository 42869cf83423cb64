"""Prometheus metrics of the environment server (shared registry; served by rlfleet.metrics' /metrics endpoint).

Labels come from the script (environment and tool names) or fixed sets (statuses, call kinds); a
tool name the model made up is counted as tool="(unknown)", never as itself.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from rlfleet.metrics import LATENCY_BUCKETS

UNKNOWN_TOOL = "(unknown)"

SESSIONS_STARTED = Counter(
    "rlfleet_env_sessions_started_total", "StartSession calls that ran reset(), by environment and status.",
    ["environment", "status"])
SESSIONS_FINISHED = Counter(
    "rlfleet_env_sessions_finished_total", "Finish calls that scored a session, by environment and reward status.",
    ["environment", "status"])
SESSIONS_OPEN = Gauge(
    "rlfleet_env_sessions_open", "Sessions started and not closed yet (idle ones are closed after session_idle_seconds).")
SESSIONS_EXPIRED = Counter(
    "rlfleet_env_sessions_expired_total", "Sessions closed by the service after session_idle_seconds untouched.")
STEPS = Counter(
    "rlfleet_env_steps_total", "Steps taken, by environment, kind (tool or message) and status.",
    ["environment", "kind", "status"])
TOOL_CALLS = Counter(
    "rlfleet_env_tool_calls_total", "Tool calls, by environment, tool and status.", ["environment", "tool", "status"])
TOOL_ERRORS = Counter(
    "rlfleet_env_tool_errors_total", "Tool calls whose status is not OK (the model's mistakes included), by environment "
    "and status.", ["environment", "status"])
CALL_LATENCY = Histogram(
    "rlfleet_env_call_duration_seconds", "Wall time of one call of environment code (queueing on its worker "
    "included), by environment and call: reset, tool, message, reward.", ["environment", "call"],
    buckets=(0.0005, *LATENCY_BUCKETS))
WORKER_RESTARTS = Counter(
    "rlfleet_env_worker_restarts_total", "Environment worker processes killed and replaced, by reason.", ["reason"])
SESSIONS_LOST = Counter(
    "rlfleet_env_sessions_lost_total", "Sessions lost because another session's failure replaced their worker.")
