"""EnvironmentService domain types and the client's proto conversions: one status vocabulary with rewards."""

from __future__ import annotations

import pytest

from rlfleet.clients.environment import finish_from_proto, start_from_proto, step_request, tool_from_proto
from rlfleet.environments import EnvStatus, ToolCall, env_status_from_proto, env_status_to_proto
from rlfleet.errors import InvalidRequest
from rlfleet.outcomes import ItemScore, RewardStatus, reward_status_to_proto
from rlfleet.v1 import common_pb2, environment_pb2


def test_shared_statuses_have_reward_names_values_and_numbers():
    for reward in RewardStatus:
        env = EnvStatus(reward.value)
        assert env.name == reward.name
        assert env_status_to_proto(env) == reward_status_to_proto(reward)
    # the two tool-call mistakes come after, as 5 and 6
    assert env_status_to_proto(EnvStatus.UNKNOWN_TOOL) == 5
    assert env_status_to_proto(EnvStatus.BAD_ARGUMENTS) == 6
    assert {env_status_from_proto(env_status_to_proto(s)) for s in EnvStatus} == set(EnvStatus)


def test_unspecified_status_names_the_field():
    with pytest.raises(InvalidRequest, match="^status: "):
        env_status_from_proto(environment_pb2.ENV_STATUS_UNSPECIFIED)


def test_step_request_sets_exactly_one_action():
    call = step_request("s", 3, ToolCall.of("add", a=1))
    assert (call.WhichOneof("action"), call.tool_call.name, call.tool_call.arguments_json, call.step_index) == (
        "tool_call", "add", '{"a": 1}', 3)
    message = step_request("s", 0, "I am done")
    assert (message.WhichOneof("action"), message.message) == ("message", "I am done")


def test_tool_schema_must_name_its_tool():
    schema = '{"type": "function", "function": {"name": "add", "parameters": {"type": "object", "properties": {}}}}'
    tool = tool_from_proto(environment_pb2.Tool(name="add", schema_json=schema), "tools[0]")
    assert tool.parameters == {"type": "object", "properties": {}}
    with pytest.raises(ValueError, match=r"tools\[0\].schema_json: names tool 'add', not 'sub'"):
        tool_from_proto(environment_pb2.Tool(name="sub", schema_json=schema), "tools[0]")
    with pytest.raises(ValueError, match=r"tools\[1\].schema_json: not a tool schema"):
        tool_from_proto(environment_pb2.Tool(name="sub", schema_json="[]"), "tools[1]")


def test_finish_without_reward_is_none_and_a_failure_is_a_score():
    ok_none = environment_pb2.FinishResponse(status=common_pb2.REWARD_STATUS_OK)
    assert finish_from_proto(ok_none) is None
    ok = environment_pb2.FinishResponse(status=common_pb2.REWARD_STATUS_OK, reward=0.5, components={"Calc": 0.5})
    assert finish_from_proto(ok) == ItemScore(0.5, {"Calc": 0.5})
    failed = environment_pb2.FinishResponse(status=common_pb2.REWARD_STATUS_TIMEOUT, error="no answer")
    assert finish_from_proto(failed) == ItemScore(0.0, {}, RewardStatus.TIMEOUT, "no answer")


def test_start_keeps_none_apart_from_empty_observation():
    none = start_from_proto(environment_pb2.StartSessionResponse(status=environment_pb2.ENV_STATUS_OK))
    empty = start_from_proto(environment_pb2.StartSessionResponse(status=environment_pb2.ENV_STATUS_OK, observation=""))
    assert (none.observation, empty.observation, none.ok) == (None, "", True)
