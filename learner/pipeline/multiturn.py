"""Multi-turn rollouts, token in / token out: generate a turn, parse its tool calls, step the environment, append the
observation's ids, generate again from the whole id list; one GRPO group of trajectories per dataset row.

    driver = MultiTurnDriver(config.environment, TurnRenderer.from_pretrained(model), EnvironmentClient(...))
    async for done in driver.rollouts(rows, generator_client, Sampling(n=8, max_tokens=64)):
        done.group   # one Sample per trajectory; sample.trajectory: turns, tool calls, the environment's score

A trajectory is one Sample whose `token_ids` are every token after the first prompt: the model's
turns exactly as generated (behaviour log-probs, loss_mask 1) and the observations as the chat
template renders them alone (log-probs 0, loss_mask 0). Nothing generated is ever re-tokenised
(learner/pipeline/turns.py says why). The trajectories of a call advance in rounds: each round is
one Generate call per (policy version, n), identical contexts of one row asked as one prompt with n
samples (the first turn of a group is one prompt with n = group size; vLLM's prefix cache serves
the shared prefix of the rest). A trajectory's first turn takes the newest policy and every later
turn asks for that same version, so a whole trajectory comes from one policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from learner.pipeline import multiturn_metrics as metrics
from learner.pipeline.config import EnvironmentConfig, PipelineConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.generators import Endpoint, GeneratorPool
from learner.pipeline.rollout import Dropped, RolloutStats, SingleTurnDriver
from learner.pipeline.toolcalls import ParseError, ToolCallParser, make_parser
from learner.pipeline.turns import TurnRenderer
from rlfleet.clients import TRANSIENT, Retry
from rlfleet.clients.environment import EnvironmentClient, Session
from rlfleet.config import ClientConfig
from rlfleet.environments import EnvStatus, StepResult, ToolCall
from rlfleet.generation import PromptInput, Sampling
from rlfleet.outcomes import FinishReason, ItemScore
from rlfleet.rollouts import Group, Sample, TrajectoryStats


class Generates(Protocol):
    """What the driver needs of a generator: rlfleet.clients.GeneratorClient.generate."""

    def generate(self, prompts: Sequence[PromptInput], sampling: Sampling, policy_version: int | None = None,
                 timeout: float | None = None) -> AsyncIterator[Group]: ...


class EnvironmentFailed(Exception):
    """A row's sessions could not start (the environment's reset failed); the row cannot be rolled out."""


class EnvironmentUnavailable(RuntimeError):
    """The environment service failed a call with an RPC error its client does not retry (not the environment's
    code failing: that is a typed status); kept apart from generator failures, which are resubmitted elsewhere."""


@dataclass
class RowRollout:
    """A row's finished group of trajectories (each sample's `trajectory.environment_score` set), or why it has none."""

    row: PromptRow
    group: Group | None
    error: str = ""


@dataclass
class Trajectory:
    """One trajectory being rolled out: its session and the ids so far."""

    row: int
    session: Session
    prompt_ids: list[int]                   # [P] this trajectory's first prompt (reset's text included)
    started: float
    limit: int                              # most tokens it may hold after its prompt
    token_ids: list[int] = field(default_factory=list)     # [T] everything after the prompt
    logprobs: list[float] = field(default_factory=list)    # [T] behaviour log-probs; 0 on observations
    loss_mask: list[bool] = field(default_factory=list)    # [T] True on the model's tokens
    versions: list[int] = field(default_factory=list)      # policy version of each model turn
    tool_calls: int = 0
    tool_errors: int = 0
    environment_seconds: float = 0.0
    last_text: str = ""
    done: bool = False
    truncation: str = ""

    def append(self, ids: Sequence[int], logprobs: Sequence[float] | None) -> None:
        """Appends the model's tokens (with their log-probs) or, with None, an observation's."""
        self.token_ids += ids
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(ids)
        self.loss_mask += [logprobs is not None] * len(ids)

    def end(self, truncation: str = "") -> None:
        self.done, self.truncation = True, truncation

    def stats(self, environment_score: ItemScore | None = None) -> TrajectoryStats:
        return TrajectoryStats(len(self.versions), self.tool_calls, self.tool_errors, self.environment_seconds,
                               self.truncation, tuple(self.versions), environment_score)


class MultiTurnDriver:
    """Rolls out groups of trajectories of dataset rows against one environment service and one generator."""

    def __init__(self, config: EnvironmentConfig, renderer: TurnRenderer, environment: EnvironmentClient,
                 parser: ToolCallParser | None = None):
        self.config = config
        self.renderer = renderer
        self.environment = environment
        self.parser = parser or make_parser(config.tool_call_format)

    async def rollouts(self, rows: Sequence[PromptRow], generator: Generates, sampling: Sampling,
                       timeout: float | None = None, max_model_len: int | None = None) -> AsyncIterator[RowRollout]:
        """Yields each row's group of `sampling.n` trajectories as soon as all of them ended.

        `max_model_len` is the generator's context length, when known: a trajectory stops short of it
        (reason `tokens`), since the generator refuses a prompt that fills it.

        Every session is closed on the way out, the caller's cancellation included. A generator or
        environment RPC error is raised (the caller resubmits the rows); a row whose sessions did not
        start is yielded with its `error` and no group.
        """
        groups: dict[int, list[Trajectory]] = {}
        try:
            started = await asyncio.gather(*(self._start(i, row, sampling.n, max_model_len)
                                             for i, row in enumerate(rows)), return_exceptions=True)
            groups.update((i, ts) for i, ts in enumerate(started) if not isinstance(ts, BaseException))
            for index, outcome in enumerate(started):
                if isinstance(outcome, EnvironmentFailed):
                    yield RowRollout(rows[index], None, error=str(outcome))
                elif isinstance(outcome, BaseException):
                    raise outcome
            round_index = 0
            while groups:
                active = [t for ts in groups.values() for t in ts if not t.done and not self._over_limits(t)]
                await self._round(active, generator, sampling, round_index, timeout)
                round_index += 1
                for index in [i for i, ts in groups.items() if all(t.done for t in ts)]:
                    yield await self._finish(rows[index], groups.pop(index))
        finally:
            await asyncio.shield(self._close([t for ts in groups.values() for t in ts]))

    # -- sessions -----------------------------------------------------------------------------------

    async def _start(self, index: int, row: PromptRow, n: int, max_model_len: int | None) -> list[Trajectory]:
        columns: dict[str, Any] = {"prompt": row.prompt, **row.columns}
        outcomes = await asyncio.gather(*(self._timed("start", self.environment.start(
            columns, self.config.environment, session_id=uuid.uuid4().hex)) for _ in range(n)), return_exceptions=True)
        sessions = [o for o in outcomes if not isinstance(o, BaseException)]
        raised = [o for o in outcomes if isinstance(o, BaseException)]
        failed = [s for s, _ in sessions if not s.ok]
        if raised or failed:
            await self._close_sessions([s for s, _ in sessions])   # the ones that did start
            if raised:
                raise raised[0]
            raise EnvironmentFailed(f"{failed[0].start.status.value}: {failed[0].start.error}")
        trajectories = []
        for session, seconds in sessions:
            prompt = self.renderer.prompt(self._messages(row, session.observation), [t.schema for t in session.tools])
            limit = self.config.max_trajectory_tokens
            if max_model_len is not None:
                limit = min(limit, max_model_len - 1 - len(prompt))
            trajectories.append(Trajectory(index, session, prompt, time.monotonic(), limit,
                                           environment_seconds=seconds))
        return trajectories

    @staticmethod
    def _messages(row: PromptRow, observation: str | None) -> list[dict[str, str]]:
        """The row's messages, reset()'s text appended to the last user message (as TRL's environment_factory does)."""
        messages = ([{"role": "user", "content": row.prompt}] if isinstance(row.prompt, str)
                    else [dict(m) for m in row.prompt])
        if observation:
            users = [i for i, m in enumerate(messages) if m["role"] == "user"]
            if users:
                messages[users[-1]]["content"] += observation
            else:
                messages.append({"role": "user", "content": observation})
        return messages

    async def _timed(self, call: str, awaitable):
        start = time.perf_counter()
        try:
            result = await awaitable
        except grpc.aio.AioRpcError as err:
            raise EnvironmentUnavailable(f"environment service {self.environment.name}: {call} failed: "
                                         f"{err.code().name}: {err.details()}") from err
        finally:
            metrics.ENVIRONMENT_LATENCY.labels(call).observe(time.perf_counter() - start)
        return result, time.perf_counter() - start

    async def _close(self, trajectories: list[Trajectory]) -> None:
        await self._close_sessions([t.session for t in trajectories])

    async def _close_sessions(self, sessions: list[Session]) -> None:
        # Close is idempotent and the service ends idle sessions itself: a failed Close loses nothing.
        await asyncio.gather(*(s.close() for s in sessions), return_exceptions=True)

    # -- one round ----------------------------------------------------------------------------------

    def _over_limits(self, t: Trajectory) -> bool:
        """Ends `t` truncated when it may not take another turn; True if it did."""
        if time.monotonic() - t.started > self.config.max_trajectory_seconds:
            t.end("wall_time")
        elif len(t.token_ids) >= t.limit:
            t.end("tokens")
        return t.done

    async def _round(self, active: list[Trajectory], generator: Generates, sampling: Sampling, round_index: int,
                     timeout: float | None) -> None:
        """One turn of every active trajectory: Generate calls by (version, n), then every environment step."""
        calls: dict[tuple[int | None, int], dict[tuple, list[Trajectory]]] = {}
        for t in active:
            version = t.versions[0] if t.versions else None
            # Greedy decoding (evaluation) takes n = 1: every sample of a greedy prompt would be the same.
            key = (t.row, *t.prompt_ids, -1, *t.token_ids) if sampling.temperature > 0 else (id(t),)
            calls.setdefault(version, {}).setdefault(key, []).append(t)
        by_call: dict[tuple[int | None, int], list[list[Trajectory]]] = {}
        for version, prompts in calls.items():
            for same in prompts.values():
                by_call.setdefault((version, len(same)), []).append(same)
        seed = None if sampling.seed is None else sampling.seed + 7919 * round_index
        turns = await asyncio.gather(*(
            self._generate(generator, groups, dataclasses.replace(sampling, n=n, seed=seed), version, timeout)
            for (version, n), groups in by_call.items()))
        await asyncio.gather(*(self._act(t, turn, version) for results in turns for t, turn, version in results))

    @staticmethod
    async def _generate(generator: Generates, groups: list[list[Trajectory]], sampling: Sampling,
                        version: int | None, timeout: float | None) -> list[tuple[Trajectory, Sample, int]]:
        prompts = [PromptInput(str(i), token_ids=tuple(same[0].prompt_ids + same[0].token_ids))
                   for i, same in enumerate(groups)]
        out = []
        async for group in generator.generate(prompts, sampling, policy_version=version, timeout=timeout):
            same = groups[int(group.prompt_id)]
            out += [(t, turn, group.policy_version) for t, turn in zip(same, group.samples, strict=True)]
        if len(out) != sum(len(same) for same in groups):
            raise RuntimeError(f"generator answered {len(out)} of {sum(map(len, groups))} trajectory turns")
        return out

    # -- acting on a turn ---------------------------------------------------------------------------

    async def _act(self, t: Trajectory, turn: Sample, version: int) -> None:
        """Appends the model's turn, runs its tool calls (or hands its message to the environment),
        and appends the observation; ends `t` when the environment or a limit does."""
        t.versions.append(version)
        room = t.limit - len(t.token_ids)
        ids, logprobs = turn.token_ids[:room], turn.logprobs[:room]
        t.append(ids, logprobs)
        t.last_text = self.renderer.tokenizer.decode(ids, skip_special_tokens=True)
        if len(turn.token_ids) > room:
            return t.end("tokens")
        if turn.finish_reason is not FinishReason.STOP:
            return t.end("turn_tokens" if turn.finish_reason is FinishReason.LENGTH else "aborted")
        messages = await self._observe(t, self.parser.parse(t.last_text, t.session.tools))
        if t.done:
            return None
        if len(t.versions) >= self.config.max_turns:
            return t.end("turns")
        observation = self.renderer.after_turn(ids, messages)
        if len(t.token_ids) + len(observation) >= t.limit:
            return t.end("tokens")
        t.append(observation, None)
        return None

    async def _observe(self, t: Trajectory, calls: list[ToolCall | ParseError]) -> list[dict[str, str]]:
        """Steps the environment with the turn's calls, or its message when it has none; the messages to show."""
        if not calls:
            result = await self._step(t, t.last_text)
            if result.done:
                t.end()
            return [{"role": "user", "content": result.observation}]
        messages = []
        for call in calls:
            t.tool_calls += 1
            if isinstance(call, ParseError):
                t.tool_errors += 1
                metrics.TOOL_CALLS.labels("parse_error").inc()
                messages.append({"role": "tool", "content": str({"error": call.error})})  # TRL's wording
                continue
            result = await self._step(t, call)
            metrics.TOOL_CALLS.labels(result.status.value).inc()
            if result.status is not EnvStatus.OK:
                t.tool_errors += 1
            messages.append({"role": "tool", "name": call.name, "content": result.observation})
            if result.done:
                t.end()
                break
        return messages

    async def _step(self, t: Trajectory, action: ToolCall | str) -> StepResult:
        result, seconds = await self._timed("step", t.session.step(action))
        t.environment_seconds += seconds
        return result

    # -- the group ----------------------------------------------------------------------------------

    async def _finish(self, row: PromptRow, trajectories: list[Trajectory]) -> RowRollout:
        """Scores every trajectory (Finish), closes the sessions, and builds the row's group."""
        try:
            scores = [score for score, _ in await asyncio.gather(
                *(self._timed("finish", t.session.finish()) for t in trajectories))]
        finally:
            await self._close(trajectories)
        if any(not t.versions for t in trajectories):
            return RowRollout(row, None, error="the first prompt leaves no room for a turn "
                              "(max_trajectory_tokens, the generator's max_model_len)")
        # Sessions of one row may start with different reset() texts: the group's prompt is their common
        # prefix, and each trajectory's rest of its prompt leads its tokens as an observation (masked out).
        prompt = _common_prefix([t.prompt_ids for t in trajectories])
        if not prompt:
            return RowRollout(row, None, error="the trajectories' first prompts share no token")
        samples = []
        for t, score in zip(trajectories, scores, strict=True):
            rest = t.prompt_ids[len(prompt):]
            weighted = None if score is None else dataclasses.replace(score, reward=score.reward * self.config.weight)
            samples.append(Sample(
                token_ids=rest + t.token_ids, logprobs=[0.0] * len(rest) + t.logprobs,
                loss_mask=[False] * len(rest) + t.loss_mask, text=t.last_text,
                finish_reason=FinishReason.LENGTH if t.truncation else FinishReason.STOP, trajectory=t.stats(weighted)))
            metrics.record_trajectory(samples[-1].trajectory)
        group = Group(prompt_id=row.prompt_id, prompt_ids=prompt, samples=samples,
                      policy_version=min(t.versions[0] for t in trajectories), prompt_text=self.renderer.decode(prompt),
                      columns=dict(row.columns))
        return RowRollout(row, group)


def _common_prefix(lists: list[list[int]]) -> list[int]:
    first = lists[0]
    length = len(first)
    for other in lists[1:]:
        same = next((i for i, (a, b) in enumerate(zip(first, other, strict=False)) if a != b), min(len(first), len(other)))
        length = min(length, same)
    return first[:length]


class MultiTurnRollout(SingleTurnDriver):
    """The pipeline's rollout step for `source.environment`: the rows of one Generate share (one generator) are
    rolled out as multi-turn trajectories there, so every turn of a trajectory meets its prefix in that
    generator's cache; a generator that fails sends the rows it did not finish elsewhere, from the start."""

    def __init__(self, pool: GeneratorPool, config: PipelineConfig, stats: RolloutStats | None,
                 renderer: TurnRenderer, client: ClientConfig | None = None):
        super().__init__(pool, config, stats)
        env = config.environment
        if env is None:
            raise ValueError("source.environment: required for multi-turn rollouts")
        # Paused while the service is down, as a reward service pauses the pipeline; a call past its deadline
        # is not retried (the service already kills environment code past its own call timeout).
        retry = Retry(config.retry_backoff_seconds, max(config.retry_backoff_seconds, 5.0), env.retry_seconds,
                      codes=TRANSIENT - {grpc.StatusCode.DEADLINE_EXCEEDED})
        self.environment = EnvironmentClient(env.address, client, env.timeout_seconds, retry, name="environment")
        self.turns = MultiTurnDriver(env, renderer, self.environment)

    async def _groups(self, endpoint: Endpoint, rows: list[PromptRow]) -> AsyncIterator[Group | Dropped]:
        max_model_len = (await endpoint.client.info(timeout=5.0)).max_model_len or None   # 0: not said
        async for done in self.turns.rollouts(rows, endpoint.client, self._sampling(),
                                              self.config.generate_timeout_seconds, max_model_len):
            yield done.group if done.group is not None else Dropped(done.row.prompt_id, "environment_error", done.error)

    async def close(self) -> None:
        await self.environment.close()
