"""The environment server's sessions, as plain Python (no grpc): idempotent starts and steps, argument checks, expiry.

- A session is started on the least busy worker slot and stays there (env_server.pool).
- Idempotency: StartSession, Finish and the last Step are futures kept on the session, so a retry
  waits for (or reads) the first attempt's answer, even one whose caller's deadline passed while the
  environment was still working. A session id reused with another row is refused.
- A tool call is checked before any environment code runs: an unknown tool, arguments that are not
  a JSON object or do not fit the tool's schema answer UNKNOWN_TOOL / BAD_ARGUMENTS, with the error
  worded for the model as TRL words it ("{'error': '...'}"); the session goes on.
- A failed call (TIMEOUT, a crashed worker, a session lost with its worker) ends the session: its
  later Steps and its Finish answer that failure.
- Sessions with no call for session_idle_seconds are closed when the next session starts.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any

from env_server import metrics
from env_server.config import EnvConfig
from env_server.pool import Call, SessionPool, Slot
from env_server.replies import Answer, Described, decode_answer, decode_reward
from env_server.tools import BadArguments, check_arguments
from rlfleet.environments import EnvironmentCatalog, EnvironmentSpec, EnvStatus, SessionStart, StepResult, ToolCall
from rlfleet.errors import InvalidRequest, NotFound, Overloaded, Rejected
from rlfleet.outcomes import ItemScore, RewardStatus
from rlfleet.workers.scripts import ScriptError, ScriptSource, script_version
from rlfleet.workers.worker_main import WorkerLimits

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
MAX_ARGUMENT_DEPTH = 64
SWEEP_SECONDS = 1.0


def for_model(message: str) -> str:
    """An error as the model reads it in TRL 1.16 (its tool loop's `str({"error": str(e)})`)."""
    return str({"error": message})


def decode_arguments(text: str) -> Any:
    """The model's arguments JSON; BadArguments when it is not JSON or nests too deep."""
    if text.count("[") + text.count("{") > MAX_ARGUMENT_DEPTH:
        raise BadArguments(f"arguments nest deeper than {MAX_ARGUMENT_DEPTH} levels")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as err:
        raise BadArguments(f"arguments are not JSON ({str(err)[:80]})") from None


@dataclass
class _Session:
    id: str
    key: str
    """Digest of the environment and row it was started from."""
    env: Described
    slot: Slot
    generation: int = -1
    """The slot's worker generation that holds it; -1 until reset() answered OK."""
    start: asyncio.Future | None = None
    last_step: asyncio.Future | None = None
    steps: int = 0
    """Steps begun: the step_index the next one must carry."""
    finish: asyncio.Future | None = None
    done: bool = False
    failure: tuple[EnvStatus, str] | None = None
    """Why the session takes no more calls of environment code (done is True too)."""
    touched: float = field(default_factory=time.monotonic)

    def busy(self) -> bool:
        return any(f is not None and not f.done() for f in (self.start, self.last_step, self.finish))


class EnvironmentCore:
    """Every open session of this replica, on the workers of one SessionPool."""

    def __init__(self, config: EnvConfig):
        self.config = config
        self.source = ScriptSource.read(config.script)
        limits = WorkerLimits(**config.limits.model_dump())
        self.pool = SessionPool(self.source, config.workers, limits, config.call_timeout_seconds)
        self.environments: dict[str, Described] = {}
        self.version = script_version(self.source, [])
        self.sessions: dict[str, _Session] = {}
        self._swept = 0.0
        self._releasing: set[asyncio.Future] = set()

    def start_workers(self) -> None:
        """Starts the workers (before the gRPC server: no fork after it); ScriptError if the script cannot serve."""
        described = {d.name: d for d in self.pool.start()}
        missing = [n for n in self.config.environment if n not in described]
        if missing:
            self.pool.close()
            raise ScriptError(f"--environment {missing[0]}: the script defines {', '.join(described)}")
        self.environments = {n: d for n, d in described.items() if not self.config.environment
                             or n in self.config.environment}

    def close(self) -> None:
        self.pool.close()

    def catalog(self) -> EnvironmentCatalog:
        specs = tuple(EnvironmentSpec(d.name, d.description, d.tools, d.has_reward)
                      for d in self.environments.values())
        c = self.config
        return EnvironmentCatalog(specs, self.version, c.call_timeout_seconds, c.session_idle_seconds,
                                  c.max_sessions, c.max_observation_chars)

    def _resolve(self, environment: str, columns: dict[str, Any]) -> tuple[Described, dict[str, Any]]:
        """The environment a start asks for, and the columns reset() gets (without the selecting column)."""
        several = len(self.environments) > 1
        field_name = "environment"
        if not environment and several and "environment" in columns:
            environment, field_name = columns["environment"], 'columns["environment"]'
        if not environment and not several:
            environment = next(iter(self.environments))
        if not isinstance(environment, str) or environment not in self.environments:
            names = ", ".join(self.environments)
            raise InvalidRequest(field_name, f"no environment {environment!r}; this service runs {names} (name one, "
                                             "or give the row an `environment` column)")
        return self.environments[environment], {k: v for k, v in columns.items() if not (several and k == "environment")}

    def _session(self, session_id: str) -> _Session:
        session = self.sessions.get(session_id)
        if session is None:
            raise NotFound(f"session_id: no session {session_id!r} here (never started, closed, expired after "
                           "session_idle_seconds, or this replica restarted)")
        session.touched = time.monotonic()
        return session

    async def _run(self, session: _Session, request: tuple, decode, generation: int | None, call: str) -> Call:
        start = time.monotonic()
        result = await asyncio.wrap_future(self.pool.submit(session.slot, request, decode, generation))
        metrics.CALL_LATENCY.labels(session.env.name, call).observe(time.monotonic() - start)
        return result

    async def start(self, session_id: str, environment: str, columns: dict[str, Any]) -> SessionStart:
        """Opens a session (or answers the first start of this id again); check the status."""
        if not SESSION_ID.match(session_id):
            raise InvalidRequest("session_id", "must be 1-128 characters of [A-Za-z0-9._:-]")
        env, reset_columns = self._resolve(environment, columns)
        key = hashlib.blake2b(json.dumps([env.name, columns], sort_keys=True).encode(), digest_size=16).hexdigest()
        session = self.sessions.get(session_id)
        if session is not None:
            if session.key != key:
                raise Rejected(f"session_id: {session_id!r} names a session started from another row or environment")
            session.touched = time.monotonic()
            return await asyncio.shield(session.start)
        self._sweep()
        if len(self.sessions) >= self.config.max_sessions:
            raise Overloaded(f"max_sessions: {self.config.max_sessions} sessions are open; close finished ones")
        slot = self.pool.least_busy()
        slot.sessions += 1
        session = self.sessions[session_id] = _Session(session_id, key, env, slot)
        metrics.SESSIONS_OPEN.set(len(self.sessions))
        session.start = asyncio.ensure_future(self._start(session, reset_columns))
        return await asyncio.shield(session.start)

    async def _start(self, session: _Session, columns: dict[str, Any]) -> SessionStart:
        env = session.env
        call = await self._run(session, ("start", session.id, env.name, columns), decode_answer, None, "reset")
        answer: Answer | None = call.reply
        if answer is None:
            status, observation, error = call.status, None, call.error
        else:
            status, observation, error = answer.status, answer.observation, answer.error
            limit = self.config.max_observation_chars
            if status is EnvStatus.OK:
                session.generation = call.generation
                if observation is not None and len(observation) > limit:
                    await self._close_on_worker(session)
                    status, observation = EnvStatus.INVALID_OUTPUT, None
                    error = f"reset() returned {len(answer.observation)} characters, more than max_observation_chars"
        if status is not EnvStatus.OK:
            session.failure, session.done = (status, error), True
        metrics.SESSIONS_STARTED.labels(env.name, status.value).inc()
        ok = status is EnvStatus.OK
        return SessionStart(status, observation if ok else None, env.tools if ok else (), env.name, error)

    async def step(self, session_id: str, step_index: int, action: ToolCall | str) -> StepResult:
        """One action of the model (a ToolCall, or its message); a repeat of the last step_index answers it again."""
        session = self._session(session_id)
        if session.last_step is not None and step_index == session.steps - 1:
            return await asyncio.shield(session.last_step)
        if step_index != session.steps:
            raise Rejected(f"step_index: session {session_id!r} expects step {session.steps} next, got {step_index}")
        await asyncio.shield(session.start)
        if session.failure is not None:
            return StepResult(session.failure[0], "", True, session.failure[1])
        if session.done:
            raise Rejected(f"step_index: session {session_id!r} is done (its last step ended it, or it was "
                           "finished); Finish or Close it")
        if session.last_step is not None and not session.last_step.done():
            raise Rejected(f"step_index: step {session.steps - 1} of session {session_id!r} is still running")
        session.steps += 1
        session.last_step = asyncio.ensure_future(self._step(session, action))
        return await asyncio.shield(session.last_step)

    def _lost(self, session: _Session) -> StepResult | None:
        lost = self.pool.lost(session.slot, session.generation)
        if lost is None:
            return None
        metrics.SESSIONS_LOST.inc()
        session.failure, session.done = (EnvStatus.ERROR, lost), True
        return StepResult(EnvStatus.ERROR, "", True, lost)

    async def _step(self, session: _Session, action: ToolCall | str) -> StepResult:
        env = session.env
        kind = "tool" if isinstance(action, ToolCall) else "message"
        result = self._lost(session)
        if result is None and kind == "tool":
            result = await self._tool(session, action)
        elif result is None and not env.has_message:
            result = StepResult(EnvStatus.OK, "", True)  # a turn without a tool call ends the session, as in TRL
        elif result is None:
            call = await self._run(session, ("message", session.id, action), decode_answer, session.generation,
                                   "message")
            result = self._answered(session, call, "on_message()'s reply")
        session.done = result.done
        metrics.STEPS.labels(env.name, kind, result.status.value).inc()
        return result

    async def _tool(self, session: _Session, call: ToolCall) -> StepResult:
        env = session.env
        tool = next((t for t in env.tools if t.name == call.name), None)
        if tool is None:
            result = StepResult(EnvStatus.UNKNOWN_TOOL, for_model(f"Tool {call.name} not found."), False,
                                f"no tool {call.name[:64]!r} in environment {env.name}")
        else:
            try:
                arguments = check_arguments(tool.parameters, decode_arguments(call.arguments_json), tool.name)
            except BadArguments as err:
                result = StepResult(EnvStatus.BAD_ARGUMENTS, for_model(str(err)), False, str(err))
            else:
                reply = await self._run(session, ("tool", session.id, tool.name, arguments), decode_answer,
                                        session.generation, "tool")
                result = self._answered(session, reply, f"tool {tool.name}'s result")
        name = tool.name if tool is not None else metrics.UNKNOWN_TOOL
        metrics.TOOL_CALLS.labels(env.name, name, result.status.value).inc()
        if result.status is not EnvStatus.OK:
            metrics.TOOL_ERRORS.labels(env.name, result.status.value).inc()
        return result

    def _answered(self, session: _Session, call: Call, what: str) -> StepResult:
        """The StepResult of a worker's answer; a failed call ends the session, an oversized observation is
        INVALID_OUTPUT (the model is told)."""
        answer: Answer | None = call.reply
        if answer is None:
            if call.lost:
                metrics.SESSIONS_LOST.inc()
            session.failure = (call.status, call.error)
            return StepResult(call.status, "", True, call.error)
        observation = answer.observation or ""
        if len(observation) > self.config.max_observation_chars:
            error = f"{what} has {len(observation)} characters, more than max_observation_chars"
            return StepResult(EnvStatus.INVALID_OUTPUT, for_model(error), answer.done, error)
        return StepResult(answer.status, observation, answer.done, answer.error)

    async def finish(self, session_id: str) -> ItemScore | None:
        """The session's reward (None: the environment gives none); answered once, then again for retries."""
        session = self._session(session_id)
        if session.finish is None:
            if session.last_step is not None and not session.last_step.done():
                raise Rejected(f"session_id: step {session.steps - 1} of session {session_id!r} is still running")
            session.finish = asyncio.ensure_future(self._finish(session))
        return await asyncio.shield(session.finish)

    async def _finish(self, session: _Session) -> ItemScore | None:
        await asyncio.shield(session.start)
        env = session.env
        if session.failure is None:
            self._lost(session)
        if session.failure is not None:
            score = ItemScore(0.0, {}, RewardStatus(session.failure[0].value), session.failure[1])
        elif not env.has_reward:
            score = None
        else:
            call = await self._run(session, ("finish", session.id), decode_reward, session.generation, "reward")
            reward = call.reply
            if reward is None:
                session.failure = (call.status, call.error)
                score = ItemScore(0.0, {}, RewardStatus(call.status.value), call.error)
            elif reward.status is RewardStatus.OK and reward.reward is None:
                score = None
            else:
                score = ItemScore(reward.reward or 0.0, reward.components, reward.status, reward.error)
        session.done = True
        metrics.SESSIONS_FINISHED.labels(env.name, score.status.value if score else "ok").inc()
        return score

    async def close_session(self, session_id: str) -> None:
        """Frees a session; unknown ids are accepted (Close is retried like any call)."""
        session = self._forget(session_id)
        if session is not None:
            await self._release(session)

    def _forget(self, session_id: str) -> _Session | None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            session.slot.sessions -= 1
            metrics.SESSIONS_OPEN.set(len(self.sessions))
        return session

    async def _release(self, session: _Session) -> None:
        if session.start is not None:
            await asyncio.shield(session.start)
        await self._close_on_worker(session)

    async def _close_on_worker(self, session: _Session) -> None:
        """Drops the session's instance on its worker (queued behind its running call, if any)."""
        if session.generation >= 0 and self.pool.lost(session.slot, session.generation) is None:
            await asyncio.wrap_future(self.pool.submit(session.slot, ("close", session.id), decode_answer,
                                                       session.generation))
            session.generation = -1

    def _sweep(self) -> None:
        """Forgets sessions untouched for session_idle_seconds (at most once per SWEEP_SECONDS); their workers drop
        them in the background, so a start never waits behind other sessions' calls."""
        now = time.monotonic()
        if now - self._swept < SWEEP_SECONDS:
            return
        self._swept = now
        idle = [s.id for s in self.sessions.values()
                if now - s.touched > self.config.session_idle_seconds and not s.busy()]
        for session_id in idle:
            metrics.SESSIONS_EXPIRED.inc()
            task = asyncio.ensure_future(self._release(self._forget(session_id)))
            self._releasing.add(task)  # a reference until done: the loop keeps only weak ones
            task.add_done_callback(self._releasing.discard)
