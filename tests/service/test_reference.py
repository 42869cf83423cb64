"""Reference service over real loopback gRPC on the tiny model: exact log-probs, batch invariance, bad input."""

from __future__ import annotations

import asyncio
import random
import urllib.request

import grpc
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from reference.config import ReferenceConfig
from reference.model import ReferenceModel
from reference.server import start_reference_server
from rlfleet.clients import ReferenceClient
from rlfleet.config import ServerConfig

# float32 forward passes of the same tokens differ only by the order of matmul sums: measured
# gaps are ~2e-6 nats; 1e-4 leaves room for other BLAS builds while catching any off-by-one.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ref_model(hf_model) -> ReferenceModel:
    return ReferenceModel.from_causal_lm(hf_model, max_model_len=512)


def _config(model_dir: str, **overrides) -> ReferenceConfig:
    return ReferenceConfig(model=model_dir, server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0),
                           **overrides)


Sequence = tuple[list[int], int]  # (token_ids, prompt_length)


def _call(config: ReferenceConfig, model: ReferenceModel, *calls):
    """Starts the real server, runs each call (a function of a ReferenceClient) and keeps its reply or error, stops."""
    async def run():
        server = await start_reference_server(config, model)
        replies = []
        async with ReferenceClient(f"127.0.0.1:{server.port}", timeout=120) as client:
            for call in calls:
                try:
                    replies.append(await call(client))
                except grpc.aio.AioRpcError as err:
                    replies.append(err)
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode())
        await server.stop(0)
        return replies, text

    return asyncio.run(run())


def _random_sequences(shapes, vocab=262, seed=0) -> list[Sequence]:
    rng = random.Random(seed)
    return [([rng.randrange(vocab) for _ in range(n)], p) for n, p in shapes]


def _logprobs(sequences: list[Sequence], return_entropy: bool = False):
    return lambda client: client.logprobs(sequences, return_entropy)


def _direct(hf_model, seq: Sequence) -> tuple[torch.Tensor, torch.Tensor]:
    """log p and entropy at completion positions from transformers' own full forward pass (float32)."""
    token_ids, p = seq
    ids = torch.tensor([token_ids])  # [1, T]
    with torch.no_grad():
        full = hf_model(input_ids=ids).logits.float().log_softmax(-1)[0]  # [T, V]
    logprobs = full[p - 1:-1].gather(1, ids[0, p:, None]).squeeze(1)  # [T - P]
    entropy = -(full.exp() * full).sum(-1)[p - 1:-1]  # [T - P]
    return logprobs, entropy


def test_logprobs_equal_a_direct_transformers_forward(tiny_model_dir, hf_model, ref_model):
    sequences = _random_sequences([(12, 4), (70, 30), (5, 5), (130, 1), (40, 39)])
    (reply, info), _ = _call(_config(tiny_model_dir, max_batch_tokens=256), ref_model,
                             _logprobs(sequences, return_entropy=True), lambda client: client.info())
    assert len(reply) == len(sequences)
    for seq, result in zip(sequences, reply, strict=True):
        expected_lp, expected_ent = _direct(hf_model, seq)
        assert len(result.logprobs) == len(result.entropies) == len(seq[0]) - seq[1]
        assert torch.allclose(torch.tensor(result.logprobs), expected_lp, atol=TOLERANCE)
        assert torch.allclose(torch.tensor(result.entropies), expected_ent, atol=TOLERANCE)
    assert (info.vocab_size, info.max_model_len, info.dtype, info.max_batch_tokens) == (262, 512, "float32", 256)
    assert len(info.base_model_id) == 16


def test_batch_invariance_across_mixed_lengths(tiny_model_dir, ref_model):
    # Budget 200 packs these 9 lengths into several batches with lots of padding (e.g. 90 next to 3).
    shapes = [(90, 10), (3, 1), (45, 44), (17, 2), (90, 80), (8, 3), (60, 20), (2, 1), (33, 11)]
    sequences = _random_sequences(shapes, seed=1)
    calls = [_logprobs(sequences)] + [_logprobs([s]) for s in sequences]
    (mixed, *alone), text = _call(_config(tiny_model_dir, max_batch_tokens=200), ref_model, *calls)
    for i, single in enumerate(alone):
        assert torch.allclose(torch.tensor(mixed[i].logprobs), torch.tensor(single[0].logprobs),
                              atol=1e-5), f"sequence {i}"
    assert mixed[0].entropies is None  # not asked for
    families = {f.name: f for f in text_string_to_metric_families(text)}
    fill = {s.name: s.value for s in families["rlfleet_reference_batch_fill_ratio"].samples}
    assert fill["rlfleet_reference_batch_fill_ratio_count"] >= 1 + len(sequences)
    completion = sum(n - p for n, p in shapes)
    tokens = {s.labels["part"]: s.value for s in families["rlfleet_reference_tokens"].samples
              if s.name == "rlfleet_reference_tokens_total"}
    assert tokens["completion"] >= 2 * completion


@pytest.mark.parametrize(("bad", "field"), [
    (([1, 2, 300], 1), "sequences[2].token_ids"),
    (([1, 2, 3], 0), "sequences[2].prompt_length"),
    (([1, 2, 3], 4), "sequences[2].prompt_length"),
    (([1] * 513, 1), "sequences[2].token_ids"),
])
def test_bad_input_is_invalid_argument_naming_the_sequence(tiny_model_dir, ref_model, bad, field):
    good = _random_sequences([(6, 2), (4, 1)])
    (err, ok), _ = _call(_config(tiny_model_dir), ref_model, _logprobs([*good, bad]), _logprobs(good))
    assert isinstance(err, grpc.aio.AioRpcError) and err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field + ":")
    assert [len(r.logprobs) for r in ok] == [4, 3]  # the service still answers good requests


@pytest.mark.slow
def test_a_request_over_4_mib_of_tokens(tmp_path):
    """gRPC's default message limit is 4 MiB; rollout batches are bigger. A 1-layer, width-32 model keeps it fast."""
    from transformers import AutoModelForCausalLM

    from launcher.tiny_model import TinyModelSpec, build_tiny_model

    path = build_tiny_model(tmp_path / "micro", TinyModelSpec(hidden_size=32, num_layers=1, num_heads=1,
                                                               num_kv_heads=1, intermediate_size=64))
    model = ReferenceModel.from_causal_lm(AutoModelForCausalLM.from_pretrained(path))
    # Ids 128..261 take 2 bytes each as varints: 8,400 sequences x 256 tokens = 2.15 M tokens, ~4.3 MB.
    rng = random.Random(0)
    sequences = [([rng.randrange(128, 262) for _ in range(256)], 255) for _ in range(8400)]
    assert sum(2 * len(ids) for ids, _ in sequences) > 4 * 1024 * 1024  # 2 bytes per id on the wire, and more
    (reply,), _ = _call(_config(str(path), max_batch_tokens=65536), model, _logprobs(sequences))
    assert isinstance(reply, list), reply
    assert len(reply) == 8400 and all(len(r.logprobs) == 1 for r in reply)
    assert all(r.logprobs[0] < 0 for r in reply)
