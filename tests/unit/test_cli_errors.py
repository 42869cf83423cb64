"""Service CLIs on bad input: one `rlfleet NAME: error: ...` message naming the option or file, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from launcher.cluster import own_job_environ
from rlfleet import cli
from rlfleet.config import ConfigError, check_model_path


def _run(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip()


def test_missing_model_folder_names_the_option(tmp_path, capsys):
    code, err = _run(capsys, "generator", "--model", str(tmp_path / "base"))
    assert (code, err) == (2, f"rlfleet generator: error: --model: no such model folder: {tmp_path / 'base'}")
    code, err = _run(capsys, "reference", "--model", str(tmp_path))
    assert (code, err) == (2, f"rlfleet reference: error: --model: {tmp_path} is a folder without config.json, "
                              "not a Hugging Face model")


def test_bad_value_and_unknown_option_name_the_flag(capsys):
    code, err = _run(capsys, "generator", "--model", "org/name", "--max-lora-rank", "3")
    assert code == 2 and "--max-lora-rank: must be one of (1, 8, 16," in err and "(got '3')" in err
    code, err = _run(capsys, "generator", "--model", "org/name", "--keep-verisons", "3")
    assert code == 2
    assert err == ("rlfleet generator: error: unrecognized arguments: --keep-verisons 3 (did you mean --keep-versions?); "
                   "`rlfleet generator --help` lists every option")
    code, err = _run(capsys, "reference")
    assert code == 2 and err.splitlines() == ["rlfleet reference: error: invalid ReferenceConfig:", "  --model: Field required"]


def test_bad_toml_file_names_the_file_and_line(tmp_path, capsys):
    path = tmp_path / "cluster.toml"
    path.write_text('[reference]\nmodel = "m"\ndtype = float32\n')
    code, err = _run(capsys, "reference", "--config", str(path))
    assert code == 2 and f"--config: {path} is not valid TOML" in err and "line 3" in err
    code, err = _run(capsys, "learner", "--config", str(tmp_path / "missing.toml"))
    assert (code, err) == (2, f"rlfleet learner: error: --config: no such file: {tmp_path / 'missing.toml'}")
    path.write_text('[reference]\nmodel = "m"\nmax_batch_tokns = 4096\n')
    code, err = _run(capsys, "reference", "--config", str(path))
    assert code == 2 and "max_batch_tokns: unknown key (there is no option --max-batch-tokns)" in err


def test_learner_checks_model_and_dataset_before_starting(tmp_path, capsys):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")  # all the model check looks at
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    source = json.dumps({"type": "pipeline", "dataset": str(rows)})
    code, err = _run(capsys, "learner", "--model", str(model), "--source", source, "--run-dir", str(tmp_path / "r"))
    assert code == 2
    assert err == (f"rlfleet learner: error: source.dataset: dataset '{rows}': no column 'prompt' "
                   "(has ['question', 'answer'])")
    assert not (tmp_path / "r").exists()


def test_reward_server_reports_a_syntax_error_with_file_and_line(tmp_path):
    """A real process, as a container runs it: one line on stderr, exit code 2."""
    script = tmp_path / "my_reward.py"
    script.write_text("import math\n\ndef accuracy(prompts, completions):\n    return [1.0 for c in completions\n")
    result = subprocess.run([sys.executable, "-m", "rlfleet.cli", "reward-server", "--script", str(script),
                             "--server.port", "0"], capture_output=True, text=True, timeout=120, env=own_job_environ())
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # after the service's own start-up log lines
    assert last.startswith(f"rlfleet reward-server: error: {script}:4: SyntaxError:")
    assert "Traceback" not in result.stderr
    missing = subprocess.run([sys.executable, "-m", "reward_server", "--script", str(tmp_path / "nope.py")],
                             capture_output=True, text=True, timeout=120, env=own_job_environ())
    assert missing.returncode == 2  # `python -m SERVICE` goes through the same error handling
    assert missing.stderr.strip() == f"rlfleet reward-server: error: --script: reward script {tmp_path / 'nope.py'} " \
                                     "does not exist"


def test_check_model_path_tells_hub_names_from_missing_folders(tmp_path, monkeypatch):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    check_model_path("models/tiny", "--model")                 # a local folder
    check_model_path("Qwen/Qwen2.5-0.5B-Instruct", "--model")  # a hub name: transformers asks the hub
    check_model_path("gpt2", "--model")
    for missing in ("models/tinyy", "./base", str(tmp_path / "base"), "a/b/c"):  # models/ is here: a path
        with pytest.raises(ConfigError, match=f"--model: no such model folder: {missing}"):
            check_model_path(missing, "--model")
    with pytest.raises(ConfigError, match="is a file; expected a model folder"):
        check_model_path("models/tiny/config.json", "--model")
