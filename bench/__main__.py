"""Runs every rlfleet benchmark and writes the tables into bench/README.md: `python -m bench [--quick]`.

Order: overlap (max_staleness 0, 1, 2), waste (issued / trained of those same runs), the TRL
head-to-head at the tiny configuration over 3 seeds (its first rlfleet run is the overlap run), the
gRPC overhead of the synchronous run's steps (the shortest), then loop efficiency, the pinned
(separate hardware) simulation, the compute-bound TRL head-to-head, reward server vs FastAPI, and
the reward-server, weight-push, loss-head and reference benchmarks of their own issues, each as a
subprocess whose printed table is folded in as it is. A benchmark that fails is reported as failed, with the end
of its output, and the others still run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from bench.common import BENCH_ENV, REPO, machine, replace_section

README = Path(__file__).with_name("README.md")

# (section, module, full arguments, --quick arguments, timeout seconds)
PEER_BENCHES = [
    ("loop_efficiency", "bench.loop_efficiency", [], ["--quick"], 1200),
    ("pinned", "bench.pinned", [], ["--quick"], 1500),
    ("vs_trl_compute", "bench.vs_trl", ["--config", "compute"], ["--config", "compute", "--quick"], 3600),
    ("reward_http", "bench.reward_http", [], ["--quick"], 600),
    ("reward_server", "bench.reward_server", ["--workers", "1", "--calls", "100"], ["--workers", "1", "--calls", "20"],
     300),
    ("weight_push", "bench.weight_push", [], ["--sizes", "10", "--repeats", "2"], 900),
    ("loss_head", "bench.loss_head", ["--vocab", "32768", "151936"],
     ["--vocab", "32768", "--tokens", "1024", "--repeats", "1"], 300),
    ("reference", "bench.reference", ["--sequences", "32", "--grpc"],
     ["--sequences", "8", "--length", "128", "--prompt-length", "64", "--repeats", "1", "--grpc"], 300),
]


def peer_bench(module: str, args: list[str], timeout: float) -> str:
    """Runs another issue's benchmark as a subprocess; its stdout, as a code block."""
    try:
        done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                              timeout=timeout, cwd=REPO, env={**os.environ, **BENCH_ENV})
    except subprocess.TimeoutExpired:
        return f"**failed**: `python -m {module} {' '.join(args)}` ran past {timeout:.0f} s\n"
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-12:])
        return f"**failed** (exit {done.returncode}): `python -m {module} {' '.join(args)}`\n\n```\n{tail}\n```\n"
    # DeepSpeed prints its accelerator warning on stdout; it is not part of the table.
    table = "\n".join(line for line in done.stdout.strip().splitlines() if "[WARNING]" not in line)
    return f"`python -m {module} {' '.join(args)}`\n\n```\n{table}\n```\n"


def timed(name: str, produce: Callable[[], str], sections: dict[str, str]) -> None:
    """Runs one benchmark into `sections[name]`, printing it; a failure becomes the section's text."""
    start = time.perf_counter()
    print(f"== {name} ...", flush=True)
    try:
        body = produce()
    except Exception:  # noqa: BLE001 - one failing benchmark must not hide the others' results
        body = f"**failed**:\n\n```\n{traceback.format_exc(limit=4).strip()[-3000:]}\n```\n"
    body += f"\n_{name}: {time.perf_counter() - start:.0f} s._\n"
    sections[name] = body
    print(body, flush=True)


def run_all(workdir: Path, quick: bool) -> dict[str, str]:
    from bench import overhead, overlap, vs_trl, waste

    sections: dict[str, str] = {}
    steps, warmup = (5, 1) if quick else (12, 3)
    staleness = [0, 1] if quick else [0, 1, 2]
    dirs: dict[int, Path] = {}

    def run_overlap() -> str:
        text, found = overlap.run(workdir, steps, warmup, staleness)
        dirs.update(found)
        return text

    timed("overlap", run_overlap, sections)
    others = {k: d for k, d in dirs.items() if k != 1}
    timed("waste", lambda: waste.run(workdir, steps, staleness, dirs), sections)
    # The tiny configuration's target needs 3 seeds; the first reuses the overlap run.
    timed("vs_trl", lambda: vs_trl.run(workdir, steps, warmup, 1, reuse=dirs.get(1), also=others,
                                       seeds=(0,) if quick else (0, 1, 2)), sections)
    # The synchronous run has the shortest steps, so the largest overhead fraction.
    timed("overhead", lambda: overhead.run(dirs.get(0), 4.0, 3 if quick else 20, workdir), sections)
    for name, module, full, fast, timeout in PEER_BENCHES:
        timed(name, lambda m=module, a=fast if quick else full, t=timeout: peer_bench(m, a, t), sections)
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: fewer steps and repeats (~5 min)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--no-readme", action="store_true", help="print the tables only; leave bench/README.md")
    args = parser.parse_args(argv)
    start, header = time.perf_counter(), machine()
    sections = run_all(args.workdir, args.quick)
    stamp = (f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} with `python -m bench{' --quick' if args.quick else ''}` "
             f"in {(time.perf_counter() - start) / 60:.1f} min on: {header}.")
    print(stamp)
    if not args.no_readme:
        text = README.read_text() if README.exists() else "# rlfleet benchmarks\n"
        text = replace_section(text, "stamp", stamp)
        for name, body in sections.items():
            text = replace_section(text, name, body)
        README.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
