"""Model-based reward: a tiny locally built classifier, batch invariance, and serving it over gRPC."""

from __future__ import annotations

import asyncio

import pytest

from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.model import RewardModel
from reward_server.server import start_server
from rlfleet.clients import RewardClient
from rlfleet.config import ServerConfig
from rlfleet.outcomes import RewardItem, RewardStatus


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory) -> str:
    """A tiny LlamaForSequenceClassification (one label) with the byte tokenizer, random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from launcher.tiny_model import build_tokenizer

    out = tmp_path_factory.mktemp("classifier")
    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=128, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return str(out)


def test_batches_respect_the_token_budget():
    model = RewardModel.__new__(RewardModel)
    model.max_batch_tokens = 10
    # sorted lengths 2, 3, 4, 6: [2, 3] costs 3 * 2 = 6; adding 4 would cost 4 * 3 = 12 > 10; [4] then 6 * 2 = 12 > 10
    assert model.batches([6, 2, 4, 3]) == [[1, 3], [2], [0]]
    assert model.batches([50]) == [[0]]  # longer than the budget: alone


@pytest.mark.slow  # the fixture imports torch and builds the model (~15 s on 2 shared cores)
def test_scores_do_not_depend_on_batch_composition(classifier_dir):
    model = RewardModel(classifier_dir, max_batch_tokens=4096)
    texts = ["short", "a much longer completion " * 6, "mid length text here", "x"]
    alone = [model.score([t])[0] for t in texts]
    together = model.score(texts)
    reversed_ = model.score(texts[::-1])[::-1]
    assert together == pytest.approx(alone, abs=1e-4)
    assert reversed_ == pytest.approx(alone, abs=1e-4)
    assert len(set(round(a, 4) for a in alone)) == 4  # the scores differ: a constant would pass trivially


@pytest.mark.slow
def test_model_served_over_grpc_with_a_builtin(classifier_dir):
    config = RewardConfig(model=classifier_dir, model_weight=2.0, reward=["think_answer_format:1"],
                          server=ServerConfig(host="127.0.0.1", port=0))

    async def run():
        core = RewardCore(config)
        core.start_workers()
        server = await start_server(config.server, core)
        async with RewardClient(f"127.0.0.1:{server.port}") as client:
            items = [RewardItem("q: ", c) for c in ("<think>a</think><answer>b</answer>", "no format", "x" * 40)]
            together = await client.score(items)
            alone = await client.score(items[1:2])
            listed = await client.list_rewards()
        await server.stop(0)
        core.close()
        return together, alone, listed

    together, alone, listed = asyncio.run(run())
    first = together[0]
    assert first.status is RewardStatus.OK
    # total = 1.0 * format + 2.0 * model score
    assert first.reward == pytest.approx(first.components["think_answer_format"] + 2 * first.components["model"])
    assert together[1].components["model"] == pytest.approx(alone[0].components["model"], abs=1e-4)
    assert [(s.name, s.kind) for s in listed] == [("think_answer_format", "builtin"), ("model", "model")]
