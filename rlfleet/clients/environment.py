"""EnvironmentClient: sessions of an environment service in domain types (a row in; observations, a score out).

    async with EnvironmentClient("dns:///env:50051", timeout=60, retry=Retry(give_up_after_seconds=60)) as env:
        session = await env.start({"prompt": "...", "question": "2+3"})   # reset(**row); .observation, .tools
        async with session:                                                # Close on the way out
            result = await session.step(ToolCall("add", '{"a": 2, "b": 3}'))   # .status .observation .done
            score = await session.finish()                                 # ItemScore, or None: no reward

A session lives on one replica: with a `dns:///NAME:PORT` target the client expands the name into
its replicas (rlfleet.clients.resolve, again every `refresh_seconds`), starts each session on the
next replica in turn and sends all of that session's calls there. Every call carries the session id,
and a Step its step index, which its retries reuse: a retry after a lost answer never acts twice.
A session its replica no longer knows (the replica restarted, or closed it after
session_idle_seconds) answers a typed ERROR with done set, like a crashed environment, not an
exception. Choose a bounded `retry` for sessions: a replica that is gone does not come back with
its sessions.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import grpc

from rlfleet.clients.channel import ChannelClient, make_channel
from rlfleet.clients.resolve import expand_target, replica_config
from rlfleet.clients.retry import Retry, call_with_retry
from rlfleet.config import ClientConfig
from rlfleet.environments import (
    EnvironmentCatalog,
    EnvironmentSpec,
    EnvStatus,
    SessionStart,
    StepResult,
    ToolCall,
    ToolSpec,
    env_status_from_proto,
)
from rlfleet.outcomes import ItemScore, RewardStatus, reward_status_from_proto
from rlfleet.v1 import environment_pb2, environment_pb2_grpc


def tool_from_proto(tool: environment_pb2.Tool, where: str) -> ToolSpec:
    """A ToolSpec with its schema parsed; ValueError naming `where` for a schema that is not the tool's."""
    try:
        schema = json.loads(tool.schema_json)
        named = schema["function"]["name"]
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{where}.schema_json: not a tool schema ({err})") from None
    if named != tool.name:
        raise ValueError(f"{where}.schema_json: names tool {named!r}, not {tool.name!r}")
    return ToolSpec(tool.name, tool.description, schema)


def tools_from_proto(tools, where: str) -> tuple[ToolSpec, ...]:
    return tuple(tool_from_proto(t, f"{where}[{i}]") for i, t in enumerate(tools))


def catalog_from_proto(reply: environment_pb2.ListEnvironmentsResponse) -> EnvironmentCatalog:
    specs = tuple(EnvironmentSpec(e.name, e.description, tools_from_proto(e.tools, f"environments[{i}].tools"),
                                  e.has_reward) for i, e in enumerate(reply.environments))
    return EnvironmentCatalog(specs, reply.script_version, reply.call_timeout_seconds, reply.session_idle_seconds,
                              reply.max_sessions, reply.max_observation_chars)


def start_from_proto(reply: environment_pb2.StartSessionResponse) -> SessionStart:
    observation = reply.observation if reply.HasField("observation") else None
    return SessionStart(env_status_from_proto(reply.status), observation, tools_from_proto(reply.tools, "tools"),
                        reply.environment, reply.error)


def step_request(session_id: str, step_index: int, action: ToolCall | str) -> environment_pb2.StepRequest:
    """A Step carrying a tool call, or the model's message when `action` is a str."""
    request = environment_pb2.StepRequest(session_id=session_id, step_index=step_index)
    if isinstance(action, ToolCall):
        request.tool_call.name, request.tool_call.arguments_json = action.name, action.arguments_json
    else:
        request.message = action
    return request


def finish_from_proto(reply: environment_pb2.FinishResponse) -> ItemScore | None:
    """An ItemScore; None when the session ended OK with no reward from the environment."""
    status = reward_status_from_proto(reply.status)
    if status is RewardStatus.OK and not reply.HasField("reward"):
        return None
    return ItemScore(reply.reward, dict(reply.components), status, reply.error)


def _lost(err: grpc.aio.AioRpcError) -> bool:
    return err.code() == grpc.StatusCode.NOT_FOUND


class Session:
    """One session on one replica; `start` tells how reset() went. Close it (or leave `async with`) when done."""

    def __init__(self, client: EnvironmentClient, address: str, session_id: str, start: SessionStart):
        self.client, self.address, self.id, self.start = client, address, session_id, start
        self.steps = 0
        """Steps answered so far: the step_index of the next one."""

    @property
    def ok(self) -> bool:
        return self.start.ok

    @property
    def observation(self) -> str | None:
        return self.start.observation

    @property
    def tools(self) -> tuple[ToolSpec, ...]:
        return self.start.tools

    async def step(self, action: ToolCall | str) -> StepResult:
        """A tool call, or the model's message (a str) when it called none."""
        result = await self.client.step(self.address, self.id, self.steps, action)
        self.steps += 1
        return result

    async def finish(self) -> ItemScore | None:
        return await self.client.finish(self.address, self.id)

    async def close(self) -> None:
        await self.client.close_session(self.address, self.id)

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


class EnvironmentClient(ChannelClient):
    """One environment service (every replica of a `dns:///` target); a session stays on the replica that started it."""

    def __init__(self, target: str, config: ClientConfig | None = None, timeout: float | None = None,
                 retry: Retry | None = None, name: str = "", refresh_seconds: float = 10.0,
                 resolve: Callable[[str], list[str]] = expand_target):
        super().__init__(target, config)
        self.name = name or target
        self.timeout = timeout or self.config.timeout_seconds
        """Deadline of one attempt of a call, in seconds (give more than the service's call_timeout_seconds)."""
        self.retry = retry
        self.refresh_seconds = refresh_seconds
        self.resolve = resolve
        """target -> the addresses of its replicas (tests give a fixed list)."""
        self._stubs: dict[str, environment_pb2_grpc.EnvironmentServiceStub] = {
            target: environment_pb2_grpc.EnvironmentServiceStub(self._channel)}
        self._channels = []
        self._replicas: list[str] = []
        self._resolved_at = -float("inf")
        self._next = 0

    def _stub(self, address: str) -> environment_pb2_grpc.EnvironmentServiceStub:
        if address not in self._stubs:
            channel = make_channel(address, replica_config(self.config, self.target))
            self._channels.append(channel)
            self._stubs[address] = environment_pb2_grpc.EnvironmentServiceStub(channel)
        return self._stubs[address]

    def _pick_replica(self) -> str:
        """The next replica in turn; the target itself while its name resolves to nothing."""
        if time.monotonic() - self._resolved_at > self.refresh_seconds:
            self._replicas, self._resolved_at = self.resolve(self.target), time.monotonic()
        if not self._replicas:
            return self.target
        self._next += 1
        return self._replicas[self._next % len(self._replicas)]

    async def _call(self, address: str, method: str, request):
        call = getattr(self._stub(address), method)
        return await call_with_retry(lambda timeout: call(request, timeout=timeout),
                                     f"environment service {self.name} ({address})", self.timeout, self.retry)

    async def list_environments(self) -> EnvironmentCatalog:
        reply = await self._call(self.target, "ListEnvironments", environment_pb2.ListEnvironmentsRequest())
        return catalog_from_proto(reply)

    async def start(self, columns: Mapping[str, Any], environment: str = "", session_id: str | None = None) -> Session:
        """Opens a session from a dataset row (reset(**columns)); check `session.ok` before stepping it.

        `session_id` defaults to a fresh one; pass your own (e.g. prompt id and sample index) to make a
        start repeated after your own restart land on the same session.
        """
        session_id = session_id or uuid.uuid4().hex
        request = environment_pb2.StartSessionRequest(session_id=session_id, environment=environment,
                                                      columns={k: json.dumps(v) for k, v in columns.items()})
        address = self._pick_replica()
        reply = await self._call(address, "StartSession", request)
        return Session(self, address, session_id, start_from_proto(reply))

    async def step(self, address: str, session_id: str, step_index: int, action: ToolCall | str) -> StepResult:
        """One Step of a session on `address` (Session.step fills in the address and index)."""
        try:
            reply = await self._call(address, "Step", step_request(session_id, step_index, action))
        except grpc.aio.AioRpcError as err:
            if not _lost(err):
                raise
            return StepResult(EnvStatus.ERROR, done=True, error=f"session lost: {err.details()}")
        return StepResult(env_status_from_proto(reply.status), reply.observation, reply.done, reply.error)

    async def finish(self, address: str, session_id: str) -> ItemScore | None:
        try:
            reply = await self._call(address, "Finish", environment_pb2.FinishRequest(session_id=session_id))
        except grpc.aio.AioRpcError as err:
            if not _lost(err):
                raise
            return ItemScore(0.0, {}, RewardStatus.ERROR, f"session lost: {err.details()}")
        return finish_from_proto(reply)

    async def close_session(self, address: str, session_id: str) -> None:
        await self._call(address, "Close", environment_pb2.CloseRequest(session_id=session_id))

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        await super().close()
