"""bench/loss_head.py runs end to end at a tiny size and both paths compute the same numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.slow  # three fresh Python processes that import torch: ~15 s on a busy 2-core machine
def test_loss_head_bench_runs_and_paths_agree():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "loss_head.py"), "--tokens", "64", "--hidden", "32",
         "--vocab", "300", "--chunk-size", "128", "--repeats", "1"],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT)
    rows = {m[0]: (float(m[1]), float(m[2])) for m in re.findall(r"^(naive|chunked)\s+300\s.*\((\S+), (\S+)\)$",
                                                                  done.stdout, flags=re.M)}
    assert set(rows) == {"naive", "chunked"}, done.stdout
    assert rows["chunked"] == pytest.approx(rows["naive"], rel=1e-4)
