"""`rlfleet up --env`: the environment service's table, the learner's multi-turn source, the tool warm-start data."""

from __future__ import annotations

import pytest

from env_server.config import EnvConfig
from generator.config import GeneratorConfig
from launcher.checks import check_inputs, used_ports
from launcher.launch import Ports, cluster_tables
from launcher.tiny_model import build_tokenizer
from launcher.up import UpConfig
from launcher.warmstart_tools import calculator_examples
from learner.config import LearnerConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.turns import TurnRenderer
from rlfleet.config import ConfigError, load_config, to_toml
from tasks import ENVIRONMENT_SCRIPTS


def test_builtin_env_brings_its_dataset_its_service_and_no_reward_service(tmp_path):
    config = UpConfig(env="builtin:calculator", max_turns=3)
    assert config.dataset == "builtin:calculator"
    assert UpConfig(env="builtin:calculator", dataset="builtin:reverse").dataset == "builtin:reverse"  # as asked
    tables = cluster_tables(config, "models/x", tmp_path, Ports.from_base(50100, 1))
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(tables))
    env = load_config(EnvConfig, ["--config", str(path)], environ={})
    assert load_config(GeneratorConfig, ["--config", str(path)], environ={}).block_size == 32
    learner = load_config(LearnerConfig, ["--config", str(path)], environ={})
    assert env.script == ENVIRONMENT_SCRIPTS["calculator"]
    source = learner.source
    assert source.environment.address == "127.0.0.1:50150" and source.environment.max_turns == 3
    assert source.environment.tool_call_format == "compact"  # the tiny model's format (builtin:tiny)
    assert source.rewards == [] and source.dataset == "builtin:calculator"
    ports = used_ports(config)
    assert 50150 in ports and 50120 not in ports  # the environment's port, and no reward service's


def test_the_calculator_warm_start_is_longer_and_calls_the_tool_less():
    # 15% of the conversations call the tool, so the greedy policy starts by answering straight away;
    # the copying then needs 400 steps, not the reverse task's 130, unless the user says otherwise
    assert (UpConfig().warmstart_steps, UpConfig().warmstart_tool_fraction) == (130, 0.15)
    assert UpConfig(env="builtin:calculator").warmstart_steps == 400
    assert UpConfig(env="builtin:calculator", warmstart_steps=50).warmstart_steps == 50


def test_a_reward_script_adds_a_reward_service_and_other_models_write_json(tmp_path):
    script = tmp_path / "r.py"
    config = UpConfig(env="builtin:calculator", model="models/x", reward_script=script, reward=["acc:1"])
    source = cluster_tables(config, "models/x", tmp_path, Ports.from_base(50100, 1))["learner"]["source"]
    assert [r["address"] for r in source["rewards"]] == ["127.0.0.1:50120"]
    assert source["environment"]["tool_call_format"] == "json"


@pytest.mark.parametrize(("env", "message"), [
    ("builtin:chess", r"^--env: unknown built-in environment 'builtin:chess'; choose from \['builtin:calculator'\]"),
    ("no/such/env.py", "^--env: no such file: no/such/env.py"),
])
def test_bad_env_option_names_it(env, message):
    with pytest.raises(ConfigError, match=message):
        check_inputs(UpConfig(env=env, base_port=50700))


def test_warm_start_conversations_are_the_driver_s_tokens_with_the_model_turns_trained():
    tokenizer = build_tokenizer()
    renderer = TurnRenderer(tokenizer)
    rows = [PromptRow(f"r{i}", "12*11", "132") for i in range(40)]
    examples = calculator_examples(renderer, rows, tool_fraction=0.5, seed=0)
    texts = {tokenizer.decode(tokens) for tokens, _ in examples}
    assert texts == {"<|user|>12*11<|assistant|>calc(12*11)<|eos|><|tool|>132<|assistant|>132<|eos|>",
                     "<|user|>12*11<|assistant|>132<|eos|>"}
    tools = [e for e in examples if "calc" in tokenizer.decode(e[0])]
    assert 10 <= len(tools) <= 30  # about half of 40
    tokens, trained = tools[0]
    assert tokenizer.decode([t for t, keep in zip(tokens, trained, strict=True) if keep]) == \
        "calc(12*11)<|eos|>132<|eos|>"  # the prompt and the tool's answer are not trained on
