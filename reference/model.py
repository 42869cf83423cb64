"""The frozen reference model: loaded once in eval mode with gradients off, split into backbone and head."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from reference.config import ReferenceConfig

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Largest |difference| of log-probs between our head and the model's own forward accepted at load time.
# float32 differs by matmul order only; half types round the model's own logits to ~1e-2.
SELF_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.25, torch.float16: 0.05}


@dataclass
class ReferenceModel:
    """What scoring needs: the decoder stack, the float32 output projection, and the input limits."""

    backbone: torch.nn.Module  # token ids [B, T] -> last_hidden_state [B, T, H], final norm applied
    head_weight: torch.Tensor  # [V, H] in the model's dtype; the kernel casts each vocabulary chunk to float32
    vocab_size: int
    max_model_len: int
    dtype: torch.dtype
    device: torch.device
    head_chunk_tokens: int = 1024
    logprob_chunk_size: int = 4096

    def head(self, hidden: torch.Tensor, targets: torch.Tensor,
             return_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-prob of `targets` (and entropy) from final hidden states; logits and results in float32.

        hidden [N, H], targets [N] -> logprobs [N], entropy [N] | None. The learner's chunked kernel
        streams the vocabulary ([rows, logprob_chunk_size] floats at once); feeding it
        `head_chunk_tokens` rows at a time bounds memory whatever N a batch has.
        """
        from fused import selective_logprobs

        parts = [selective_logprobs(hidden[i:i + self.head_chunk_tokens], self.head_weight,
                                    targets[i:i + self.head_chunk_tokens], chunk_size=self.logprob_chunk_size,
                                    return_entropy=return_entropy)
                 for i in range(0, hidden.shape[0], self.head_chunk_tokens)]
        if not parts:
            empty = hidden.new_empty(0, dtype=torch.float32)
            return empty, (empty if return_entropy else None)
        logprobs = torch.cat([lp for lp, _ in parts])  # [N]
        return logprobs, (torch.cat([ent for _, ent in parts]) if return_entropy else None)

    @classmethod
    def from_causal_lm(cls, model: torch.nn.Module, max_model_len: int | None = None,
                       head_chunk_tokens: int = 1024, logprob_chunk_size: int = 4096) -> ReferenceModel:
        """Wraps a transformers `*ForCausalLM`; freezes it and checks that the head split is exact."""
        model.eval().requires_grad_(False)
        head = model.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("the model's output projection has a bias; the reference head does not support it")
        limit = getattr(model.config, "max_position_embeddings", None) or max_model_len
        if limit is None:
            raise ValueError("the model config has no max_position_embeddings; set max_model_len")
        weight = head.weight.detach()  # [V, H]
        ref = cls(backbone=model.get_decoder(), head_weight=weight, vocab_size=weight.shape[0],
                  max_model_len=min(max_model_len or limit, limit), dtype=next(model.parameters()).dtype,
                  device=weight.device, head_chunk_tokens=head_chunk_tokens, logprob_chunk_size=logprob_chunk_size)
        ref._self_check(model)
        return ref

    def _self_check(self, model: torch.nn.Module) -> None:
        """Refuses models whose logits are more than `hidden @ W.T` (soft-capping, logit scales, ...)."""
        generator = torch.Generator().manual_seed(0)
        ids = torch.randint(0, self.vocab_size, (1, min(16, self.max_model_len)), generator=generator)  # [1, T]
        ids = ids.to(self.device)
        with torch.inference_mode():
            full = model(input_ids=ids, use_cache=False).logits.float().log_softmax(-1)  # [1, T, V]
            expected = full[0, :-1].gather(1, ids[0, 1:, None]).squeeze(1)  # [T-1]
            hidden = self.backbone(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]  # [T-1, H]
            ours, _ = self.head(hidden, ids[0, 1:])
        gap = (ours - expected).abs().max().item()
        if gap > SELF_CHECK_TOLERANCE[self.dtype]:
            raise ValueError(f"the model transforms its logits beyond hidden @ W.T (log-prob gap {gap:.3g}); "
                             "this architecture is not supported by the reference service")
        log.info("reference head matches the model's own forward (max log-prob gap %.2g)", gap)


def load_reference_model(config: ReferenceConfig) -> ReferenceModel:
    """Loads `config.model` from a folder or the Hugging Face cache, in `config.dtype` on `config.device`."""
    from transformers import AutoModelForCausalLM

    from rlfleet.adapters.identity import resolve_model_dir

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    folder = resolve_model_dir(config.model)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[config.dtype]).to(config.device)
    ref = ReferenceModel.from_causal_lm(model, config.max_model_len, config.head_chunk_tokens,
                                        config.logprob_chunk_size)
    log.info("loaded %s (%s, vocab %d, max_model_len %d)", config.model, config.dtype, ref.vocab_size,
             ref.max_model_len)
    return ref
