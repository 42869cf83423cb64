"""Shared pieces of the rlfleet benchmarks: one `rlfleet up` run as a subprocess, its step records, tables.

Absolute times on a shared 2-core machine are noise, so every benchmark reports ratios taken in one
run; these helpers turn a run directory into the numbers the tables show.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false",
             "TORCH_EXTENSIONS_DIR": str(REPO / ".venv" / "torch_extensions")}


@dataclass(frozen=True)
class StepRecord:
    """One training step as the learner logged it (RUN_DIR/metrics.jsonl) or as the TRL callback saw it."""

    end_time: float           # wall-clock time the step ended (seconds since the epoch)
    step_seconds: float       # learner's own measure: wait for rollouts + train + push
    wait_seconds: float       # part of step_seconds spent waiting for rollouts
    samples: int              # completions trained on
    completion_tokens: float  # sum of completion lengths of those samples
    reward_mean: float
    cpu_seconds: float | None = None  # CPU seconds the whole system had used when the step ended (None: unknown)


@dataclass(frozen=True)
class Throughput:
    """Steady-state numbers of one run, warm-up steps excluded."""

    steps: int                  # steps measured (after warm-up)
    median_step_seconds: float  # median wall time between consecutive step ends
    tokens_per_second: float    # completion tokens of measured steps / their wall time
    samples_per_second: float
    reward_mean: float          # mean reward of the last `reward_steps` steps
    samples_seen: int           # samples of all steps, warm-up included
    tokens_per_cpu_second: float | None = None  # completion tokens of measured steps / CPU seconds they used


def read_learner_steps(run_dir: Path) -> list[StepRecord]:
    """The learner's step records of an `rlfleet up` run directory (with CPU seconds when run_up sampled them)."""
    samples_path = run_dir / "cpu_samples.json"
    cpu = json.loads(samples_path.read_text()) if samples_path.exists() else None
    records = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        samples = int(r["samples"])
        records.append(StepRecord(r["time"], r["step_seconds"], r["wait_seconds"], samples,
                                  r["response_length_mean"] * samples, r["reward_mean"],
                                  cpu_at(cpu, r["time"]) if cpu else None))
    return records


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and every live descendant (from /proc)."""
    parents, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process exited while we looked
            continue
        pid = int(entry.name)
        parents[pid], cpu[pid] = int(fields[1]), (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid, seconds in cpu.items():
        node = pid
        while node in parents and node != root:
            node = parents[node]
        total += seconds if node == root else 0.0
    return total


def cpu_at(samples: list[list[float]], when: float) -> float:
    """CPU seconds at wall time `when`, interpolated between [time, cpu] samples sorted by time."""
    for (t0, c0), (t1, c1) in zip(samples, samples[1:], strict=False):
        if t0 <= when <= t1:
            return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1
    return samples[0][1] if when < samples[0][0] else samples[-1][1]


class CpuSampler:
    """Samples the CPU seconds of a process tree every `interval` seconds in a thread, as [time, cpu] pairs.

    The services are children of `rlfleet up`; a service that has exited no longer counts, which is
    why only windows while every service runs (the training steps) are read from the samples.
    """

    def __init__(self, root: int, interval: float = 0.5):
        self.root, self.interval = root, interval
        self.samples: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append([time.time(), tree_cpu_seconds(self.root)])


def throughput(records: list[StepRecord], warmup: int, reward_steps: int) -> Throughput:
    """Steady state after `warmup` steps: a step's wall time is the gap between its end and the previous end.

    Using gaps between step ends (rather than each system's own step timer) charges everything a
    system does between updates, generation included, whether it overlaps training or not.
    """
    if len(records) < warmup + 2:
        raise ValueError(f"need at least warmup + 2 = {warmup + 2} steps, got {len(records)}")
    measured = records[warmup + 1:]
    gaps = [b.end_time - a.end_time for a, b in zip(records[warmup:], measured, strict=False)]
    wall = sum(gaps)
    tokens = sum(r.completion_tokens for r in measured)
    samples = sum(r.samples for r in measured)
    last = records[-reward_steps:]
    first_cpu, last_cpu = records[warmup].cpu_seconds, records[-1].cpu_seconds
    per_cpu = tokens / (last_cpu - first_cpu) if first_cpu is not None and last_cpu is not None else None
    return Throughput(len(measured), statistics.median(gaps), tokens / wall, samples / wall,
                      sum(r.reward_mean for r in last) / len(last), sum(r.samples for r in records), per_cpu)


@dataclass(frozen=True)
class Overlap:
    """How well generation and training overlap over a run's training phase."""

    wall_seconds: float
    generator_busy_seconds: float
    learner_busy_seconds: float

    @property
    def eta(self) -> float:
        """max(generation busy, training busy) / wall: 1.0 when the slower side never waits."""
        return max(self.generator_busy_seconds, self.learner_busy_seconds) / self.wall_seconds


def overlap(records: list[StepRecord], generator_busy_seconds: float) -> Overlap:
    """Wall time runs from the first step's start (end - step_seconds) to the last step's end.

    The learner is busy for each step's step_seconds minus its wait for rollouts.
    """
    start = records[0].end_time - records[0].step_seconds
    wall = records[-1].end_time - start
    learner = sum(r.step_seconds - r.wait_seconds for r in records)
    return Overlap(wall, generator_busy_seconds, learner)


def markdown_table(headers: list[str], rows: list[list[str]]) -> str:
    """A GitHub markdown table; cells are already formatted strings."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def replace_section(text: str, name: str, body: str) -> str:
    """Replaces what lies between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`, or appends the section."""
    begin, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{begin}\n{body.rstrip()}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        return head + block + rest.split(end, 1)[1]
    return text.rstrip() + "\n\n" + block + "\n"


@dataclass(frozen=True)
class UpRun:
    """Settings of one `rlfleet up` run that the benchmarks vary; the rest is shared with the TRL side."""

    model: str
    run_dir: Path
    steps: int
    max_staleness: int = 1
    group_size: int = 8
    prompts_per_batch: int = 8
    max_tokens: int = 12
    lr: float = 2e-3
    lora_rank: int = 16
    lora_alpha: float = 32.0
    kl_coef: float = 0.005
    eval_rows: int = 8       # a short evaluation warms vLLM up before the learner starts
    base_port: int = 51700
    seed: int = 0
    extra: tuple[str, ...] = ()   # more `rlfleet up` flags (--cpus, --dataset, ...)

    def argv(self) -> list[str]:
        return ["--model", self.model, "--warmstart-steps", "0", "--steps", str(self.steps),
                "--max-staleness", str(self.max_staleness), "--group-size", str(self.group_size),
                "--prompts-per-batch", str(self.prompts_per_batch), "--max-tokens", str(self.max_tokens),
                "--lr", str(self.lr), "--lora-rank", str(self.lora_rank),
                "--lora-alpha", str(self.lora_alpha), "--kl-coef", str(self.kl_coef),
                "--eval-rows", str(self.eval_rows), "--base-port", str(self.base_port), "--seed", str(self.seed),
                "--run-dir", str(self.run_dir), "--no-plot", "--progress", "none", *self.extra]


def run_up(run: UpRun, timeout: float = 900.0, watch=None) -> float:
    """Runs `rlfleet up` to completion (log in RUN_DIR/up.log); returns its wall seconds, raises on failure.

    `watch(pid)`, if given, returns a context manager held while the run lasts (bench.cpu_report.RunWatch)."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    log_path = run.run_dir / "up.log"
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "rlfleet.cli", "up", *run.argv()], stdout=log,
                                   stderr=subprocess.STDOUT, env={**os.environ, **BENCH_ENV}, cwd=REPO)
        with CpuSampler(process.pid) as sampler, (watch(process.pid) if watch else contextlib.nullcontext()):
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGINT)  # `rlfleet up` stops its services on Ctrl-C
                process.wait(60)
                raise
    (run.run_dir / "cpu_samples.json").write_text(json.dumps(sampler.samples))
    if code != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"rlfleet up exited with {code}; end of {log_path}:\n{tail}")
    return time.perf_counter() - start


def warm_model(workdir: Path, warmstart_steps: int = 130, seed: int = 0, hidden_size: int = 256, layers: int = 4,
               task: str = "reverse", batch_size: int = 32) -> Path:
    """The warm-started model both systems train (built once per workdir and size, like `rlfleet up` does)."""
    default = (hidden_size, layers, task) == (256, 4, "reverse")
    name = "" if default else f"-h{hidden_size}-l{layers}-{task}-{warmstart_steps}"
    out = workdir / "models" / f"warm{name}"
    if (out / "config.json").exists():
        return out
    from launcher.tiny_model import TinyModelSpec, build_tiny_model
    from launcher.warmstart import warm_start
    from learner.pipeline.dataset import builtin_rows

    # The same spec as `rlfleet tiny-model --hidden-size H --layers L` (768 x 12: 78 M parameters).
    spec = TinyModelSpec(seed=seed) if default else TinyModelSpec(
        hidden_size=hidden_size, num_layers=layers, intermediate_size=hidden_size * 8 // 3 // 8 * 8, seed=seed)
    base = build_tiny_model(workdir / "models" / f"tiny{name}", spec)
    train_rows, _ = builtin_rows(task, seed=1234 + seed)
    return warm_start(base, out, train_rows, warmstart_steps, seed=seed, batch_size=batch_size).path


def machine() -> str:
    """One line naming the machine: CPU model, cores visible, memory."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return f"{model}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, load average {load:.1f} at start"
