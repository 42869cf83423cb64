"""Rollout pipeline over real gRPC: resubmission when a generator dies mid-call, pause while rewards are down, staleness, accounting.

Also held-out evaluation of a chat-format dataset, which must send the messages as turns (it once
sent the repr of the message list as text). The reward service is the real one (the built-in
task's script in worker processes). The generators are scripted stand-ins for *another* service:
they answer instantly with chosen completions, record what they were sent, and can die
mid-stream, which a vLLM engine cannot be made to do on cue.
"""

from __future__ import annotations

import asyncio
import json
import logging

import grpc
import pytest

from learner.config import LearnerConfig
from learner.pipeline.config import PipelineConfig, RewardServiceConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.evaluate import evaluate
from learner.pipeline.source import PipelineSource
from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.server import start_server
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.server import GrpcServer
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc
from tasks import REWARD_SCRIPT
from tests.conftest import free_port


class ScriptedGenerator(generator_pb2_grpc.GeneratorServiceServicer):
    """Answers every prompt `reverse:abc` with n completions: the correct one first, then wrong ones."""

    def __init__(self, die_after_groups: int | None = None, call_seconds: float = 0.0):
        self.die_after_groups = die_after_groups
        self.call_seconds = call_seconds   # each call takes this long before its first group
        self.policy_version = 0
        self.calls = 0
        self.inflight = self.most_inflight = 0
        self.prompts: list[generator_pb2.Prompt] = []   # every prompt received, as sent
        self.samplings: list = []                       # every call's sampling settings, as sent

    async def GetInfo(self, request, context):
        return generator_pb2.GeneratorInfo(policy_version=self.policy_version)

    async def Generate(self, request, context):
        self.inflight += 1
        self.most_inflight = max(self.most_inflight, self.inflight)
        try:
            async for response in self._generate(request, context):
                yield response
        finally:
            self.inflight -= 1

    async def _generate(self, request, context):
        self.calls += 1
        self.prompts += request.prompts
        self.samplings.append(request.sampling)
        await asyncio.sleep(self.call_seconds)
        for i, prompt in enumerate(request.prompts):
            if self.die_after_groups is not None and i >= self.die_after_groups:
                self.die_after_groups = None  # dies once, then serves normally
                await context.abort(grpc.StatusCode.UNAVAILABLE, "scripted crash")
            if not prompt.messages:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"prompts[{i}]: no messages ({prompt.text!r})")
            word = prompt.messages[-1].content.split(":", 1)[1]
            texts = [word[::-1]] + [word] * (request.sampling.n - 1)
            completions = [common_pb2.Completion(token_ids=[ord(c) for c in t] + [2], logprobs=[-0.5] * (len(t) + 1),
                                                 finish_reason=common_pb2.FINISH_REASON_STOP, text=t) for t in texts]
            yield generator_pb2.GenerateResponse(prompt_index=i, prompt_id=prompt.prompt_id, prompt_ids=[1, 2, 3],
                                                 prompt_text=prompt.messages[-1].content, completions=completions,
                                                 policy_version=self.policy_version)


async def _generator(servicer) -> GrpcServer:
    server = GrpcServer(ServerConfig(host="127.0.0.1", port=0), name="scripted-generator")
    generator_pb2_grpc.add_GeneratorServiceServicer_to_server(servicer, server.grpc)
    await server.start(["rlfleet.v1.GeneratorService"])
    await server.set_ready()
    return server


def _reward_core() -> RewardCore:
    core = RewardCore(RewardConfig(script=REWARD_SCRIPT, reward=["accuracy:1.0", "similarity:0.5"], workers=1))
    core.start_workers()
    return core


def _pipeline(tmp_path, generators: list[str], reward_port: int, **overrides) -> PipelineSource:
    config = PipelineConfig(
        dataset="builtin:reverse", group_size=4, prompts_per_batch=4, prompts_per_request=2, max_inflight_requests=2,
        rewards=[RewardServiceConfig(address=f"127.0.0.1:{reward_port}", name="task")], retry_backoff_seconds=0.2,
        **overrides)
    return PipelineSource(config, generators, ClientConfig(timeout_seconds=10, max_attempts=1), tmp_path)


def test_generator_death_resubmits_and_every_prompt_is_accounted(tmp_path):
    core = _reward_core()

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        flaky, healthy = ScriptedGenerator(die_after_groups=1), ScriptedGenerator()
        servers = [await _generator(flaky), await _generator(healthy)]
        source = _pipeline(tmp_path, [f"127.0.0.1:{s.port}" for s in servers], reward.port, max_staleness=1)
        await source.start()
        batches = []
        for version in range(3):
            flaky.policy_version = healthy.policy_version = version  # the learner's push reached both
            source.set_policy_version(version)
            batches.append(await asyncio.wait_for(source.next_batch(), 30))
        await source.close()
        for server in [*servers, reward]:
            await server.stop(0)
        return batches, source.stats, flaky.calls + healthy.calls

    try:
        batches, stats, calls = asyncio.run(run())
    finally:
        core.close()
    assert [len(b.groups) for b in batches] == [4, 4, 4]
    for group in (g for b in batches for g in b.groups):
        # accuracy 1 + 0.5 * similarity 1 for the correct first sample; the others are wrong
        assert group.samples[0].reward == pytest.approx(1.5)
        assert group.samples[0].reward_components == {"accuracy": 1.0, "similarity": 1.0}
    assert stats.generator_failures == 1 and calls >= 3
    accounting = json.loads((tmp_path / "pipeline_accounting.json").read_text())
    assert accounting["issued"] == accounting["trained"] + sum(accounting["dropped"].values()) + accounting["requeued_stale"]
    assert accounting["trained"] == 12 and set(accounting["dropped"]) <= {"run_ended"}


async def _train(source: PipelineSource, generator: ScriptedGenerator, steps: int, push_seconds: float = 0.1,
                 push_every: int = 1, batch_seconds: float = 30):
    """Stands in for the learner's loop: take a batch, "train" 0.2 s, publish the version, push it (lands
    later) if the step is a multiple of `push_every` (learner.push.push_every_steps)."""

    async def push(version: int) -> None:
        await asyncio.sleep(push_seconds)
        generator.policy_version = version

    batches, pushes = [], []
    source.set_policy_version(0)
    for step in range(steps):
        batches.append(await asyncio.wait_for(source.next_batch(), batch_seconds))
        await asyncio.sleep(0.2)
        source.set_policy_version(step + 1)
        if (step + 1) % push_every == 0:
            pushes.append(asyncio.ensure_future(push(step + 1)))
    await asyncio.gather(*pushes)
    return batches


@pytest.mark.parametrize("max_staleness", [0, 1, 2])
def test_admission_generates_each_batch_once_within_the_bound(tmp_path, max_staleness):
    core = _reward_core()
    steps = 5

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        generator = ScriptedGenerator()
        server = await _generator(generator)
        config = PipelineConfig(dataset="builtin:reverse", group_size=4, prompts_per_batch=4,
                                max_staleness=max_staleness, retry_backoff_seconds=0.2,
                                rewards=[RewardServiceConfig(address=f"127.0.0.1:{reward.port}", name="task")])
        source = PipelineSource(config, [f"127.0.0.1:{server.port}"], ClientConfig(timeout_seconds=10), tmp_path,
                                max_steps=steps)
        await source.start()
        batches = await _train(source, generator, steps)
        outstanding = sum(source._outstanding.values())
        await source.close()
        await server.stop(0)
        await reward.stop(0)
        return batches, outstanding, source.stats, generator

    try:
        batches, outstanding, stats, generator = asyncio.run(run())
    finally:
        core.close()
    # batch k is issued once the learner is done with batch k - s - 1, at version max(k - s, 0), and
    # trained at version k: the lag is exactly min(k, s), never more
    assert [{k - g.policy_version for g in b.groups} for k, b in enumerate(batches)] == \
        [{min(k, max_staleness)} for k in range(steps)]
    # nothing regenerated, nothing left in flight: 5 batches x 4 prompts issued and trained
    assert (stats.issued, stats.trained, outstanding, sum(stats.dropped.values())) == (20, 20, 0, 0)
    # one Generate call per batch with all its prompts; Score calls take every group finished together
    assert stats.generate_calls == generator.calls == steps and len(generator.prompts) == 20
    assert stats.batches_issued == steps and stats.score_calls < 20


@pytest.mark.parametrize("in_order", [True, False])
def test_batches_generate_one_after_another(tmp_path, in_order):
    # At max_staleness 2 three batches may be out at once. Generated together they share the engine
    # and come back in a burst (bench.pinned: the generator busy 0.77 of the wall, the learner's steps
    # 2.2 s, 0.4 s, 0.4 s, 2.2 s, ...); in order, batch k is trained while k + 1 generates.
    core = _reward_core()

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        generator = ScriptedGenerator(call_seconds=0.3)
        server = await _generator(generator)
        config = PipelineConfig(dataset="builtin:reverse", group_size=4, prompts_per_batch=4, max_staleness=2,
                                generate_in_order=in_order, retry_backoff_seconds=0.2,
                                rewards=[RewardServiceConfig(address=f"127.0.0.1:{reward.port}", name="task")])
        source = PipelineSource(config, [f"127.0.0.1:{server.port}"], ClientConfig(timeout_seconds=10), tmp_path,
                                max_steps=5)
        await source.start()
        try:
            batches = await _train(source, generator, 5)
        finally:
            await source.close()
            await server.stop(0)
            await reward.stop(0)
        return batches, source.stats, generator

    try:
        batches, stats, generator = asyncio.run(run())
    finally:
        core.close()
    assert generator.most_inflight == (1 if in_order else 3)
    assert (stats.issued, stats.trained, stats.generate_calls) == (20, 20, 5)
    # both ways, within the bound: batch k is trained at version k and lags it by at most 2
    assert all(0 <= k - g.policy_version <= 2 for k, b in enumerate(batches) for g in b.groups)


@pytest.mark.parametrize(("max_staleness", "push_every"), [(0, 2), (1, 2), (1, 3)])
def test_admission_with_a_push_every_few_steps(tmp_path, max_staleness, push_every):
    # The learner publishes a version every step but pushes only every `push_every`-th: a batch issued
    # at an unpushed version used to wait for it, so with push_every > max_staleness + 1 the run hung.
    core = _reward_core()
    steps = 6

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        generator = ScriptedGenerator()
        server = await _generator(generator)
        config = PipelineConfig(dataset="builtin:reverse", group_size=4, prompts_per_batch=4,
                                max_staleness=max_staleness, retry_backoff_seconds=0.2, version_wait_seconds=2,
                                rewards=[RewardServiceConfig(address=f"127.0.0.1:{reward.port}", name="task")])
        source = PipelineSource(config, [f"127.0.0.1:{server.port}"], ClientConfig(timeout_seconds=10), tmp_path,
                                max_steps=steps, push_every_steps=push_every)
        await source.start()
        try:
            return await _train(source, generator, steps, push_every=push_every, batch_seconds=10), source.stats
        finally:
            await source.close()
            await server.stop(0)
            await reward.stop(0)

    try:
        batches, stats = asyncio.run(run())
    finally:
        core.close()
    # batch k is issued at learner version max(k - s, 0), when the newest pushed version is that
    # rounded down to a multiple of N = push_every; e.g. s 0, N 2: lags 0 1 0 1 0 1. At most s + N - 1
    # steps, i.e. at most s pushes behind.
    pushed = [push_every * (max(k - max_staleness, 0) // push_every) for k in range(steps)]
    assert [{g.policy_version for g in b.groups} for b in batches] == [{v} for v in pushed]
    assert max(k - v for k, v in enumerate(pushed)) == max_staleness + push_every - 1
    assert (stats.issued, stats.trained, sum(stats.dropped.values())) == (4 * steps, 4 * steps, 0)


def test_the_learner_gives_the_pipeline_its_push_interval(tmp_path):
    from learner.pipeline import make_pipeline_source

    config = LearnerConfig.model_validate(dict(
        model="m", run_dir=tmp_path, generators=["127.0.0.1:1"], push={"push_every_steps": 3},
        source={"type": "pipeline", "max_staleness": 1}))

    async def run():
        source = make_pipeline_source(config)
        await source.close()
        return source.push_every_steps, source.max_lag

    assert asyncio.run(run()) == (3, 1 + 3 - 1)


def test_on_policy_waits_for_the_generator_to_serve_the_update(tmp_path):
    core = _reward_core()

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        generator = ScriptedGenerator()
        server = await _generator(generator)
        source = _pipeline(tmp_path, [f"127.0.0.1:{server.port}"], reward.port, max_staleness=0)
        await source.start()
        source.set_policy_version(0)
        first = await asyncio.wait_for(source.next_batch(), 30)
        await asyncio.sleep(0.5)
        calls_while_training = generator.calls  # max_staleness 0: nothing new starts before version 1
        generator.policy_version = 0            # the generator lags: it still serves version 0
        source.set_policy_version(1)
        await asyncio.sleep(1.0)
        calls_before_push = generator.calls     # the pipeline waits for the generator to serve version 1
        generator.policy_version = 1            # the push lands
        second = await asyncio.wait_for(source.next_batch(), 30)
        await source.close()
        await server.stop(0)
        await reward.stop(0)
        return first, calls_while_training, calls_before_push, second, source.stats

    try:
        first, calls_while_training, calls_before_push, second, stats = asyncio.run(run())
    finally:
        core.close()
    assert calls_while_training == 2  # 4 prompts, 2 per request: exactly the first batch
    assert calls_before_push == 2     # nothing generated on the old adapter while the push was in flight
    assert {g.policy_version for g in first.groups} == {0}
    assert {g.policy_version for g in second.groups} == {1}
    assert stats.dropped["stale_requeued"] == 0 and stats.issued == 8


def test_reward_service_down_pauses_then_resumes(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rlfleet.clients.retry")
    core = _reward_core()
    reward_port = free_port()

    async def run():
        server = await _generator(ScriptedGenerator())
        source = _pipeline(tmp_path, [f"127.0.0.1:{server.port}"], reward_port, max_staleness=1)
        await source.start()
        source.set_policy_version(0)
        pending = asyncio.ensure_future(source.next_batch())
        await asyncio.sleep(1.5)
        paused = not pending.done()
        reward = await start_server(ServerConfig(host="127.0.0.1", port=reward_port), core)
        batch = await asyncio.wait_for(pending, 30)
        await source.close()
        await server.stop(0)
        await reward.stop(0)
        return paused, batch

    try:
        paused, batch = asyncio.run(run())
    finally:
        core.close()
    assert paused and len(batch.groups) == 4
    assert "reward service task is unavailable (UNAVAILABLE" in caplog.text and "answered again after" in caplog.text


def _evaluate_on_scripted_cluster(rows: list[PromptRow], samples: int = 0, seed: int = 0, **source):
    """`evaluate` against a ScriptedGenerator and a real reward server on loopback; (result, the generator)."""
    core = _reward_core()

    async def run():
        reward = await start_server(ServerConfig(host="127.0.0.1", port=0), core)
        generator = ScriptedGenerator()
        server = await _generator(generator)
        config = LearnerConfig(
            model="unused", generators=[f"127.0.0.1:{server.port}"], client=ClientConfig(timeout_seconds=10),
            source=PipelineConfig(rewards=[RewardServiceConfig(address=f"127.0.0.1:{reward.port}", name="task")],
                                  **source))
        result = await evaluate(rows, config, samples=samples, seed=seed)
        await server.stop(0)
        await reward.stop(0)
        return result, generator

    try:
        return asyncio.run(run())
    finally:
        core.close()


def test_heldout_evaluation_of_a_chat_dataset_sends_the_messages():
    chat = [{"role": "system", "content": "answer with the letters only"}, {"role": "user", "content": "reverse:abc"}]
    rows = [PromptRow("chat-0", chat, "cba", {"answer": "cba"}),
            PromptRow("text-1", "reverse:xyz", "zyx", {"answer": "zyx"})]
    result, generator = _evaluate_on_scripted_cluster(rows)
    by_id = {p.prompt_id: p for p in generator.prompts}
    # the chat row goes as its two turns, never as the text of its Python repr
    assert [(m.role, m.content) for m in by_id["chat-0"].messages] == [(m["role"], m["content"]) for m in chat]
    assert by_id["chat-0"].text == ""
    # a text row is one user turn (chat_template is on by default), as in training
    assert [(m.role, m.content) for m in by_id["text-1"].messages] == [("user", "reverse:xyz")]
    # greedy (n = 1) takes the stand-in's first, correct completion: accuracy 1 + 0.5 * similarity 1 = 1.5 each
    assert result.rows == 2 and result.mean_reward == pytest.approx(1.5)
    assert result.components == {"accuracy": 1.0, "similarity": 1.0}


def test_sampled_heldout_evaluation_averages_every_completion():
    rows = [PromptRow("a", "reverse:abc", "cba", {"answer": "cba"}), PromptRow("x", "reverse:xyz", "zyx", {"answer": "zyx"})]
    result, generator = _evaluate_on_scripted_cluster(rows, samples=4, seed=5, temperature=0.7, top_p=0.9)
    samplings = generator.samplings
    # drawn as training draws: n = 4 at the source's temperature and top_p, seeded
    assert [(s.n, round(s.temperature, 6), round(s.top_p, 6), s.seed) for s in samplings] == [(4, 0.7, 0.9, 5)]
    # per row: the correct completion (1 + 0.5 * 1 = 1.5) and 3 copies of the word itself, which agrees with
    # its reversal in the middle letter only (0 + 0.5 * 1/3); mean (1.5 + 3 * 0.5 / 3) / 4 = 0.5
    assert result.rows == 2 and result.mean_reward == pytest.approx(0.5)
    assert result.components == pytest.approx({"accuracy": 0.25, "similarity": 0.5})
