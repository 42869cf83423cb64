"""Loss-head memory and time: `python bench/loss_head.py [--vocab 32768 151936] [--tokens 4096] [--hidden 1024]`.

CPU: for each vocabulary size, the naive `log_softmax(hidden @ W.T).gather(targets)` path against
`fused.selective_logprobs` (PyTorch twin), forward + backward to hidden, fp32. Each path
runs in a fresh subprocess so that its peak memory is its own: the peak is the process's
`ru_maxrss` (resident high-water mark, which sees torch's CPU allocations), reported in total and
above the resident size once the inputs exist. Times are the best of `--repeats` runs.
CUDA (when present): the same paths plus the Triton kernels, peaks from torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

from fused import fused_policy_loss, selective_logprobs

PATHS = ("naive", "chunked")


@dataclass(frozen=True)
class Measurement:
    """One path at one vocabulary size, forward + backward."""

    path: str
    vocab: int
    seconds: float            # wall time, best of the repeats
    cpu_seconds: float        # process CPU time of that run (all threads): steadier than wall on a shared machine
    peak_bytes: int           # whole process (CPU: ru_maxrss) or CUDA allocator peak
    peak_above_inputs: int    # peak minus what the inputs alone held
    logprob_sum: float        # sanity check: both paths compute the same numbers
    grad_norm: float


def _inputs(tokens: int, hidden: int, vocab: int, device: str, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, hidden, generator=gen).to(device, dtype)
    weight = (torch.randn(vocab, hidden, generator=gen) / hidden**0.5).to(device, dtype)
    targets = torch.randint(0, vocab, (tokens,), generator=gen).to(device)
    grad_out = torch.randn(tokens, generator=gen).to(device)
    return h, weight, targets, grad_out


def _step(path: str, hidden: torch.Tensor, weight, targets, grad_out, chunk_size: int, backend: str):
    """One forward + backward; returns (logprobs, grad_hidden)."""
    leaf = hidden.detach().requires_grad_()
    if path == "naive":
        logits = leaf @ weight.T                                                     # [N, V]
        logprobs = torch.log_softmax(logits.float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    else:
        logprobs, _ = selective_logprobs(leaf, weight, targets, chunk_size=chunk_size, backend=backend)
    logprobs.backward(grad_out)
    return logprobs.detach(), leaf.grad


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure_cpu(path: str, tokens: int, hidden: int, vocab: int, chunk_size: int, repeats: int) -> Measurement:
    """Runs in its own process, so that the peak resident size is this path's alone."""
    inputs = _inputs(tokens, hidden, vocab, "cpu", torch.float32)
    baseline = _rss_bytes()
    best, cpu, checks = float("inf"), 0.0, (0.0, 0.0)
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        logprobs, grad = _step(path, *inputs, chunk_size, "torch")
        if time.perf_counter() - start < best:
            best, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        checks = (logprobs.sum().item(), grad.norm().item())
        del logprobs, grad
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    return Measurement(path, vocab, best, cpu, peak, peak - baseline, *checks)


def measure_cuda(path: str, backend: str, tokens: int, hidden: int, vocab: int, chunk_size: int,
                 repeats: int, dtype: torch.dtype) -> Measurement:
    """In this process: CUDA's allocator keeps its own peak, reset per measurement."""
    inputs = _inputs(tokens, hidden, vocab, "cuda", dtype)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    _step(path, *inputs, chunk_size, backend)  # warm-up: Triton compiles here
    best, checks = float("inf"), (0.0, 0.0)
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        logprobs, grad = _step(path, *inputs, chunk_size, backend)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        checks = (logprobs.sum().item(), grad.float().norm().item())
        del logprobs, grad
    peak = torch.cuda.max_memory_allocated()
    del inputs
    return Measurement(f"{path}:{backend}", vocab, best, float("nan"), peak, peak - baseline, *checks)


def time_policy_loss_cuda(batch: int, length: int, repeats: int) -> dict[str, float]:
    """Seconds of fused_policy_loss forward + backward per backend on [batch, length] tokens."""
    gen = torch.Generator().manual_seed(0)
    old = -torch.rand(batch, length, generator=gen).cuda()
    lp, behaviour, ref = (old + 0.1 * torch.randn(batch, length, generator=gen).cuda() for _ in range(3))
    adv, mask = torch.randn(batch, length).cuda(), torch.ones(batch, length).cuda()
    seconds = {}
    for backend in ("torch", "triton"):
        best = float("inf")
        for _ in range(repeats + 1):  # the first run compiles
            leaf = lp.clone().requires_grad_()
            torch.cuda.synchronize()
            start = time.perf_counter()
            fused_policy_loss(leaf, old, behaviour, adv, mask, ref, clip_low=0.2, clip_high=0.28, tis_cap=2.0,
                              kl_coef=0.1, aggregation="token_mean", backend=backend).loss.backward()
            torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        seconds[backend] = best
    return seconds


def _run_worker(args: argparse.Namespace, path: str, vocab: int) -> Measurement:
    command = [sys.executable, __file__, "--worker", path, "--vocab", str(vocab), "--tokens", str(args.tokens),
               "--hidden", str(args.hidden), "--chunk-size", str(args.chunk_size), "--repeats", str(args.repeats)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{path} at V={vocab} failed:\n{done.stderr[-2000:]}")
    return Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))


def _report(rows: list[Measurement], reference: str) -> None:
    """One line per measurement, with time and peak as a fraction of `reference` at the same vocabulary."""
    gib = 1024**3
    print(f"{'path':<16}{'V':>8}{'seconds':>10}{'x time':>8}{'cpu s':>8}{'x cpu':>7}{'peak GiB':>10}{'x peak':>8}"
          f"{'above inputs GiB':>18}{'x above':>9}  check (sum lp, |grad|)")
    for row in rows:
        base = next(r for r in rows if r.vocab == row.vocab and r.path == reference)
        print(f"{row.path:<16}{row.vocab:>8}{row.seconds:>10.3f}{row.seconds / base.seconds:>8.2f}"
              f"{row.cpu_seconds:>8.2f}{row.cpu_seconds / base.cpu_seconds:>7.2f}"
              f"{row.peak_bytes / gib:>10.3f}{row.peak_bytes / base.peak_bytes:>8.3f}"
              f"{row.peak_above_inputs / gib:>18.3f}{row.peak_above_inputs / base.peak_above_inputs:>9.3f}"
              f"  ({row.logprob_sum:.4f}, {row.grad_norm:.4f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="N, tokens per step")
    parser.add_argument("--hidden", type=int, default=1024, help="H, hidden size")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 151936], help="V values (Qwen2.5: 151936)")
    parser.add_argument("--chunk-size", type=int, default=4096, help="vocabulary chunk of the PyTorch twin")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per path; the best is reported")
    parser.add_argument("--cuda-dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--worker", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(asdict(measure_cpu(args.worker, args.tokens, args.hidden, args.vocab[0],
                                            args.chunk_size, args.repeats))))
        return 0
    print(f"CPU, fp32, N={args.tokens} H={args.hidden}, {torch.get_num_threads()} threads, "
          f"best of {args.repeats}, forward + backward; peak = ru_maxrss of a fresh process per path")
    _report([_run_worker(args, path, vocab) for vocab in args.vocab for path in PATHS], "naive")
    if not torch.cuda.is_available():
        print("CUDA: skipped, no CUDA device here (the Triton kernels are timed only on a GPU)")
        return 0
    dtype = getattr(torch, args.cuda_dtype)
    print(f"\nCUDA ({torch.cuda.get_device_name()}), {args.cuda_dtype}; peak = torch.cuda.max_memory_allocated")
    _report([measure_cuda(path, backend, args.tokens, args.hidden, vocab, args.chunk_size, args.repeats, dtype)
             for vocab in args.vocab for path, backend in (("naive", "torch"), ("chunked", "torch"),
                                                           ("chunked", "triton"))], "naive:torch")
    print("fused_policy_loss [64, 2048] seconds:", time_policy_loss_cuda(64, 2048, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
