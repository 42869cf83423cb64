"""Waste: prompts issued / prompts trained at max_staleness 0, 1 and 2, and what was still in flight at the end.

    python -m bench.waste [--steps 12] [--staleness 0 1 2] [--workdir /tmp/rlfleet-bench] [--quick]

One `rlfleet up` run per max_staleness on the warm-started tiny model (the demo's settings
otherwise), read back from RUN_DIR/pipeline_accounting.json: every prompt the pipeline issued ended
as trained, as dropped with a reason (`run_ended`: still in flight when training stopped), or was
generated again because it came back too stale (`requeued_stale`). Target: issued / trained <= 1.05
at every max_staleness, with at most one batch in flight at the end. `python -m bench` reads the
overlap benchmark's runs instead of training again.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from bench.common import UpRun, markdown_table, run_up, warm_model

TARGET = 1.05


@dataclass(frozen=True)
class Waste:
    max_staleness: int
    issued: int
    trained: int
    requeued_stale: int
    in_flight_at_end: int
    other_dropped: int
    generate_calls: int
    batch: int

    @property
    def ratio(self) -> float:
        return self.issued / max(self.trained, 1)

    @property
    def met(self) -> bool:
        return self.ratio <= TARGET and self.in_flight_at_end <= self.batch


def read(run_dir: Path, max_staleness: int) -> Waste:
    import tomllib

    accounting = json.loads((run_dir / "pipeline_accounting.json").read_text())
    dropped = dict(accounting["dropped"])
    source = tomllib.loads((run_dir / "cluster.toml").read_text())["learner"]["source"]
    ended = dropped.pop("run_ended", 0)
    return Waste(max_staleness, accounting["issued"], accounting["trained"], accounting["requeued_stale"], ended,
                 sum(dropped.values()), accounting["generate_calls"], source["prompts_per_batch"])


def report(rows: list[Waste], steps: int) -> str:
    table = markdown_table(
        ["max_staleness", "issued", "trained", "requeued stale", "in flight at end", "other drops",
         "Generate calls", "**issued / trained**", "target met"],
        [[str(w.max_staleness), str(w.issued), str(w.trained), str(w.requeued_stale), str(w.in_flight_at_end),
          str(w.other_dropped), str(w.generate_calls), f"**{w.ratio:.3f}**", "yes" if w.met else "**no**"]
         for w in rows])
    return (f"{steps} steps of 8 prompts x 8 completions per run. Target: issued / trained <= {TARGET} and at most "
            f"one batch in flight at the end, at every max_staleness.\n\n{table}\n\n"
            f"_load average {os.getloadavg()[0]:.1f} at the end_\n")


def run(workdir: Path, steps: int, staleness: list[int], dirs: dict[int, Path] | None = None) -> str:
    """Reads finished runs from `dirs` (max_staleness -> run dir) or trains one per max_staleness."""
    rows = []
    for s in staleness:
        run_dir = (dirs or {}).get(s)
        if run_dir is None:
            run_dir = workdir / "waste" / f"staleness-{s}"
            run_up(UpRun(model=str(warm_model(workdir)), run_dir=run_dir, steps=steps, max_staleness=s,
                         base_port=51900))
        rows.append(read(run_dir, s))
    return report(rows, steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.waste", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 steps")
    args = parser.parse_args(argv)
    print(run(args.workdir, 5 if args.quick else args.steps, args.staleness))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
