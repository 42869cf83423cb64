"""Overlap efficiency of `rlfleet up`: max_staleness 0 vs 1 vs 2, eta and speed-up over strictly synchronous.

    python -m bench.overlap [--steps 10] [--warmup 2] [--staleness 0 1 2] [--workdir /tmp/rlfleet-bench] [--quick]

For each max_staleness, one `rlfleet up` run on the warm-started tiny model (same seed, same
settings otherwise). eta = max(generator busy, learner busy) / wall over the training phase, where
generator busy comes from the pipeline's RUN_DIR/pipeline_accounting.json (time with a Generate call
in flight), learner busy is each step's time minus its wait for rollouts (metrics.jsonl), and wall
runs from the first step's start to the last step's end. Speed-up is the median step time of the
synchronous run (max_staleness 0) over this run's, warm-up steps excluded.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from bench.common import Overlap, Throughput, UpRun, markdown_table, overlap, read_learner_steps, run_up, throughput


@dataclass(frozen=True)
class OverlapRun:
    max_staleness: int
    overlap: Overlap
    throughput: Throughput
    groups_issued: int      # prompt groups sent to generators, re-issues included
    groups_trained: int


def measure(model: Path, run_dir: Path, max_staleness: int, steps: int, warmup: int) -> OverlapRun:
    """One `rlfleet up` run at `max_staleness`, read back."""
    run_up(UpRun(model=str(model), run_dir=run_dir, steps=steps, max_staleness=max_staleness))
    return read_run(run_dir, max_staleness, warmup)


def read_run(run_dir: Path, max_staleness: int, warmup: int) -> OverlapRun:
    """A finished run's numbers. eta after warm-up only would need per-step generator busy time, which
    the pipeline reports as a total, so eta covers the whole training phase."""
    records = read_learner_steps(run_dir)
    steps = len(records)
    accounting = json.loads((run_dir / "pipeline_accounting.json").read_text())
    # `issued` counts every generation of a group: one that came back too stale is issued again.
    issued = accounting["issued"]
    return OverlapRun(max_staleness, overlap(records, accounting["generator_busy_seconds"]),
                      throughput(records, warmup, max(1, (steps - warmup) // 2)), issued, accounting["trained"])


def report(runs: list[OverlapRun], steps: int, warmup: int) -> str:
    sync = next((r for r in runs if r.max_staleness == 0), None)
    bound = ""
    if sync is not None:
        # Perfect overlap of the synchronous run's two sides: (G + T) / max(G, T), at most 2x when G == T.
        g, t = sync.overlap.generator_busy_seconds, sync.overlap.learner_busy_seconds
        bound = (f" Synchronous run: generator busy {g:.0f} s vs learner busy {t:.0f} s, so perfect overlap "
                 f"could give at most {(g + t) / max(g, t):.2f}x.")
    rows = []
    for r in runs:
        speedup = (f"{sync.throughput.median_step_seconds / r.throughput.median_step_seconds:.2f}x"
                   if sync is not None else "n/a")
        rows.append([str(r.max_staleness), f"{r.overlap.generator_busy_seconds:.1f}",
                     f"{r.overlap.learner_busy_seconds:.1f}", f"{r.overlap.wall_seconds:.1f}",
                     f"**{r.overlap.eta:.2f}**", f"{r.throughput.median_step_seconds:.2f}", f"**{speedup}**",
                     f"{r.throughput.reward_mean:.3f}", f"{r.groups_issued} / {r.groups_trained}"])
    table = markdown_table(["max_staleness", "generator busy s", "learner busy s", "wall s", "eta",
                            "median step s", "speed-up vs sync", "reward (last steps)",
                            "groups generated / trained"], rows)
    return (f"{steps} steps each, first {warmup} excluded from step times (eta covers all steps). "
            f"Target: eta >= 0.85 and >= 1.6x over synchronous at staleness 1 or 2.{bound}\n\n{table}\n")


def run(workdir: Path, steps: int, warmup: int, staleness: list[int]) -> tuple[str, dict[int, Path]]:
    """Runs every staleness; returns the report and each run's directory (overhead.py reads one)."""
    from bench.common import warm_model

    model = warm_model(workdir)
    dirs = {s: workdir / "overlap" / f"staleness{s}" for s in staleness}
    runs = [measure(model, dirs[s], s, steps, warmup) for s in staleness]
    return report(runs, steps, warmup), dirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overlap", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 steps, 1 warm-up step, staleness 0 and 1")
    args = parser.parse_args(argv)
    steps, warmup, staleness = (4, 1, [0, 1]) if args.quick else (args.steps, args.warmup, args.staleness)
    print(run(args.workdir, steps, warmup, staleness)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
