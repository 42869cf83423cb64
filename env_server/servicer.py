"""EnvironmentService over gRPC: protobuf <-> env_server domain types, nothing else."""

from __future__ import annotations

from env_server.core import EnvironmentCore
from rlfleet.environments import EnvironmentCatalog, SessionStart, StepResult, ToolCall, ToolSpec, env_status_to_proto
from rlfleet.errors import InvalidRequest
from rlfleet.outcomes import ItemScore, RewardStatus, reward_status_to_proto
from rlfleet.v1 import environment_pb2, environment_pb2_grpc
from rlfleet.workers.columns import decode_column


def tool_to_proto(tool: ToolSpec) -> environment_pb2.Tool:
    return environment_pb2.Tool(name=tool.name, description=tool.description, schema_json=tool.schema_json())


def start_to_proto(start: SessionStart) -> environment_pb2.StartSessionResponse:
    reply = environment_pb2.StartSessionResponse(status=env_status_to_proto(start.status), error=start.error,
                                                 tools=[tool_to_proto(t) for t in start.tools],
                                                 environment=start.environment)
    if start.observation is not None:
        reply.observation = start.observation
    return reply


def step_to_proto(result: StepResult) -> environment_pb2.StepResponse:
    return environment_pb2.StepResponse(status=env_status_to_proto(result.status), error=result.error,
                                        observation=result.observation, done=result.done)


def finish_to_proto(score: ItemScore | None) -> environment_pb2.FinishResponse:
    if score is None:
        return environment_pb2.FinishResponse(status=reward_status_to_proto(RewardStatus.OK))
    reply = environment_pb2.FinishResponse(status=reward_status_to_proto(score.status), error=score.error,
                                           components=score.components)
    if score.status is RewardStatus.OK:
        reply.reward = score.reward
    return reply


def catalog_to_proto(catalog: EnvironmentCatalog) -> environment_pb2.ListEnvironmentsResponse:
    specs = [environment_pb2.EnvironmentSpec(name=e.name, description=e.description, has_reward=e.has_reward,
                                             tools=[tool_to_proto(t) for t in e.tools]) for e in catalog.environments]
    return environment_pb2.ListEnvironmentsResponse(
        environments=specs, script_version=catalog.script_version, call_timeout_seconds=catalog.call_timeout_seconds,
        session_idle_seconds=catalog.session_idle_seconds, max_sessions=catalog.max_sessions,
        max_observation_chars=catalog.max_observation_chars)


def columns_from_proto(columns) -> dict:
    """The row's columns JSON-decoded; InvalidRequest naming a column that is not JSON or not an identifier."""
    decoded = {}
    for key, text in columns.items():
        field = f'columns["{key}"]'
        if not key.isidentifier():
            raise InvalidRequest(field, "column names must be Python identifiers (they are reset()'s keyword arguments)")
        decoded[key] = decode_column(field, text)
    return decoded


class EnvironmentServicer(environment_pb2_grpc.EnvironmentServiceServicer):
    """Translates EnvironmentService calls for an EnvironmentCore."""

    def __init__(self, core: EnvironmentCore):
        self.core = core

    async def StartSession(self, request: environment_pb2.StartSessionRequest, context):
        columns = columns_from_proto(request.columns)
        return start_to_proto(await self.core.start(request.session_id, request.environment, columns))

    async def Step(self, request: environment_pb2.StepRequest, context):
        which = request.WhichOneof("action")
        if which is None:
            raise InvalidRequest("action", "set tool_call or message")
        action = ToolCall(request.tool_call.name, request.tool_call.arguments_json) if which == "tool_call" \
            else request.message
        return step_to_proto(await self.core.step(request.session_id, request.step_index, action))

    async def Finish(self, request: environment_pb2.FinishRequest, context):
        return finish_to_proto(await self.core.finish(request.session_id))

    async def Close(self, request: environment_pb2.CloseRequest, context):
        await self.core.close_session(request.session_id)
        return environment_pb2.CloseResponse()

    async def ListEnvironments(self, request: environment_pb2.ListEnvironmentsRequest, context):
        return catalog_to_proto(self.core.catalog())
