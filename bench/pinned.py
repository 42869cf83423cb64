"""Separate hardware, simulated: the generator pinned to CPU 0, every other service to CPU 1; is the generator kept busy?

    python -m bench.pinned [--steps 16] [--warmup 3] [--staleness 1 2] [--workdir /tmp/rlfleet-bench] [--quick]

For each max_staleness, one `rlfleet up --cpus generator=0 learner=1 reward=1 reference=1` run on
the warm-started tiny model (the demo's settings otherwise; one thread per service): one core per
side, as if the generator and the learner were on two machines. Over the steps after `--warmup`:

- CPU busy: the generator's process tree's CPU-seconds (the service and vLLM's EngineCore, from
  /proc) / wall. On a core of its own, 1.0 means the generator never waited for the learner.
- in flight: the pipeline's time with a Generate call open on the generator (pipeline_accounting's
  generator_busy_seconds, whole training phase) / that phase's wall.

Target: generator busy / wall >= 0.9 at max_staleness >= 1 (CPU busy is the measure the verdict uses).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from bench.common import UpRun, markdown_table, overlap, read_learner_steps, run_up, warm_model
from bench.cpu_report import RunWatch, phase_table

TARGET = 0.9
PLACEMENT = ("--cpus", "generator=0", "learner=1", "reward=1", "reference=1")


def measure(model: Path, run_dir: Path, max_staleness: int, steps: int, warmup: int, base_port: int
            ) -> tuple[list[str], str]:
    """One pinned run: its table row and its CPU-by-phase table."""
    watch: RunWatch | None = None

    def make_watch(pid: int) -> RunWatch:
        nonlocal watch
        watch = RunWatch(pid, run_dir, base_port, first_step=warmup)
        return watch

    run_up(UpRun(model=str(model), run_dir=run_dir, steps=steps, max_staleness=max_staleness, base_port=base_port,
                 extra=PLACEMENT), watch=make_watch)
    records = read_learner_steps(run_dir)
    start, end = records[warmup].end_time, records[-1].end_time
    cpu_busy = watch.generator_cpu(start, end) / (end - start)
    accounting = json.loads((run_dir / "pipeline_accounting.json").read_text())
    phase = overlap(records, accounting["generator_busy_seconds"])
    in_flight = phase.generator_busy_seconds / phase.wall_seconds
    learner = phase.learner_busy_seconds / phase.wall_seconds
    row = [str(max_staleness), f"**{cpu_busy:.2f}**", f"{in_flight:.2f}", f"{learner:.2f}",
           f"{(end - start) / (len(records) - warmup - 1):.2f}",
           "yes" if cpu_busy >= TARGET or max_staleness == 0 else "**no**"]
    return row, phase_table(*watch.window())


def run(workdir: Path, steps: int, warmup: int, staleness: list[int]) -> str:
    if len(os.sched_getaffinity(0)) < 2:
        return "_skipped: needs two CPUs_\n"
    model = warm_model(workdir)
    rows, phases = [], []
    for s in staleness:
        row, table = measure(model, workdir / "pinned" / f"staleness-{s}", s, steps, warmup, 52000 + 100 * s)
        rows.append(row)
        phases.append(f"max_staleness {s}: {table}")
    table = markdown_table(["max_staleness", "generator CPU busy / wall", "Generate in flight / wall",
                            "learner busy / wall", "s / step", "target met"], rows)
    return (f"`rlfleet up {' '.join(PLACEMENT)}`, {steps} steps (first {warmup} left out). Target: generator busy / "
            f"wall >= {TARGET} at max_staleness >= 1.\n\n{table}\n\n_load average {os.getloadavg()[0]:.1f} at the "
            f"end_\n\n" + "\n".join(phases))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pinned", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--staleness", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 6 steps, 1 warm-up, max_staleness 1")
    args = parser.parse_args(argv)
    if args.quick:
        print(run(args.workdir, 6, 1, [1]))
    else:
        print(run(args.workdir, args.steps, args.warmup, args.staleness))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
