"""`rlfleet up` pieces: its cluster tables parse with every service's config, datasets, cursor, progress, plot."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from generator.config import GeneratorConfig
from launcher.launch import Ports, cluster_tables
from launcher.plot import plot_run
from launcher.progress import ProgressView
from launcher.up import UpConfig
from learner.config import LearnerConfig
from learner.pipeline.dataset import Cursor, builtin_rows, load_rows
from reference.config import ReferenceConfig
from reward_server.config import RewardConfig
from rlfleet.config import load_config, to_toml


def test_cluster_tables_parse_with_each_service_config(tmp_path):
    config = UpConfig(generators=3, max_staleness=2, kl_coef=0.01, dataset=str(tmp_path / "d.jsonl"),
                      reward_script=tmp_path / "r.py", reward=["acc:1"])
    tables = cluster_tables(config, "models/x", tmp_path, Ports.from_base(50100, 3))
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(tables))
    generator = load_config(GeneratorConfig, ["--config", str(path)], environ={})
    reward = load_config(RewardConfig, ["--config", str(path)], environ={})
    reference = load_config(ReferenceConfig, ["--config", str(path)], environ={})
    learner = load_config(LearnerConfig, ["--config", str(path)], environ={})
    assert generator.keep_versions == 4  # max_staleness + 2: in-flight requests finish on their version
    assert reward.reward == ["acc:1"] and reward.script == tmp_path / "r.py"
    assert reference.model == "models/x"
    assert learner.reference == "service" and learner.algo.kl.coef == 0.01
    assert learner.source.generators == ["127.0.0.1:50100", "127.0.0.1:50101", "127.0.0.1:50102"]
    assert learner.push.generators == learner.source.generators
    assert learner.source.reference == "127.0.0.1:50130" and learner.source.max_staleness == 2


def test_no_reference_service_when_kl_is_zero(tmp_path):
    tables = cluster_tables(UpConfig(kl_coef=0.0), "m", tmp_path, Ports.from_base(50100, 1))
    assert tables["learner"]["reference"] == "in_process" and tables["learner"]["source"]["reference"] is None


def test_builtin_split_is_disjoint_and_answers_are_reversals():
    train, held_out = builtin_rows("reverse", train_size=50, eval_size=10)
    assert not {r.prompt for r in train} & {r.prompt for r in held_out}
    row = train[0]
    assert row.prompt.startswith("reverse:") and row.answer == row.prompt.split(":", 1)[1][::-1]


def test_local_jsonl_and_csv_datasets(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"prompt": f"q{i}", "answer": i, "level": "easy"}) for i in range(10)))
    train, held_out = load_rows(str(jsonl), eval_fraction=0.2)
    assert (len(train), len(held_out)) == (8, 2)
    assert train[0].columns["level"] == "easy" and isinstance(train[0].answer, str)
    csv = tmp_path / "d.csv"
    csv.write_text("question,answer\nq0,1\nq1,2\n")
    with pytest.raises(ValueError, match="no column 'prompt'"):
        load_rows(str(csv))
    assert load_rows(str(csv), prompt_column="question")[0][0].prompt in {"q0", "q1"}
    with pytest.raises(ValueError, match="expected builtin"):
        load_rows(str(tmp_path / "d.txt"))


def test_cursor_walks_epochs_and_resumes_exactly():
    rows, _ = builtin_rows("reverse", train_size=5, eval_size=1)
    cursor = Cursor(rows, seed=3)
    first_epoch = [cursor.next().prompt_id for _ in range(5)]
    assert sorted(first_epoch) == sorted(r.prompt_id for r in rows)  # every row once per epoch
    cursor.next()
    state = cursor.state_dict()
    expected = [cursor.next().prompt_id for _ in range(7)]
    resumed = Cursor(rows, seed=3)
    resumed.load_state_dict(state)
    assert [resumed.next().prompt_id for _ in range(7)] == expected


def _write_metrics(path: Path, steps: int) -> None:
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            f.write(json.dumps({"step": step, "policy_version": step, "reward_mean": 0.1 * step, "kl": 0.01,
                                "response_length_mean": 5.0, "tokens_per_second": 100.0, "staleness_max": 1,
                                "step_seconds": 1.5}) + "\n")


def test_progress_reads_only_complete_new_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    _write_metrics(path, 2)
    with open(path, "a") as f:
        f.write('{"step": 3')  # the learner is mid-write
    out = io.StringIO()
    view = ProgressView(path, total=10, mode="lines", stream=out)
    assert [r["step"] for r in view.poll()] == [1, 2]
    with open(path, "a") as f:
        f.write(', "reward_mean": 0.5}\n')
    assert [r["step"] for r in view.poll()] == [3]
    assert view.poll() == []
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].startswith("step    2/10  reward  0.200")


def test_plot_writes_a_png(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", 4)
    png = plot_run(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "missing")
