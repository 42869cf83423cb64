"""Reference core: token-budget packing, the selective head, input validation, the load-time self-check."""

from __future__ import annotations

import math

import pytest
import torch

from reference.core import TokenSequence, plan_batches, sequence_logprobs, validate_sequences
from reference.model import ReferenceModel
from rlfleet.errors import InvalidRequest


def test_plan_batches_packs_by_padded_length_longest_first():
    # lengths 5, 2, 9, 3, 9 with budget 20: sorted longest first -> 2, 4, 0, 3, 1 (ties by index).
    # [2, 4] pads to 9 x 2 = 18 <= 20; adding 0 would be 9 x 3 = 27 > 20, so 0 starts a batch:
    # [0, 3, 1] pads to 5 x 3 = 15 <= 20.
    assert plan_batches([5, 2, 9, 3, 9], 20) == [[2, 4], [0, 3, 1]]


def test_plan_batches_gives_an_over_budget_sequence_its_own_batch():
    # 30 > budget 16 runs alone; then 8 x 2 = 16 fits exactly; a third 8 would make 24.
    assert plan_batches([8, 30, 8, 8], 16) == [[1], [0, 2], [3]]
    assert plan_batches([], 16) == []


def test_head_by_hand_across_row_and_vocabulary_chunks():
    # hidden [1, 0] against rows [1, 0], [0, 1], [0, 0] gives logits [1, 0, 0];
    # logsumexp = log(e + 2) = 1.551445; log p(0) = 1 - 1.551445 = -0.551445, log p(1) = -1.551445.
    # entropy = lse - sum p z = 1.551445 - e / (e + 2) = 1.551445 - 0.576117 = 0.975328.
    # One row per kernel call and 2 vocabulary rows per chunk: both chunkings are crossed.
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # [V=3, H=2]
    model = ReferenceModel(backbone=torch.nn.Identity(), head_weight=weight, vocab_size=3, max_model_len=8,
                           dtype=torch.float32, device=torch.device("cpu"), head_chunk_tokens=1, logprob_chunk_size=2)
    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])  # [N=3, H]
    logprobs, entropy = model.head(hidden, torch.tensor([0, 1, 2]), return_entropy=True)
    lse = math.log(math.e + 2)
    assert logprobs.tolist() == pytest.approx([1 - lse, -lse, -lse], abs=1e-6)
    assert entropy.tolist() == pytest.approx([lse - math.e / (math.e + 2)] * 3, abs=1e-6)
    empty, no_entropy = model.head(hidden[:0], torch.tensor([], dtype=torch.long))
    assert empty.shape == (0,) and no_entropy is None


@pytest.mark.parametrize(("sequence", "field", "words"), [
    (TokenSequence([1, 2, 262], 1), "sequences[1].token_ids", "token id 262 at position 2"),
    (TokenSequence([1, 2, 3], 0), "sequences[1].prompt_length", "is 0"),
    (TokenSequence([1, 2, 3], 4), "sequences[1].prompt_length", "[1, 3]"),
    (TokenSequence([1] * 11, 1), "sequences[1].token_ids", "11 tokens"),
    (TokenSequence([], 0), "sequences[1].token_ids", "empty"),
])
def test_validate_names_the_bad_sequence(sequence, field, words):
    with pytest.raises(InvalidRequest) as err:
        validate_sequences([TokenSequence([5, 6], 1), sequence], vocab_size=262, max_model_len=10)
    assert err.value.field == field and words in str(err.value)


def test_validate_rejects_an_empty_request_and_accepts_a_prompt_only_sequence():
    with pytest.raises(InvalidRequest, match="^sequences:"):
        validate_sequences([], vocab_size=262, max_model_len=10)
    validate_sequences([TokenSequence([261] * 10, 10)], vocab_size=262, max_model_len=10)


def _tiny(path: str, max_model_len: int | None = None) -> ReferenceModel:
    from transformers import AutoModelForCausalLM

    return ReferenceModel.from_causal_lm(AutoModelForCausalLM.from_pretrained(path), max_model_len)


def test_model_is_frozen_and_prompt_only_sequences_get_empty_results(tiny_model_dir):
    model = _tiny(tiny_model_dir, max_model_len=64)
    assert model.max_model_len == 64 and model.vocab_size == 262
    assert not any(p.requires_grad for p in model.backbone.parameters()) and not model.backbone.training
    results = sequence_logprobs(model, [TokenSequence([3, 4, 5], 3), TokenSequence([3, 4, 5], 2)], 64, True)
    assert [len(r.logprobs) for r in results] == [0, 1] and [len(r.entropies) for r in results] == [0, 1]
    assert results[1].logprobs.dtype == torch.float32 and results[1].logprobs.item() < 0


def test_self_check_refuses_a_model_that_rescales_its_logits(tiny_model_dir):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    class ScaledLogits(LlamaForCausalLM):
        """A Llama whose forward doubles its logits, as logit-scaled architectures do."""

        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 2
            return out

    model = ScaledLogits.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="not supported"):
        ReferenceModel.from_causal_lm(model)
    ReferenceModel.from_causal_lm(AutoModelForCausalLM.from_pretrained(tiny_model_dir))  # the plain one passes


def test_bfloat16_model_returns_float32_close_to_the_float32_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    sequences = [TokenSequence(list(range(5, 105)), 20)]
    full = _tiny(tiny_model_dir)
    half = ReferenceModel.from_causal_lm(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and half.head_weight.dtype == torch.bfloat16  # no float32 copy kept
    (lp32,), (lp16,) = (sequence_logprobs(m, sequences, 4096) for m in (full, half))
    # bf16 keeps 8 mantissa bits through 4 layers; measured gap ~7e-3 nats on log-probs around -5.6.
    assert lp16.logprobs.dtype == torch.float32
    assert (lp16.logprobs - lp32.logprobs).abs().max() < 0.05
