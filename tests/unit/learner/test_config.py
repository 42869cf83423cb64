"""LearnerConfig: defaults, the source discriminator, flags, and the combinations it refuses."""

from __future__ import annotations

import pytest

from learner.config import LearnerConfig, PushSourceConfig
from learner.pipeline.config import PipelineConfig
from rlfleet.config import load_config


def test_source_is_picked_by_type_and_defaults_to_the_pipeline():
    assert isinstance(LearnerConfig(model="m").source, PipelineConfig)
    config = load_config(LearnerConfig, ["--model", "m", "--source", '{"type": "push", "max_queued_batches": 3}',
                                         "--deepspeed.zero-stage", "3", "--lora.target-modules", "q_proj"],
                         environ={})
    assert isinstance(config.source, PushSourceConfig) and config.source.max_queued_batches == 3
    assert config.deepspeed.zero_stage == 3 and config.lora.target_modules == ["q_proj"]
    assert config.updates_per_batch == 1


def test_refused_settings_name_the_flag():
    with pytest.raises(SystemExit, match="--deepspeed.zero-stage"):
        load_config(LearnerConfig, ["--model", "m", "--deepspeed.zero-stage", "4"], environ={})
    with pytest.raises(SystemExit, match="--model"):
        load_config(LearnerConfig, [], environ={})
    with pytest.raises(SystemExit, match="--algo.value.warmup-steps"):
        load_config(LearnerConfig, ["--model", "m", "--algo.value.warmup-steps", "-1"], environ={})


def test_gae_is_accepted_with_its_critic_settings():
    config = load_config(LearnerConfig, ["--model", "m", "--algo.advantage", '{"type": "gae", "lam": 0.9}',
                                         "--algo.value.lr", "1e-4", "--algo.value.warmup-steps", "2",
                                         "--epochs-per-batch", "2", "--minibatches-per-batch", "4"], environ={})
    assert config.algo.needs_critic and config.algo.value.lr == 1e-4 and config.algo.value.warmup_steps == 2
    assert config.updates_per_batch == 8


def test_every_field_is_documented():
    def walk(model):
        for name, info in model.model_fields.items():
            assert info.description, f"{model.__name__}.{name} has no docstring"
            sub = info.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)
    walk(LearnerConfig)
    walk(PushSourceConfig)


@pytest.mark.parametrize("temperature", [float("inf"), float("nan"), -0.5])
def test_temperature_must_be_finite_and_not_negative(temperature):
    with pytest.raises(ValueError, match="temperature"):
        PipelineConfig(temperature=temperature)
    # through the learner's flags the error names the flag
    with pytest.raises(SystemExit, match="--source.temperature"):
        load_config(LearnerConfig, ["--model", "m", "--generators", '["127.0.0.1:1"]',
                                    "--source.temperature", str(temperature)], environ={})


def test_greedy_sampling_needs_a_group_of_one():
    # 4 greedy samples of a prompt are the same completion: reward - group mean = 0 for each of them
    with pytest.raises(ValueError, match=r"source\.temperature: 0 .* source\.group_size = 4"):
        PipelineConfig(temperature=0.0, group_size=4)
    assert PipelineConfig(temperature=0.0, group_size=1).temperature == 0.0
    assert PipelineConfig(temperature=0.01, group_size=4).group_size == 4
