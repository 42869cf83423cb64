"""Reference scoring throughput (tokens/s): `python bench/reference.py --size tiny|0.5b [--grpc]`.

Times `reference.core.sequence_logprobs` on random token ids: the tiny test model, or a model with
Qwen2.5-0.5B's shapes and random weights (timing does not depend on the weights). `--grpc` sends the
same sequences through a real loopback ReferenceService to include serialisation and the wire.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the
# `reference` package it measures.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

# Qwen2.5-0.5B's shapes (config.json of the hub model), so no download is needed.
QWEN_05B = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                tie_word_embeddings=True, rope_theta=1000000.0, rms_norm_eps=1e-6)


def build_model(size: str, dtype: str, workdir: str):
    """A transformers causal LM (and its folder, for --grpc) of the requested size."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from launcher.tiny_model import build_tiny_model

    torch_dtype = getattr(torch, dtype)
    if size == "tiny":
        path = build_tiny_model(f"{workdir}/tiny")
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype), str(path)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(**QWEN_05B)).to(torch_dtype)
    model.save_pretrained(f"{workdir}/qwen05b")
    return model, f"{workdir}/qwen05b"


def sequences(count: int, length: int, prompt_length: int, vocab: int, seed: int = 0):
    from reference.core import TokenSequence

    rng = random.Random(seed)
    return [TokenSequence([rng.randrange(vocab) for _ in range(length)], prompt_length) for _ in range(count)]


def bench_core(model, seqs, budget: int, repeats: int) -> float:
    """Best-of-`repeats` tokens/s (all tokens, prompt included: every one goes through the model)."""
    from reference.core import sequence_logprobs

    sequence_logprobs(model, seqs[:1], budget)  # warm-up: first-call allocations
    tokens = sum(len(s.token_ids) for s in seqs)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        sequence_logprobs(model, seqs, budget)
        best = max(best, tokens / (time.perf_counter() - start))
    return best


async def bench_grpc(model, path: str, seqs, budget: int) -> float:
    from reference.config import ReferenceConfig
    from reference.server import start_reference_server
    from rlfleet.clients import ReferenceClient
    from rlfleet.config import ServerConfig

    config = ReferenceConfig(model=path, max_batch_tokens=budget, server=ServerConfig(host="127.0.0.1", port=0))
    server = await start_reference_server(config, model)
    async with ReferenceClient(f"127.0.0.1:{server.port}", timeout=3600) as client:
        start = time.perf_counter()
        await client.logprobs([(s.token_ids, s.prompt_length) for s in seqs])  # request built inside: timed too
        elapsed = time.perf_counter() - start
    await server.stop(0)
    return sum(len(s.token_ids) for s in seqs) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "0.5b"], default="tiny")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--length", type=int, default=256, help="tokens per sequence, prompt included")
    parser.add_argument("--prompt-length", type=int, default=128)
    parser.add_argument("--max-batch-tokens", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--grpc", action="store_true", help="also time one request through a loopback server")
    args = parser.parse_args()

    from reference.model import ReferenceModel

    with tempfile.TemporaryDirectory() as workdir:
        hf_model, path = build_model(args.size, args.dtype, workdir)
        model = ReferenceModel.from_causal_lm(hf_model.to(args.device))
        seqs = sequences(args.sequences, args.length, args.prompt_length, model.vocab_size)
        rate = bench_core(model, seqs, args.max_batch_tokens, args.repeats)
        print(f"{args.size} {args.dtype} {args.device}: {args.sequences} x {args.length} tokens, "
              f"budget {args.max_batch_tokens}: core {rate:,.0f} tokens/s")
        if args.grpc:
            print(f"  through gRPC: {asyncio.run(bench_grpc(model, path, seqs, args.max_batch_tokens)):,.0f} tokens/s")


if __name__ == "__main__":
    main()
