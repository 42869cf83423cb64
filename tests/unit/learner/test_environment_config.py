"""source.environment: the multi-turn settings are checked where they are declared, naming the option."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from learner.pipeline.config import PipelineConfig


def test_environment_defaults_and_limits():
    env = PipelineConfig(environment={"address": "dns:///env:50051"}).environment
    assert (env.tool_call_format, env.max_turns, env.max_trajectory_tokens) == ("json", 8, 1024)
    assert PipelineConfig().environment is None  # single-turn unless asked


@pytest.mark.parametrize(("environment", "extra", "message"), [
    ({"address": "a:1"}, {"chat_template": False}, "source.chat_template: must be true with source.environment"),
    ({"address": "a:1", "tool_call_format": "xml"}, {}, "tool_call_format"),
    ({"address": "a:1", "max_turns": 0}, {}, "max_turns"),
    ({"address": "a:1", "max_trajectory_seconds": 0}, {}, "max_trajectory_seconds"),
])
def test_bad_settings_name_the_option(environment, extra, message):
    with pytest.raises(ValidationError, match=message):
        PipelineConfig(environment=environment, **extra)
