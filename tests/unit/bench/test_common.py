"""Unit tests of the benchmark helpers: step throughput, overlap efficiency, README sections."""

from __future__ import annotations

import json

import pytest

from bench.common import (
    StepRecord,
    cpu_at,
    markdown_table,
    overlap,
    read_learner_steps,
    replace_section,
    throughput,
    tree_cpu_seconds,
)


def _records() -> list[StepRecord]:
    # Steps end at t = 10, 20, 23, 27, 29; step 0 is the warm-up.
    ends = [10.0, 20.0, 23.0, 27.0, 29.0]
    rewards = [0.1, 0.2, 0.3, 0.4, 0.6]
    return [StepRecord(end, 2.0, 0.5, 64, 640.0 + i, r) for i, (end, r) in enumerate(zip(ends, rewards, strict=True))]


def test_throughput_uses_gaps_between_step_ends_after_warmup():
    t = throughput(_records(), warmup=1, reward_steps=2)
    # measured steps: 2, 3, 4 with gaps 23-20 = 3, 27-23 = 4, 29-27 = 2 -> median 3, wall 9
    assert t.steps == 3
    assert t.median_step_seconds == pytest.approx(3.0)
    # tokens of steps 2..4: 642 + 643 + 644 = 1929 over 9 s
    assert t.tokens_per_second == pytest.approx(1929 / 9)
    assert t.samples_per_second == pytest.approx(3 * 64 / 9)
    # reward of the last two steps: (0.4 + 0.6) / 2; samples of all five steps: 5 * 64
    assert t.reward_mean == pytest.approx(0.5)
    assert t.samples_seen == 320


def test_throughput_refuses_too_few_steps():
    with pytest.raises(ValueError, match="warmup \\+ 2"):
        throughput(_records()[:2], warmup=1, reward_steps=1)


def test_overlap_eta_is_the_busier_side_over_wall():
    o = overlap(_records(), generator_busy_seconds=12.0)
    # wall: first start 10 - 2 = 8 to last end 29 -> 21 s; learner busy: 5 x (2 - 0.5) = 7.5 s
    assert o.wall_seconds == pytest.approx(21.0)
    assert o.learner_busy_seconds == pytest.approx(7.5)
    assert o.eta == pytest.approx(12.0 / 21.0)
    # when the learner is the busier side it sets eta
    assert overlap(_records(), generator_busy_seconds=1.0).eta == pytest.approx(7.5 / 21.0)


def test_read_learner_steps(tmp_path):
    lines = [{"step": 1, "time": 5.0, "step_seconds": 4.0, "wait_seconds": 1.0, "samples": 8.0,
              "response_length_mean": 2.5, "reward_mean": 0.25}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    # completion tokens = mean length x samples = 2.5 x 8 = 20
    assert read_learner_steps(tmp_path) == [StepRecord(5.0, 4.0, 1.0, 8, 20.0, 0.25)]


def test_replace_section_replaces_between_markers_and_appends_when_missing():
    text = "# t\n\n<!-- bench:a -->\nold\n<!-- /bench:a -->\n\ntail\n"
    replaced = replace_section(text, "a", "new")
    assert replaced == "# t\n\n<!-- bench:a -->\nnew\n<!-- /bench:a -->\n\ntail\n"
    appended = replace_section(replaced, "b", "more\n")
    assert appended.endswith("tail\n\n<!-- bench:b -->\nmore\n<!-- /bench:b -->\n")
    assert replace_section(appended, "b", "again").count("<!-- bench:b -->") == 1


def test_markdown_table():
    assert markdown_table(["x", "y"], [["1", "2"]]) == "| x | y |\n| --- | --- |\n| 1 | 2 |"


def test_cpu_at_interpolates_between_samples():
    samples = [[10.0, 1.0], [12.0, 5.0], [14.0, 6.0]]
    # halfway between t=10 (1 s) and t=12 (5 s) -> 3 s; outside the range -> the nearest end
    assert cpu_at(samples, 11.0) == pytest.approx(3.0)
    assert cpu_at(samples, 13.5) == pytest.approx(5.75)
    assert cpu_at(samples, 9.0) == 1.0 and cpu_at(samples, 20.0) == 6.0


def test_throughput_per_cpu_second_over_the_measured_steps():
    records = [StepRecord(r.end_time, r.step_seconds, r.wait_seconds, r.samples, r.completion_tokens, r.reward_mean,
                          cpu) for r, cpu in zip(_records(), [3.0, 7.0, 9.0, 13.0, 16.0], strict=True)]
    # measured steps 2..4 used CPU 16 - 7 = 9 s for 1929 tokens
    assert throughput(records, warmup=1, reward_steps=1).tokens_per_cpu_second == pytest.approx(1929 / 9)
    assert throughput(_records(), warmup=1, reward_steps=1).tokens_per_cpu_second is None


def test_tree_cpu_seconds_counts_this_process():
    import os

    assert tree_cpu_seconds(os.getpid()) > 0.0
