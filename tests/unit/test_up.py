"""`rlfleet up` pieces: cluster tables, datasets, cursor, progress, plot, and the input checks run before anything starts."""

from __future__ import annotations

import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from generator.config import GeneratorConfig
from launcher.cluster import own_job_environ
from launcher.launch import Ports, cluster_tables
from launcher.plot import plot_run
from launcher.progress import ProgressView
from launcher.up import UpConfig
from learner.config import LearnerConfig
from learner.pipeline.dataset import Cursor, builtin_rows, check_dataset, load_rows
from reference.config import ReferenceConfig
from reward_server.config import RewardConfig
from rlfleet import cli
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
    assert learner.generators == ["127.0.0.1:50100", "127.0.0.1:50101", "127.0.0.1:50102"]  # rollouts and pushes
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



def test_progress_follows_the_file_the_learner_starts_afresh(tmp_path):
    # A second run into the same folder: the view had read the first run's steps 1-3 when the learner
    # replaced the file (learner.loop._trim_metrics); it used to read on from byte 3 lines in, mid-record.
    from learner.loop import _trim_metrics

    path = tmp_path / "metrics.jsonl"
    _write_metrics(path, 3)
    view = ProgressView(path, total=10, mode="none", stream=io.StringIO())
    assert [r["step"] for r in view.poll()] == [1, 2, 3]
    _trim_metrics(path, 0)
    _write_metrics(path, 1)
    assert [r["step"] for r in view.poll()] == [1]


def test_plot_writes_a_png(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", 4)
    png = plot_run(tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileNotFoundError):
        plot_run(tmp_path / "missing")


def test_check_dataset_reads_only_the_header_or_first_record(tmp_path):
    (tmp_path / "a.jsonl").write_text('\n{"prompt": "p", "answer": 1}\n{"broken\n')  # only the first record is read
    (tmp_path / "b.json").write_text('[{"question": "q"}]')
    (tmp_path / "c.csv").write_text("prompt,answer\np,1\n")
    (tmp_path / "d.jsonl").write_text('\n\n{"prompt": "p",\n')
    (tmp_path / "e.jsonl").write_text("")
    check_dataset(str(tmp_path / "a.jsonl"))
    check_dataset(str(tmp_path / "c.csv"))
    check_dataset(str(tmp_path / "b.json"), prompt_column="question")
    check_dataset("builtin:reverse")
    with pytest.raises(ValueError, match=r"b\.json'.*no column 'prompt' \(has \['question'\]\)"):
        check_dataset(str(tmp_path / "b.json"))
    with pytest.raises(ValueError, match=r"d\.jsonl': line 3 is not JSON"):  # two blank lines, then the record
        check_dataset(str(tmp_path / "d.jsonl"))
    with pytest.raises(ValueError, match=r"e\.jsonl': no records"):
        check_dataset(str(tmp_path / "e.jsonl"))
    with pytest.raises(ValueError, match="no such file"):
        check_dataset(str(tmp_path / "missing.csv"))
    with pytest.raises(ValueError, match=r"unknown built-in task; choose from \['calculator', 'reverse', 'reverse_long'\]"):
        check_dataset("builtin:sort")


def test_check_dataset_reads_a_parquet_schema(tmp_path):
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"text": ["a", "b"]}), tmp_path / "d.parquet")
    check_dataset(str(tmp_path / "d.parquet"), prompt_column="text")
    with pytest.raises(ValueError, match=r"no column 'prompt' \(has \['text'\]\)"):
        check_dataset(str(tmp_path / "d.parquet"))
    (tmp_path / "e.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"e\.parquet': not a readable Parquet file"):
        check_dataset(str(tmp_path / "e.parquet"))


def _up(tmp_path, capsys, *args: str) -> tuple[int, str]:
    """Runs `rlfleet up` in this process; the run directory is what run_cluster creates first of all."""
    code = cli.main(["up", "--run-dir", str(tmp_path / "run"), "--progress", "none", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists(), "up got past its input checks"
    return code, err


def test_up_rejects_a_missing_dataset_before_starting_anything(tmp_path, capsys):
    code, err = _up(tmp_path, capsys, "--dataset", str(tmp_path / "prompts.jsonl"))
    assert code == 2
    assert err.strip() == f"rlfleet up: error: --dataset: dataset '{tmp_path / 'prompts.jsonl'}': no such file"


def test_up_rejects_a_dataset_without_a_prompt_column(tmp_path, capsys):
    path = tmp_path / "rows.csv"
    path.write_text("question,answer\nq0,1\n")
    code, err = _up(tmp_path, capsys, "--dataset", str(path))
    assert code == 2
    assert "--dataset" in err and str(path) in err and "no column 'prompt' (has ['question', 'answer'])" in err


def test_up_rejects_a_missing_model_folder_and_an_unknown_builtin(tmp_path, capsys):
    code, err = _up(tmp_path, capsys, "--model", str(tmp_path / "models" / "base"))
    assert code == 2 and f"--model: no such model folder: {tmp_path / 'models' / 'base'}" in err
    code, err = _up(tmp_path, capsys, "--model", "builtin:huge")
    assert code == 2 and "--model: unknown built-in model 'builtin:huge'" in err


def test_up_rejects_a_busy_port(tmp_path, capsys):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        base = holder.getsockname()[1] - 20  # the held port is the reward service's (Ports.from_base)
        code, err = _up(tmp_path, capsys, "--base-port", str(base))
    assert code == 2
    assert "--base-port: port(s) " in err and f"{base + 20} already in use" in err


def test_up_rejects_a_reward_name_the_script_lacks(tmp_path, capsys):
    script = tmp_path / "my_reward.py"
    script.write_text("def accuracy(prompts, completions, **columns):\n    return [1.0] * len(completions)\n")
    code, err = _up(tmp_path, capsys, "--reward-script", str(script), "--reward", "acuracy:1")
    assert code == 2
    assert f"no reward function 'acuracy' in {script}" in err and "accuracy" in err.split("available:")[1]


def test_up_reports_a_reward_script_syntax_error_with_file_and_line(tmp_path):
    """A real `rlfleet up` process: one message, exit code 2, no traceback, nothing started."""
    script = tmp_path / "my_reward.py"
    script.write_text("def accuracy(prompts, completions, **columns):\n    return [1.0 for c in completions\n")
    result = subprocess.run([sys.executable, "-m", "rlfleet.cli", "up", "--reward-script", str(script), "--reward",
                             "accuracy:1", "--run-dir", str(tmp_path / "run")],
                            capture_output=True, text=True, timeout=120, env=own_job_environ())
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert result.stderr.strip().startswith(f"rlfleet up: error: --reward-script: {script}:2: SyntaxError:")
    assert not (tmp_path / "run").exists()
