"""Config of the reference service (`[reference]` table): which model, its dtype, and the token budget."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlfleet.config import ServiceConfig


class ReferenceConfig(ServiceConfig):
    """Serves per-token log-probs of completions under the frozen reference model."""

    section = "reference"

    model: str = Field(min_length=1)
    """Hugging Face model folder or hub name of the frozen reference policy (the base model for LoRA runs)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """torch dtype the model runs in; the log-softmax over the vocabulary is always computed in float32."""
    max_batch_tokens: int = Field(16384, ge=64)
    """Token budget of one forward pass, counted as padded length x sequences; bounds activation memory."""
    max_model_len: int | None = Field(None, ge=2)
    """Longest sequence accepted (prompt + completion); unset uses the model's max_position_embeddings."""
    max_concurrent_batches: int = Field(1, ge=1, le=64)
    """Forward passes running at once across all requests; more only helps when one pass leaves the device idle."""
    head_chunk_tokens: int = Field(1024, ge=1)
    """Completion positions sent to the log-prob kernel at once (rows of its float32 [rows, chunk] logits)."""
    logprob_chunk_size: int = Field(4096, ge=1)
    """Vocabulary chunk of the selective log-prob kernel (fused), as the learner's option of that name."""
    device: str = "cpu"
    """torch device, e.g. "cpu" or "cuda:0"."""
    num_threads: int | None = Field(None, ge=1)
    """torch intra-op CPU threads; unset keeps torch's default (OMP_NUM_THREADS)."""
