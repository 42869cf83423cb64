"""Config loading: precedence file < env < flag, nested flags, lists, clear errors naming the option."""

from __future__ import annotations

import pytest
from pydantic import Field

from rlfleet.config import ConfigError, ServiceConfig, load_config


class DemoConfig(ServiceConfig):
    """A service config for the tests."""

    section = "demo"
    model: str = "tiny"
    """Model path."""
    batch: int = Field(8, ge=1)
    """Items per batch."""
    reward: list[str] = []
    """name:weight pairs."""
    fast: bool = False
    """Go fast."""


def test_defaults():
    config = load_config(DemoConfig, [], environ={})
    assert (config.model, config.batch, config.server.port, config.fast) == ("tiny", 8, 50051, False)


def test_precedence_file_then_env_then_flag(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[demo]\nmodel = "from-file"\nbatch = 2\n[demo.server]\nport = 6000\n[learner]\nx = 1\n')
    env = {"RLFLEET_BATCH": "3", "RLFLEET_SERVER__PORT": "7000"}
    # file alone
    assert load_config(DemoConfig, ["--config", str(path)], environ={}).batch == 2
    # env beats file, file still supplies what env does not set
    config = load_config(DemoConfig, ["--config", str(path)], environ=env)
    assert (config.model, config.batch, config.server.port) == ("from-file", 3, 7000)
    # flags beat env
    config = load_config(DemoConfig, ["--config", str(path), "--batch", "4", "--server.port", "8000"], environ=env)
    assert (config.batch, config.server.port) == (4, 8000)


def test_top_level_file_without_cluster_tables(tmp_path):
    path = tmp_path / "solo.toml"
    path.write_text('model = "solo"\n')
    assert load_config(DemoConfig, ["--config", str(path)], environ={}).model == "solo"


def test_repeated_and_boolean_flags():
    config = load_config(DemoConfig, ["--reward", "a:1", "--reward", "b:0.2", "--fast"], environ={})
    assert config.reward == ["a:1", "b:0.2"] and config.fast is True
    assert load_config(DemoConfig, [], environ={"RLFLEET_REWARD": "x:1,y:2"}).reward == ["x:1", "y:2"]


def test_bad_value_names_the_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        load_config(DemoConfig, ["--batch", "0"], environ={})
    assert "--batch" in str(exc.value) and "greater than or equal to 1" in str(exc.value)
    with pytest.raises(SystemExit) as exc:
        load_config(DemoConfig, ["--server.port", "http"], environ={})
    assert "--server.port" in str(exc.value)


def test_bad_env_value_names_the_option():
    with pytest.raises(SystemExit) as exc:
        load_config(DemoConfig, [], environ={"RLFLEET_SERVER__PORT": "-1"})
    assert "--server.port" in str(exc.value)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[demo]\nbatchsize = 3\n")
    with pytest.raises(SystemExit) as exc:
        load_config(DemoConfig, ["--config", str(path)], environ={})
    assert "batchsize" in str(exc.value)


def test_print_config_roundtrips(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        load_config(DemoConfig, ["--batch", "5", "--reward", "a:1", "--print-config"], environ={})
    assert exc.value.code == 0
    text = capsys.readouterr().out
    path = tmp_path / "printed.toml"
    path.write_text(text)
    config = load_config(DemoConfig, ["--config", str(path)], environ={})
    assert config.batch == 5 and config.reward == ["a:1"]


def test_help_lists_field_docstrings(capsys):
    with pytest.raises(SystemExit):
        load_config(DemoConfig, ["--help"], environ={})
    out = capsys.readouterr().out
    assert "--server.port" in out and "Items per batch." in out


def test_help_prints_a_percent_sign(capsys):
    class Percent(ServiceConfig):
        share: float = 0.9
        """Replaced past 90 % of it (argparse read "% o" as a format)."""

    with pytest.raises(SystemExit) as stop:
        load_config(Percent, ["--help"], environ={})
    assert stop.value.code == 0 and "past 90 % of it" in capsys.readouterr().out



@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_token_is_refused_not_read_as_no_auth(value):
    # An env file or Secret left unfilled gives "" (or blanks); read as "no token" it would turn auth off silently.
    with pytest.raises(ConfigError) as err:
        load_config(ServiceConfig, [], environ={"RLFLEET_SERVER__AUTH_TOKEN": value})
    assert "--server.auth-token: empty bearer token" in str(err.value)
    assert load_config(ServiceConfig, [], environ={"RLFLEET_SERVER__AUTH_TOKEN": "t0ken"}).server.auth_token == "t0ken"
