"""Loop efficiency: trained completion tokens per generator CPU-second inside `rlfleet up`, over the same generator alone.

    python -m bench.loop_efficiency [--steps 20] [--warmup 4] [--calls 12] [--workdir /tmp/rlfleet-bench] [--quick]

In the loop: one `rlfleet up` run on the warm-started tiny model with the demo's settings (8
prompts x 8 completions, at most 12 new tokens, temperature 1, max_staleness 1). Over the steps
after `--warmup`, the completion tokens the learner trained on are divided by the CPU-seconds of the
generator's process tree (the service and vLLM's EngineCore, sampled from /proc) over the same
steps: every CPU-second the generator burns counts, useful or not (rollouts thrown away, idle
spinning, small calls' overhead).

Alone: the same model and generator config (RUN_DIR/cluster.toml's [generator] table, the same
threads and environment), serving the run's final adapter, fed back-to-back Generate calls by two
concurrent callers with the same sampling settings and a batch of the training prompts per call:
completion tokens per CPU-second of its process tree. That is what the generator can do; the ratio
says how much of it the loop turns into training. Target: >= 0.8.

The run also prints where every service's CPU went per step (rlfleet_cpu_seconds_total by phase).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import BENCH_ENV, UpRun, read_learner_steps, run_up, warm_model
from bench.cpu_report import RunWatch, phase_table

TARGET = 0.8


@dataclass(frozen=True)
class Rate:
    tokens: float
    cpu_seconds: float
    wall_seconds: float

    @property
    def per_cpu(self) -> float:
        return self.tokens / max(self.cpu_seconds, 1e-9)


def in_loop(model: Path, run_dir: Path, steps: int, warmup: int, base_port: int) -> tuple[Rate, str]:
    """The loop's rate over the steps after `warmup`, and the CPU-by-phase table of those steps."""
    watch = None

    def make_watch(pid: int) -> RunWatch:
        nonlocal watch
        watch = RunWatch(pid, run_dir, base_port, first_step=warmup)
        return watch

    run_up(UpRun(model=str(model), run_dir=run_dir, steps=steps, base_port=base_port), watch=make_watch)
    records = read_learner_steps(run_dir)
    start, end = records[warmup].end_time, records[-1].end_time
    tokens = sum(r.completion_tokens for r in records[warmup + 1:])
    first, last, spent = watch.window()
    step = (end - start) / max(len(records) - warmup - 1, 1)
    return Rate(tokens, watch.generator_cpu(start, end), end - start), phase_table(first, last, spent, step)


async def _feed(address: str, prompts: list, sampling, calls: int, callers: int) -> tuple[float, float]:
    """(completion tokens, wall seconds) of `calls` back-to-back Generate calls of 8 prompts per caller."""
    from rlfleet.clients import GeneratorClient
    from rlfleet.config import ClientConfig

    async with GeneratorClient(address, ClientConfig(timeout_seconds=300)) as client:
        async def caller(index: int, count: int) -> int:
            tokens = 0
            for call in range(count):
                chunk = prompts[(index * count + call) * 8 % len(prompts):][:8] or prompts[:8]
                async for group in client.generate(chunk, sampling):
                    tokens += sum(len(s.token_ids) for s in group.samples)
            return tokens

        start = time.perf_counter()
        counts = await asyncio.gather(*(caller(i, calls) for i in range(callers)))
        return float(sum(counts)), time.perf_counter() - start


def alone(run_dir: Path, calls: int, callers: int = 2) -> Rate:
    """The generator of `run_dir`'s config, serving its final adapter, fed back-to-back."""
    from launcher.cluster import LocalCluster, Service
    from learner.config import LearnerConfig
    from learner.pipeline.dataset import load_rows
    from rlfleet.adapters import adapter_from_dir, base_model_id
    from rlfleet.clients import GeneratorClient
    from rlfleet.config import load_config
    from rlfleet.cpu import tree_seconds
    from rlfleet.generation import PromptInput, Sampling
    from tests.conftest import free_port

    toml = run_dir / "cluster.toml"
    learner = load_config(LearnerConfig, ["--config", str(toml)], environ={})
    source = learner.source
    rows, _ = load_rows(source.dataset, source.prompt_column, source.answer_column, source.eval_split_fraction,
                        source.seed)
    prompts = [PromptInput.from_dataset(r.prompt_id, r.prompt, source.chat_template) for r in rows[:400]]
    sampling = Sampling(n=source.group_size, max_tokens=source.max_tokens, temperature=source.temperature,
                        top_p=source.top_p, seed=source.seed)
    cluster = LocalCluster(run_dir / "alone")
    port = free_port()
    service = cluster.start(Service("generator-alone", "generator", ["--config", str(toml)], port, free_port(),
                                    threads=2, env={"VLLM_CPU_KVCACHE_SPACE": "1", **BENCH_ENV}))
    try:
        cluster.wait_healthy([service], 600)
        payload = adapter_from_dir(run_dir / "adapter", 1, base_model_id(learner.model))

        async def load() -> None:
            async with GeneratorClient(service.address) as client:
                await client.load_adapter(payload, chunk_bytes=1 << 20, timeout=120)

        asyncio.run(load())
        asyncio.run(_feed(service.address, prompts[200:], sampling, 2, callers))  # warm-up, not measured
        cpu_before = tree_seconds(service.process.pid)
        tokens, wall = asyncio.run(_feed(service.address, prompts, sampling, calls, callers))
        return Rate(tokens, tree_seconds(service.process.pid) - cpu_before, wall)
    finally:
        cluster.stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loop_efficiency", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps of the `rlfleet up` run")
    parser.add_argument("--warmup", type=int, default=4, help="first steps left out")
    parser.add_argument("--calls", type=int, default=12, help="measured Generate calls per caller, generator alone")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--base-port", type=int, default=51800)
    parser.add_argument("--quick", action="store_true", help="smoke run: 8 steps, 2 warm-up, 4 calls")
    args = parser.parse_args(argv)
    steps, warmup, calls = (8, 2, 4) if args.quick else (args.steps, args.warmup, args.calls)
    print(run(args.workdir, steps, warmup, calls, args.base_port))
    return 0


def run(workdir: Path, steps: int, warmup: int, calls: int, base_port: int = 51800) -> str:
    model = warm_model(workdir)
    run_dir = workdir / "loop_efficiency" / time.strftime("%H%M%S")
    loop, phases = in_loop(model, run_dir, steps, warmup, base_port)
    solo = alone(run_dir, calls)
    ratio = loop.per_cpu / solo.per_cpu
    load = os.getloadavg()[0]
    return (f"Generator CPU-s: in the loop {loop.cpu_seconds:.1f} for {loop.tokens:.0f} trained completion tokens "
            f"over {steps - warmup - 1} steps ({loop.wall_seconds:.1f} s); alone {solo.cpu_seconds:.1f} for "
            f"{solo.tokens:.0f} tokens ({solo.wall_seconds:.1f} s, 2 callers x {calls} calls of 8 prompts).\n\n"
            f"| | completion tokens / generator CPU-s |\n| --- | --- |\n"
            f"| in the loop (trained) | {loop.per_cpu:.0f} |\n| alone, back-to-back | {solo.per_cpu:.0f} |\n"
            f"| **ratio** | **{ratio:.2f}** (target >= {TARGET}: {'met' if ratio >= TARGET else 'missed'}) |\n\n"
            f"_load average {load:.1f} at the end_\n\n{phases}")


if __name__ == "__main__":
    raise SystemExit(main())
