"""Architecture overhead: gRPC serialisation and loopback transport per training step, as a fraction of the step.

    python -m bench.overhead --run-dir RUN_DIR [--repeats 20]      # step size and time from an `rlfleet up` run
    python -m bench.overhead [--step-seconds 4.0] [--quick]        # or from flags

Method (serialisation timed directly, transport through a no-op echo): for one step's traffic,
built at its real size -- per prompt group a streamed GenerateResponse (group_size completions of
the run's mean length with log-probs and text), plus the GenerateRequests, and per step (the
pipeline scores in bulk) a ScoreRequest / ScoreResponse pair and a LogProbsRequest / LogProbsResponse
pair -- this process times
`SerializeToString` and `FromString` of every message on both sides, and a no-op gRPC server in a
child process (grpc.aio, the services' stack) sends back the reply's number of bytes over loopback
for each call: the same calls, streams and bytes as the real step, without the services' work.
The sum, per step, is compared with the run's median step time. Converting protobuf to the
services' dataclasses and the RPC interceptors are not included (they are Python-level work of
the services and show up in their own latency metrics).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.common import markdown_table, read_learner_steps, throughput

ECHO_METHOD = "/rlfleet.bench.Echo/Echo"
STREAM_METHOD = "/rlfleet.bench.Echo/Stream"


@dataclass(frozen=True)
class StepShape:
    """One training step's traffic."""

    prompts: int                # prompt groups per step
    group_size: int
    completion_tokens: int      # mean completion length
    prompt_tokens: int
    prompts_per_request: int    # prompts per Generate call
    groups_per_score_call: int = 0  # groups per Score and per LogProbs call; 0 = the whole step in one call


@dataclass(frozen=True)
class Exchange:
    """One RPC of the step: the request and the replies, as messages."""

    kind: str                   # rollout, reward, reference
    request: object             # protobuf message
    replies: list               # protobuf messages (several for a server stream)


def step_exchanges(shape: StepShape) -> list[Exchange]:
    """Every RPC of one step, with realistic contents (log-probs are arbitrary negative floats)."""
    from rlfleet.v1 import common_pb2, generator_pb2, reference_pb2, reward_pb2

    g, n, p = shape.group_size, shape.completion_tokens, shape.prompt_tokens
    ids, prompt_ids, logprobs, text = list(range(40, 40 + n)), list(range(7, 7 + p)), [-0.731] * n, "x" * n
    completion = common_pb2.Completion(token_ids=ids, logprobs=logprobs, text=text,
                                       finish_reason=common_pb2.FINISH_REASON_STOP)
    exchanges = []
    for start in range(0, shape.prompts, shape.prompts_per_request):
        count = min(shape.prompts_per_request, shape.prompts - start)
        request = generator_pb2.GenerateRequest(
            prompts=[generator_pb2.Prompt(prompt_id=f"reverse-{start + i}", messages=[
                common_pb2.ChatMessage(role="user", content="reverse:abcdef")]) for i in range(count)],
            sampling=common_pb2.SamplingParams(n=g, max_tokens=n, temperature=1.0, top_p=1.0, seed=start))
        replies = [generator_pb2.GenerateResponse(prompt_index=i, prompt_id=f"reverse-{start + i}",
                                                  prompt_ids=prompt_ids, prompt_text="<|user|>reverse:abcdef",
                                                  completions=[completion] * g, policy_version=3)
                   for i in range(count)]
        exchanges.append(Exchange("rollout", request, replies))
    per_call = shape.groups_per_score_call or shape.prompts
    for i, start in enumerate(range(0, shape.prompts, per_call)):
        k = g * min(per_call, shape.prompts - start)  # completions in this call
        score = reward_pb2.ScoreRequest(request_id=f"{i:032x}", items=[reward_pb2.RewardItem(
            prompt="reverse:abcdef", completion=text, reference="fedcba", columns={"answer": '"fedcba"'},
            completion_tokens=n, finish_reason=common_pb2.FINISH_REASON_STOP) for _ in range(k)])
        scored = reward_pb2.ScoreResponse(script_version="0123456789abcdef", results=[reward_pb2.RewardResult(
            reward=0.75, components={"accuracy": 0.0, "similarity": 0.5}) for _ in range(k)])
        exchanges.append(Exchange("reward", score, [scored]))
        ref = reference_pb2.LogProbsRequest(sequences=[reference_pb2.TokenSequence(
            token_ids=prompt_ids + ids, prompt_length=p) for _ in range(k)])
        exchanges.append(Exchange("reference", ref, [reference_pb2.LogProbsResponse(
            results=[reference_pb2.SequenceLogProbs(logprobs=logprobs) for _ in range(k)])]))
    return exchanges


def serialisation_seconds(exchange: Exchange) -> float:
    """Serialise + parse the request and every reply once (client and server sides of the call)."""
    start = time.perf_counter()
    data = exchange.request.SerializeToString()
    type(exchange.request).FromString(data)
    for reply in exchange.replies:
        type(reply).FromString(reply.SerializeToString())
    return time.perf_counter() - start


def _echo_request(exchange: Exchange) -> bytes:
    # The no-op server answers with as many bytes as the real replies have: a header says how many.
    sizes = [reply.ByteSize() for reply in exchange.replies]
    return struct.pack(f"<I{len(sizes)}I", len(sizes), *sizes) + exchange.request.SerializeToString()


async def transport_seconds(port: int, exchanges: list[Exchange]) -> tuple[float, float]:
    """Loopback wall time of one step's calls through the no-op server, one after the other, and this
    process's CPU seconds for them."""
    import grpc

    payloads = [(_echo_request(e), len(e.replies) > 1 or e.kind == "rollout") for e in exchanges]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary, stream = channel.unary_unary(ECHO_METHOD), channel.unary_stream(STREAM_METHOD)
        await unary(b"\0\0\0\0", timeout=10)  # connect before timing
        start, cpu = time.perf_counter(), time.process_time()
        for payload, streamed in payloads:
            if streamed:
                async for _ in stream(payload, timeout=30):
                    pass
            else:
                await unary(payload, timeout=30)
        return time.perf_counter() - start, time.process_time() - cpu


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def serve_echo(port_file: Path) -> None:
    """The no-op server: replies with zero bytes of the sizes named in the request's header."""
    import grpc

    def sizes(request: bytes) -> list[int]:
        (count,) = struct.unpack_from("<I", request)
        return list(struct.unpack_from(f"<{count}I", request, 4))

    async def echo(request: bytes, context) -> bytes:
        return bytes(sum(sizes(request)))

    async def stream(request: bytes, context):
        for size in sizes(request):
            yield bytes(size)

    handler = grpc.method_handlers_generic_handler("rlfleet.bench.Echo", {
        "Echo": grpc.unary_unary_rpc_method_handler(echo), "Stream": grpc.unary_stream_rpc_method_handler(stream)})
    limit = 256 * 1024 * 1024
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                      ("grpc.max_send_message_length", limit)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port_file.write_text(str(port))
    await server.wait_for_termination()


@dataclass(frozen=True)
class Overhead:
    step_seconds: float
    serialisation_seconds: dict[str, float]   # per kind, per step (median over repeats)
    transport_seconds: float                  # per step (median over repeats)
    transport_cpu_seconds: float              # per step: client + no-op server CPU (mean over repeats)
    bytes_per_step: int

    @property
    def total_seconds(self) -> float:
        return sum(self.serialisation_seconds.values()) + self.transport_seconds

    @property
    def fraction(self) -> float:
        return self.total_seconds / self.step_seconds


def measure(shape: StepShape, step_seconds: float, repeats: int, workdir: Path) -> Overhead:
    exchanges = step_exchanges(shape)
    kinds = sorted({e.kind for e in exchanges})
    per_kind = {k: statistics.median(sum(serialisation_seconds(e) for e in exchanges if e.kind == k)
                                     for _ in range(repeats)) for k in kinds}
    port_file = workdir / "echo.port"
    port_file.unlink(missing_ok=True)
    workdir.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "bench.overhead", "--echo-server", str(port_file)])
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text():
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.1)
        port = int(port_file.read_text())
        server_cpu = process_cpu_seconds(server.pid)
        timings = [asyncio.run(transport_seconds(port, exchanges)) for _ in range(repeats)]
        server_cpu = process_cpu_seconds(server.pid) - server_cpu
        transport = statistics.median(wall for wall, _ in timings)
        transport_cpu = (sum(cpu for _, cpu in timings) + server_cpu) / repeats
    finally:
        server.terminate()
        server.wait(10)
    size = sum(e.request.ByteSize() + sum(r.ByteSize() for r in e.replies) for e in exchanges)
    return Overhead(step_seconds, per_kind, transport, transport_cpu, size)


def report(o: Overhead, shape: StepShape) -> str:
    rows = [[f"serialise + parse: {k}", f"{1000 * s:.2f}", f"{100 * s / o.step_seconds:.3f}%"]
            for k, s in o.serialisation_seconds.items()]
    rows.append(["loopback transport (no-op server)", f"{1000 * o.transport_seconds:.2f}",
                 f"{100 * o.transport_seconds / o.step_seconds:.3f}%"])
    rows.append(["(loopback transport, CPU seconds of client + server)", f"{1000 * o.transport_cpu_seconds:.2f}",
                 f"{100 * o.transport_cpu_seconds / o.step_seconds:.3f}%"])
    rows.append(["**total** (serialisation + transport wall)", f"**{1000 * o.total_seconds:.2f}**", f"**{100 * o.fraction:.3f}%**"])
    table = markdown_table(["per step", "ms", "of step"], rows)
    return (f"One step: {shape.prompts} groups x {shape.group_size} completions of {shape.completion_tokens} "
            f"tokens, {o.bytes_per_step / 1024:.0f} KiB on the wire; median step {o.step_seconds:.2f} s. "
            f"Target: < 2%.\n\n{table}\n")


def shape_from_run(run_dir: Path, warmup: int) -> tuple[StepShape, float]:
    """The step's size and median step time of an `rlfleet up` run."""
    records = read_learner_steps(run_dir)
    stats = throughput(records, min(warmup, len(records) - 2), 1)
    config = _learner_source(run_dir)
    tokens = round(sum(r.completion_tokens for r in records) / sum(r.samples for r in records))
    # Unset prompts_per_request: the whole batch in one Generate call per generator.
    shape = StepShape(config["prompts_per_batch"], config["group_size"], max(1, tokens), 16,
                      config.get("prompts_per_request") or config["prompts_per_batch"])
    return shape, stats.median_step_seconds


def _learner_source(run_dir: Path) -> dict:
    import tomllib

    return tomllib.loads((run_dir / "cluster.toml").read_text())["learner"]["source"]


def run(run_dir: Path | None, step_seconds: float, repeats: int, workdir: Path) -> str:
    if run_dir is not None:
        shape, step_seconds = shape_from_run(run_dir, warmup=2)
    else:
        shape = StepShape(prompts=8, group_size=8, completion_tokens=12, prompt_tokens=16, prompts_per_request=4)
    return report(measure(shape, step_seconds, repeats, workdir), shape)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="an `rlfleet up` run to take the step from")
    parser.add_argument("--step-seconds", type=float, default=4.0, help="step time when no --run-dir is given")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 repeats")
    parser.add_argument("--echo-server", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.echo_server is not None:
        asyncio.run(serve_echo(args.echo_server))
        return 0
    print(run(args.run_dir, args.step_seconds, 3 if args.quick else args.repeats, args.workdir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
