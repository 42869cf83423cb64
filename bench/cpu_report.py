"""Where a running `rlfleet up` cluster's CPU goes: every service's rlfleet_cpu_seconds_total{phase}, scraped in a window.

    watch = RunWatch(up_pid, run_dir, base_port, first_step=4)   # a thread: /proc samples and /metrics scrapes
    ...                                                           # `rlfleet up` runs
    print(phase_table(watch.window(), steps))                     # CPU-s per step by service and phase

The scrapes are taken when the learner's metrics.jsonl gains a record: at the record of
`first_step` and at the newest one, so the window covers the same steps the token counts do.
The generator's process tree (the service and vLLM's EngineCore) is also sampled from /proc every
`interval` seconds, for ratios that must not depend on rlfleet's own accounting.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import cpu_at, markdown_table

SCORE_WALL = "_score_wall_seconds"  # key of the pipeline's wall time in Score calls in a scrape
# Offsets of each service's gRPC port from `rlfleet up --base-port` (launcher.launch.Ports); /metrics is +1000.
SERVICE_PORTS = {"generator": 0, "reward": 20, "reference": 30, "learner": 40}


def scrape_cpu(base_port: int) -> dict[tuple[str, str], float]:
    """(service, phase) -> CPU-seconds so far, from every service of the cluster that answers."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, str], float] = {}
    for service, offset in SERVICE_PORTS.items():
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{base_port + offset + 1000}/metrics", timeout=2).read()
        except OSError:
            continue
        for family in text_string_to_metric_families(text.decode()):
            for sample in family.samples:
                if sample.name == "rlfleet_cpu_seconds_total":
                    found[(service, sample.labels["phase"])] = sample.value
                elif sample.name == "rlfleet_pipeline_score_seconds_sum":  # wall time in Score calls, not CPU
                    found[(service, SCORE_WALL)] = found.get((service, SCORE_WALL), 0.0) + sample.value
    return found


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def service_pids(root: int, command: str) -> list[int]:
    """Descendants of `root` started as `python -m rlfleet.cli COMMAND ...` (LocalCluster's services)."""
    from rlfleet.cpu import tree_pids

    found = []
    for pid in tree_pids(root):
        argv = command_line(pid)
        if "rlfleet.cli" in argv and argv.index("rlfleet.cli") + 1 < len(argv) and \
                argv[argv.index("rlfleet.cli") + 1] == command:
            found.append(pid)
    return found


@dataclass
class RunWatch:
    """Samples a running `rlfleet up`: generator tree CPU from /proc, and /metrics scrapes at step records."""

    up_pid: int
    run_dir: Path
    base_port: int
    first_step: int
    interval: float = 0.25
    generator_samples: list[list[float]] = field(default_factory=list)   # [time, CPU-s of the generators]
    scrapes: dict[int, dict[tuple[str, str], float]] = field(default_factory=dict)  # step -> scrape
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> RunWatch:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from rlfleet.cpu import tree_seconds

        generators: list[int] = []
        seen = 0
        while not self._stop.wait(self.interval):
            if not generators:
                generators = service_pids(self.up_pid, "generator")
            if generators:
                self.generator_samples.append([time.time(), sum(tree_seconds(pid) for pid in generators)])
            steps = _records(self.run_dir)
            if len(steps) > seen:
                seen = len(steps)
                scrape = scrape_cpu(self.base_port)
                if scrape and seen - 1 >= self.first_step:
                    self.scrapes[seen - 1] = scrape

    def generator_cpu(self, start: float, end: float) -> float:
        """CPU-seconds of the generators between two wall-clock times (interpolated samples)."""
        return cpu_at(self.generator_samples, end) - cpu_at(self.generator_samples, start)

    def window(self) -> tuple[int, int, dict[tuple[str, str], float]]:
        """(first step, last step, CPU-seconds by (service, phase) between their records)."""
        if len(self.scrapes) < 2:
            return self.first_step, self.first_step, {}
        first = min(self.scrapes)  # `first_step`, or the next record seen
        # The newest scrape that reached every service of the first: the learner exits right after its
        # last record, so the scrape that record triggers often finds it gone (and its rows were lost).
        services = {service for service, _ in self.scrapes[first]}
        complete = [step for step, scrape in self.scrapes.items()
                    if step > first and services <= {service for service, _ in scrape}]
        if not complete:
            return first, first, {}
        last = max(complete)
        before, after = self.scrapes[first], self.scrapes[last]
        return first, last, {k: v - before.get(k, 0.0) for k, v in after.items()
                                       if v - before.get(k, 0.0) > 0.0}


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]


def phase_table(first: int, last: int, spent: dict[tuple[str, str], float], step_seconds: float | None = None) -> str:
    """CPU-seconds per training step by service and phase, over the steps after `first` up to `last`; with the
    median step time, also the pipeline's wall time in Score calls as a share of a step."""
    steps = max(last - first, 1)
    score_wall = spent.pop(("learner", SCORE_WALL), None)
    if not spent:
        return "_no CPU accounting scraped (services unreachable?)_\n"
    note = ""
    if score_wall is not None and step_seconds:
        share = score_wall / steps / step_seconds
        note = (f"\nPipeline wall time in Score calls: {1000 * score_wall / steps:.1f} ms per step, {100 * share:.2f}% of "
                f"a {step_seconds:.2f} s step (an upper bound on the learner's wait for rewards; target <= 2%: "
                f"{'met' if share <= 0.02 else 'missed'}).\n")
    total = sum(spent.values())
    rows = [[service, phase, f"{seconds / steps:.3f}", f"{100 * seconds / total:.1f}%"]
            for (service, phase), seconds in sorted(spent.items(), key=lambda kv: -kv[1])]
    rows.append(["**all**", "", f"**{total / steps:.3f}**", "100%"])
    return (f"CPU-seconds per step by service and phase (rlfleet_cpu_seconds_total, steps {first + 1}-{last}):\n\n"
            + markdown_table(["service", "phase", "CPU-s / step", "share"], rows) + "\n" + note)
