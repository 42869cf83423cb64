"""metrics.jsonl of a run directory: a fresh run starts its own curve, a resumed one re-does the steps after its checkpoint."""

import json

from learner.loop import _trim_metrics


def _write(path, steps):
    path.write_text("".join(json.dumps({"step": s, "reward_mean": s / 10}) + "\n" for s in steps))


def _steps(path):
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


def test_fresh_run_empties_an_earlier_runs_records(tmp_path):
    # Before: a second `rlfleet up` into the same folder appended steps 1..3 after the first run's 1..3,
    # and the bench read six steps with the gap between the runs inside one of them.
    path = tmp_path / "metrics.jsonl"
    _write(path, [1, 2, 3])
    _trim_metrics(path, 0)
    assert path.read_text() == ""


def test_resume_keeps_steps_up_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write(path, [1, 2, 3, 4, 5])   # checkpoint at step 3; steps 4 and 5 ran and will run again
    _trim_metrics(path, 3)
    assert _steps(path) == [1, 2, 3]


def test_missing_file_is_left_missing(tmp_path):
    _trim_metrics(tmp_path / "metrics.jsonl", 0)
    assert not (tmp_path / "metrics.jsonl").exists()
