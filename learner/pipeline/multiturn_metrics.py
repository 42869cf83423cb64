"""Prometheus metrics of multi-turn rollouts: turns and tool calls per trajectory, tool errors, environment latency."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from rlfleet.metrics import LATENCY_BUCKETS
from rlfleet.rollouts import TrajectoryStats

_COUNT_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

TRAJECTORIES = Counter(
    "rlfleet_pipeline_trajectories_total",
    "Multi-turn trajectories rolled out, by how they ended: done, or truncated by a limit "
    "(turns, tokens, turn_tokens, wall_time) or an aborted turn.", ["end"])
TURNS = Histogram("rlfleet_pipeline_trajectory_turns", "Model turns per trajectory.", buckets=_COUNT_BUCKETS)
TOOL_CALLS_PER_TRAJECTORY = Histogram(
    "rlfleet_pipeline_trajectory_tool_calls", "Tool calls the model wrote per trajectory.", buckets=_COUNT_BUCKETS)
TOOL_CALLS = Counter(
    "rlfleet_pipeline_tool_calls_total",
    "Tool calls by outcome: the environment's status (ok, unknown_tool, bad_arguments, error, timeout, "
    "invalid_output), or parse_error for a call the parser could not read.", ["status"])
ENVIRONMENT_LATENCY = Histogram(
    "rlfleet_pipeline_environment_seconds", "Wall time of one environment call (start, step, finish).", ["call"],
    buckets=LATENCY_BUCKETS)


def record_trajectory(stats: TrajectoryStats) -> None:
    TRAJECTORIES.labels(stats.truncation or "done").inc()
    TURNS.observe(stats.turns)
    TOOL_CALLS_PER_TRAJECTORY.observe(stats.tool_calls)
