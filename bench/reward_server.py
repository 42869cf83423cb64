"""Reward-server throughput and latency through gRPC on loopback vs. the same function in-process.

    python -m bench.reward_server [--workers 2] [--calls 100]

For the regex built-in (`think_answer_format`) and Math-Verify (`math_answer`) in turn, starts
`rlfleet reward-server` as a subprocess serving that reward, and measures: in-process throughput (items/s, and
items per CPU-second), service throughput at batch 64 (items/s, and items per CPU-second summed over
the server, its fork server and its workers), and p50/p99 latency of one Score call per group of 8.
It also measures the server CPU of an RPC that does no work (ListRewards): the part of the per-batch
cost that is gRPC's own, and the ceiling it puts on "service items per CPU-second / in-process";
and the same for a bare grpc.aio server with one no-op method and no rlfleet code at all, the floor
that any Python gRPC service pays per call on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMPLETIONS = [
    "<think>The sum of 17 and 25 is 42, since 17 + 20 = 37 and 37 + 5 = 42.</think><answer>42</answer>",
    "<think></think>42",
    "Let me think. " * 20 + r"So the answer is $\boxed{\frac{1}{2}}$.",
    r"<think>3/6 reduces to 1/2</think><answer>$\boxed{0.5}$</answer>",
]
ANSWERS = ["42", "42", r"\frac{1}{2}", "1/2"]


def _items(n: int) -> list[tuple[str, str, str]]:
    return [("What is it?", COMPLETIONS[i % 4], ANSWERS[i % 4]) for i in range(n)]


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and all its descendants (from /proc)."""
    parents, cpu = {}, {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
            cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        children = [p for p, pp in parents.items() if pp == pid]
        tree.update(children)
        frontier += children
    return sum(cpu.get(p, 0.0) for p in tree)


def in_process(name: str, items: list[tuple[str, str, str]], passes: int = 5) -> tuple[float, float]:
    """(items/s, items per CPU-second) calling the built-in directly, one item at a time; median of `passes`."""
    from reward_server.builtins import BUILTINS

    fn = BUILTINS[name]
    rates = []
    for _ in range(passes):  # one pass of a fast reward lasts ~30 ms: a single one is at the mercy of the scheduler
        wall, cpu = time.perf_counter(), time.process_time()
        for prompt, completion, answer in items:
            fn(prompt, completion, answer=answer)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        rates.append((len(items) / wall, len(items) / max(cpu, 1e-9)))
    return statistics.median(r[0] for r in rates), statistics.median(r[1] for r in rates)


async def through_grpc(port: int, server_pid: int, name: str, calls: int, batch: int) -> dict:
    from rlfleet.clients import RewardClient
    from rlfleet.outcomes import RewardItem

    def items(n: int) -> list[RewardItem]:
        return [RewardItem(p, c, {"answer": a}) for p, c, a in _items(n)]  # the learner's pipeline sends this

    async with RewardClient(f"127.0.0.1:{port}") as client:
        for _ in range(5):  # warm up: connection, worker imports
            await client.score(items(batch))
        wall, cpu = time.perf_counter(), tree_cpu_seconds(server_pid)
        done = 0
        for _ in range(calls):
            done += len(await client.score(items(batch)))
        wall, cpu = time.perf_counter() - wall, tree_cpu_seconds(server_pid) - cpu
        # The floor: CPU the server spends on one RPC that does nothing (ListRewards), i.e. gRPC itself.
        cpu_floor = tree_cpu_seconds(server_pid)
        for _ in range(calls):
            await client.list_rewards()
        cpu_floor = (tree_cpu_seconds(server_pid) - cpu_floor) / calls
        latencies = []
        for _ in range(calls):
            start = time.perf_counter()
            await client.score(items(8))
            latencies.append(time.perf_counter() - start)
    q = statistics.quantiles(latencies, n=100)
    return {"items_per_s": done / wall, "items_per_cpu_s": done / max(cpu, 1e-9),
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "rpc_floor_cpu_s": cpu_floor}


async def _serve_bare(port: int) -> None:
    """A grpc.aio server with one no-op method and nothing else: no interceptors, health or rlfleet code."""
    import grpc
    from grpc import aio

    async def nothing(request: bytes, context) -> bytes:
        return b""

    server = aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "bench.Bare", {"Nothing": grpc.unary_unary_rpc_method_handler(nothing)})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def bare_grpc_floor(calls: int = 2000) -> float:
    """Server CPU seconds per empty unary RPC of a bare grpc.aio server (this machine's floor for any Python service)."""
    from grpc import aio

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.reward_server", "--bare-server-port", str(port)])

    async def measure() -> float:
        async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/bench.Bare/Nothing")
            await asyncio.wait_for(channel.channel_ready(), 30)
            for _ in range(200):
                await call(b"")
            cpu = tree_cpu_seconds(proc.pid)
            for _ in range(calls):
                await call(b"")
            return (tree_cpu_seconds(proc.pid) - cpu) / calls

    try:
        return asyncio.run(measure())
    finally:
        proc.terminate()
        proc.wait(30)


def start_server(workers: int, reward: str) -> tuple[subprocess.Popen, int]:
    from rlfleet.health import check

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.conftest import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "reward_server", "--server.host", "127.0.0.1",
                             "--server.port", str(port), "--workers", str(workers), "--log-level", "WARNING",
                             "--reward", f"{reward}:1"])
    deadline = time.monotonic() + 120
    while not check(f"127.0.0.1:{port}", timeout=1):
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit("reward server did not become SERVING")
        time.sleep(0.2)
    return proc, port


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300, help="Score calls per measurement (math: a fifth)")
    parser.add_argument("--bare-server-port", type=int, help=argparse.SUPPRESS)  # bare_grpc_floor's server
    args = parser.parse_args()
    if args.bare_server_port:
        asyncio.run(_serve_bare(args.bare_server_port))
        return 0
    print(f"reward server: {args.workers} workers; throughput at batch 64, latency per Score call of 8 items")
    bare = bare_grpc_floor()
    print(f"a bare grpc.aio server (one no-op method, no rlfleet code) spends {bare * 1e6:.0f} us of CPU per empty "
          "unary RPC")
    for name, calls in (("think_answer_format", args.calls), ("math_answer", max(args.calls // 5, 10))):
        local, local_cpu = in_process(name, _items(64 * calls), passes=5 if name == "think_answer_format" else 1)
        print(f"{name:20s} in-process: {local:9.0f} items/s {local_cpu:9.0f} items/CPU-s")
        proc, port = start_server(args.workers, name)
        try:
            stats = asyncio.run(through_grpc(port, proc.pid, name, calls, 64))
        finally:
            proc.terminate()
            proc.wait(30)
        print(f"{name:20s} via gRPC:   {stats['items_per_s']:9.0f} items/s {stats['items_per_cpu_s']:9.0f} items/CPU-s "
              f"p50 {stats['p50_ms']:.2f} ms  p99 {stats['p99_ms']:.2f} ms")
        # Even with no cost of its own beyond gRPC, a service spends floor + 64 * (1 / local_cpu) per batch.
        ceiling = (64 / local_cpu) / (64 / local_cpu + stats["rpc_floor_cpu_s"])
        bare_ceiling = (64 / local_cpu) / (64 / local_cpu + bare)
        print(f"{name:20s} per CPU-s vs in-process: {stats['items_per_cpu_s'] / local_cpu:.3f}; an empty RPC costs "
              f"the server {stats['rpc_floor_cpu_s'] * 1e6:.0f} us of CPU, which alone caps this ratio at {ceiling:.3f} "
              f"(the bare server's RPC: {bare_ceiling:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
