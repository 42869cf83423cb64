"""Means over multi-turn trajectories (rlfleet.rollouts.trajectory_summary), by hand."""

from __future__ import annotations

import pytest

from rlfleet.rollouts import TrajectoryStats, trajectory_summary


def test_summary_by_hand():
    trajectories = [TrajectoryStats(turns=2, tool_calls=1, tool_errors=0, environment_seconds=0.5),
                    TrajectoryStats(turns=4, tool_calls=3, tool_errors=2, environment_seconds=1.5, truncation="turns"),
                    TrajectoryStats(turns=1, tool_calls=0, tool_errors=0, environment_seconds=0.1)]
    summary = trajectory_summary(trajectories)
    assert summary == pytest.approx({
        "turns_mean": 7 / 3,                   # (2 + 4 + 1) / 3
        "tool_calls_mean": 4 / 3,              # (1 + 3 + 0) / 3
        "tool_call_rate": 2 / 3,               # two of three called a tool
        "tool_error_rate": 2 / 4,              # 2 failed calls of 4
        "truncated_rate": 1 / 3,
        "environment_seconds_mean": 2.1 / 3})


def test_no_trajectories_and_no_calls():
    assert trajectory_summary([]) == {}
    assert trajectory_summary([TrajectoryStats(1, 0, 0, 0.0)])["tool_error_rate"] == 0.0  # no calls: no errors
