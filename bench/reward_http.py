"""rlfleet's reward server vs the kind of server OpenRLHF's `--remote_rm_url` talks to: FastAPI + uvicorn, JSON, same function.

    python -m bench.reward_http [--workers 1] [--calls 60] [--batches 64 512] [--rounds 3] [--quick]

All three servers run the same regex reward (`think_answer_format`, a built-in) on the same items,
each in its own process, called back-to-back by one client over loopback:

- rlfleet: `rlfleet reward-server` (gRPC, typed statuses, the function in isolated worker processes), called
  through ScoreBatch (columns both ways, what the learner uses); the per-item Score is reported beside it;
- peer, in process: a FastAPI app whose handler calls the function itself (no isolation: a crash or
  a hang of the user's function takes the server with it);
- peer, process pool: the same app handing the batch to a `ProcessPoolExecutor` of the same number
  of workers, split evenly (the isolation a careful user would add; still no kill-on-timeout).

Reported per batch size: items/s (wall) and items per CPU-second of each server's process tree.
Targets: rlfleet >= 1.0x the pooled peer at batch 64 and 512 (equal isolation), and >= 0.5x the
in-process peer at batch 512, each judged both ways. Throughput is wall-clock: on a shared machine,
the CPU column is the one to read.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.reward_server import _items, start_server

REWARD = "think_answer_format"
MIN_SECONDS = 3.0  # each measurement lasts at least this long, so /proc's 10 ms CPU ticks add up


def _score_chunk(items: list[dict]) -> list[float]:
    from reward_server.builtins import BUILTINS

    fn = BUILTINS[REWARD]
    return [float(fn(i["prompt"], i["completion"], answer=i["answer"])) for i in items]


def _die_with_parent() -> None:
    import ctypes
    import signal

    ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def serve_peer(port: int, mode: str, workers: int) -> None:
    """The peer: FastAPI + uvicorn, POST /score {"items": [...]} -> {"rewards": [...]}."""
    from concurrent.futures import ProcessPoolExecutor

    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    # uvicorn re-raises SIGTERM after its shutdown, so the pool is never shut down: its workers die with the server.
    pool = ProcessPoolExecutor(workers, initializer=_die_with_parent) if mode == "pool" else None
    if pool is not None:
        list(pool.map(_score_chunk, [[{"prompt": "", "completion": "", "answer": ""}]] * workers))  # start them

    @app.post("/score")
    async def score(body: dict) -> dict:
        items = body["items"]
        if pool is None:
            return {"rewards": _score_chunk(items)}
        size = -(-len(items) // workers)
        loop = asyncio.get_running_loop()
        parts = await asyncio.gather(*(loop.run_in_executor(pool, _score_chunk, items[i:i + size])
                                       for i in range(0, len(items), size)))
        return {"rewards": [r for part in parts for r in part]}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start_peer(mode: str, workers: int) -> tuple[subprocess.Popen, int]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.reward_http", "--serve-peer", str(port), "--mode", mode,
                             "--workers", str(workers)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/docs")
            return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"peer server ({mode}) did not start")


def measure_peer(port: int, pid: int, batch: int, calls: int) -> tuple[float, float]:
    """(items/s, items per server CPU-s) over `calls` back-to-back POSTs of `batch` items."""
    from rlfleet.cpu import tree_seconds

    body = json.dumps({"items": [{"prompt": p, "completion": c, "answer": a} for p, c, a in _items(batch)]})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call() -> int:
        connection.request("POST", "/score", body, {"Content-Type": "application/json"})
        return len(json.loads(connection.getresponse().read())["rewards"])

    for _ in range(5):
        call()
    wall, cpu = time.perf_counter(), tree_seconds(pid)
    done = calls_made = 0
    while calls_made < calls or time.perf_counter() - wall < MIN_SECONDS:  # /proc counts 10 ms ticks
        done += call()
        calls_made += 1
    return done / (time.perf_counter() - wall), done / max(tree_seconds(pid) - cpu, 1e-9)


def measure_rlfleet(port: int, pid: int, batch: int, calls: int, per_item: bool = False) -> tuple[float, float]:
    from rlfleet.clients import RewardClient
    from rlfleet.cpu import tree_seconds
    from rlfleet.outcomes import RewardBatch, RewardItem

    items = [RewardItem(p, c, {"answer": a}) for p, c, a in _items(batch)]
    columns = RewardBatch.from_items(items)

    async def go() -> tuple[float, float]:
        async with RewardClient(f"127.0.0.1:{port}") as client:
            score = (lambda: client.score(items)) if per_item else (lambda: client.score_batch(columns))
            for _ in range(5):
                await score()
            wall, cpu = time.perf_counter(), tree_seconds(pid)
            done = calls_made = 0
            while calls_made < calls or time.perf_counter() - wall < MIN_SECONDS:
                done += len(await score())
                calls_made += 1
            return done / (time.perf_counter() - wall), done / max(tree_seconds(pid) - cpu, 1e-9)

    return asyncio.run(go())


def run(workers: int, calls: int, batches: list[int], rounds: int = 1) -> str:
    rlfleet = start_server(workers, REWARD)
    servers = {"rlfleet reward-server": rlfleet, "rlfleet, per-item Score": rlfleet,
               "FastAPI, in process": start_peer("inline", workers),
               "FastAPI, process pool": start_peer("pool", workers)}
    measured: dict[tuple[str, int], list[tuple[float, float]]] = {}
    try:
        for round_ in range(rounds):  # servers take turns, so that a change in the machine's load hits them all
            for batch in batches:
                n = max(5, calls * 64 // batch)
                for name, (proc, port) in servers.items():
                    if name.startswith("rlfleet"):
                        got = measure_rlfleet(port, proc.pid, batch, n, per_item="per-item" in name)
                    else:
                        got = measure_peer(port, proc.pid, batch, n)
                    measured.setdefault((name, batch), []).append(got)
                    print(f"  round {round_ + 1}: {name}, batch {batch}: {got[0]:.0f} items/s, {got[1]:.0f} items/CPU-s",
                          file=sys.stderr, flush=True)
    finally:
        for proc, _ in {proc.pid: (proc, port) for proc, port in servers.values()}.values():
            proc.terminate()
            proc.wait(30)
    results = {key: (statistics.median(r for r, _ in got), statistics.median(c for _, c in got))
               for key, got in measured.items()}
    lines = [f"{REWARD}, {workers} worker(s) per server, one client calling back-to-back over loopback, "
             f"median of {rounds} round(s)",
             f"{'server':24s} {'batch':>5s} {'items/s':>10s} {'items/CPU-s':>12s}"]
    for (name, batch), (rate, per_cpu) in results.items():
        lines.append(f"{name:24s} {batch:5d} {rate:10.0f} {per_cpu:12.0f}")
    for batch in batches:
        ours = results[("rlfleet reward-server", batch)]
        for peer, target in (("FastAPI, process pool", 1.0), ("FastAPI, in process", 0.5)):
            if peer == "FastAPI, in process" and batch < 512:
                continue
            theirs = results[(peer, batch)]
            wall, cpu = ours[0] / theirs[0], ours[1] / theirs[1]
            lines.append(f"batch {batch}: rlfleet / {peer} (target >= {target}): {wall:.2f}x items/s "
                         f"({'met' if wall >= target else 'missed'}), {cpu:.2f}x items/CPU-s "
                         f"({'met' if cpu >= target else 'missed'})")
    lines.append(f"load average {os.getloadavg()[0]:.1f} at the end")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reward_http", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="reward workers (peer: pool processes)")
    parser.add_argument("--calls", type=int, default=60, help="calls at batch 64 (fewer at larger batches)")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--rounds", type=int, default=3, help="measurements per server and batch (median reported)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 15 calls, one round")
    parser.add_argument("--serve-peer", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["inline", "pool"], default="inline", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_peer:
        serve_peer(args.serve_peer, args.mode, args.workers)
        return 0
    print(run(args.workers, 15 if args.quick else args.calls, args.batches, 1 if args.quick else args.rounds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
