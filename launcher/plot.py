"""Plots a run's reward, KL, response length and throughput over steps: `rlfleet plot RUN_DIR` -> RUN_DIR/training.png."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SMOOTHING = 5
PANELS = (("reward_mean", "reward (mean of batch)"), ("kl", "KL to reference"),
          ("response_length_mean", "response length (tokens)"), ("tokens_per_second", "trained tokens / s"))


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Writes the 2x2 figure of PANELS from RUN_DIR/metrics.jsonl; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics.jsonl in this run directory")
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    figure, axes = plt.subplots(2, 2, figsize=(10, 6.5), sharex=True)
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        points = [(r["step"], r[key]) for r in records if key in r]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker=".", linewidth=0.8, alpha=0.5, label="per step")
            if len(values) >= 2 * SMOOTHING:  # a trailing mean shows the trend through batch noise
                smooth = [sum(values[max(0, i - SMOOTHING + 1): i + 1]) / len(values[max(0, i - SMOOTHING + 1): i + 1])
                          for i in range(len(values))]
                ax.plot(steps, smooth, linewidth=2, label=f"mean of last {SMOOTHING}")
                ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("step")
    figure.suptitle(f"rlfleet run {run_dir.name}", fontsize=11)
    figure.tight_layout()
    out = Path(out) if out else run_dir / "training.png"
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlfleet plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="run directory holding metrics.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="PNG path (default RUN_DIR/training.png)")
    args = parser.parse_args(argv)
    try:
        print(plot_run(args.run_dir, args.out))
    except FileNotFoundError as err:
        parser.error(str(err))
    return 0
