"""Compact progress view of a training run, read from RUN_DIR/metrics.jsonl as the learner appends to it."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path


def format_step(record: dict, total: int) -> str:
    """One status line: step, reward, KL, response length, tokens/s, staleness."""
    return (f"step {int(record['step']):>4}/{total}  reward {record.get('reward_mean', float('nan')):6.3f}  "
            f"kl {record.get('kl', 0.0):8.5f}  len {record.get('response_length_mean', 0.0):5.1f}  "
            f"tok/s {record.get('tokens_per_second', 0.0):7.0f}  "
            f"stale {int(record.get('staleness_max', 0))}  {record.get('step_seconds', 0.0):5.2f}s/step")


class ProgressView:
    """Prints new step records as a live bar (terminal) or one line per step (`lines`, or not a TTY)."""

    def __init__(self, path: Path, total: int, mode: str = "bar", stream=sys.stdout):
        self.path = path
        self.total = total
        self.stream = stream
        self.mode = mode if mode != "bar" or stream.isatty() else "lines"
        self._offset = 0
        self._inode: int | None = None
        self._started = time.monotonic()
        self._last: dict | None = None

    def poll(self) -> list[dict]:
        """Reads records appended since the last call and shows them."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return []
        # The learner replaces an earlier run's file when it starts (learner.loop._trim_metrics): read
        # the new one from its start rather than from an offset into the old one.
        if stat.st_ino != self._inode or stat.st_size < self._offset:
            self._inode, self._offset = stat.st_ino, 0
        with open(self.path) as f:
            f.seek(self._offset)
            text = f.read()
        complete = text[: text.rfind("\n") + 1]  # a half-written last line waits for the next poll
        self._offset += len(complete.encode())
        records = [json.loads(line) for line in complete.splitlines() if line.strip()]
        for record in records:
            self._show(record)
        return records

    def _show(self, record: dict) -> None:
        self._last = record
        if self.mode == "none":
            return
        line = format_step(record, self.total)
        if self.mode == "lines":
            self.stream.write(line + "\n")
        else:
            width = max(10, min(30, shutil.get_terminal_size().columns - len(line) - 12))
            done = int(width * min(record["step"], self.total) / self.total)
            elapsed = time.monotonic() - self._started
            self.stream.write(f"\r[{'#' * done}{'.' * (width - done)}] {line} {elapsed:4.0f}s")
        self.stream.flush()

    def close(self) -> None:
        if self.mode == "bar" and self._last is not None:
            self.stream.write("\n")
            self.stream.flush()
