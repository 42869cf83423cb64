"""Reference scoring: per-token log-probs of completions, packed into forward passes by a token budget.

    results = sequence_logprobs(model, sequences, max_batch_tokens=16384, return_entropy=False)

Sequences are sorted by length and packed so that (longest length in the batch) x (sequences in the
batch) stays within the budget, then results are put back in request order. Padding goes on the
right, so with a causal model every real token attends to exactly its own prefix: a sequence gets
the same log-probs alone or in any batch (up to float rounding of differently shaped matmuls).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from reference import metrics
from reference.model import ReferenceModel
from rlfleet.errors import InvalidRequest


@dataclass(frozen=True)
class TokenSequence:
    """One prompt + completion: `token_ids` holds prompt ids then completion ids."""

    token_ids: Sequence[int]
    prompt_length: int

    @property
    def completion_length(self) -> int:
        return len(self.token_ids) - self.prompt_length


@dataclass(frozen=True)
class SequenceResult:
    """Log-prob (and entropy) at each completion position of one sequence, in nats."""

    logprobs: torch.Tensor  # [T_c] float32
    entropies: torch.Tensor | None  # [T_c] float32, or None unless asked for


def validate_sequences(sequences: Sequence[TokenSequence], vocab_size: int, max_model_len: int) -> None:
    """Raises InvalidRequest naming the first bad sequence; accepts nothing the model cannot score."""
    if not sequences:
        raise InvalidRequest("sequences", "must hold at least one sequence")
    for i, seq in enumerate(sequences):
        n = len(seq.token_ids)
        if n == 0:
            raise InvalidRequest(f"sequences[{i}].token_ids", "is empty")
        if n > max_model_len:
            raise InvalidRequest(f"sequences[{i}].token_ids",
                                 f"has {n} tokens, more than the model's maximum of {max_model_len}")
        if not 1 <= seq.prompt_length <= n:
            raise InvalidRequest(f"sequences[{i}].prompt_length",
                                 f"is {seq.prompt_length}; must be in [1, {n}] (the number of token_ids)")
        top = max(seq.token_ids)
        if top >= vocab_size or min(seq.token_ids) < 0:
            bad = next(t for t in seq.token_ids if not 0 <= t < vocab_size)
            raise InvalidRequest(f"sequences[{i}].token_ids",
                                 f"token id {bad} at position {list(seq.token_ids).index(bad)} is outside "
                                 f"the vocabulary [0, {vocab_size})")


def plan_batches(lengths: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices grouped into batches, longest first, each with max(length) x count <= max_batch_tokens.

    A sequence longer than the budget on its own gets a batch of its own (a sequence is never split).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        # Sorted longest first, so the batch's first member sets its padded length.
        if current and lengths[current[0]] * (len(current) + 1) > max_batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def score_batch(model: ReferenceModel, batch: Sequence[TokenSequence], return_entropy: bool) -> list[SequenceResult]:
    """One forward pass over right-padded sequences; the head runs on completion positions only."""
    lengths = torch.tensor([len(s.token_ids) for s in batch])  # [B]
    prompts = torch.tensor([s.prompt_length for s in batch])  # [B]
    ids = torch.zeros(len(batch), int(lengths.max()), dtype=torch.long)  # [B, T]; pad id 0 is never attended
    for b, seq in enumerate(batch):
        ids[b, :len(seq.token_ids)] = torch.as_tensor(seq.token_ids, dtype=torch.long)
    completion = lengths - prompts  # [B]
    # Position t predicts token t + 1, so completion tokens P..L-1 are read from hidden states P-1..L-2.
    rows = torch.repeat_interleave(torch.arange(len(batch)), completion)  # [N]
    starts = torch.repeat_interleave(prompts - 1 - torch.cumsum(completion, 0) + completion, completion)  # [N]
    cols = starts + torch.arange(int(completion.sum()))  # [N]
    if int(completion.sum()) == 0:  # prompts only: nothing to predict
        return [SequenceResult(torch.empty(0), torch.empty(0) if return_entropy else None) for _ in batch]
    ids = ids.to(model.device)
    with torch.inference_mode():
        # No attention mask: padding sits after every real token, so the causal mask already hides it.
        hidden = model.backbone(input_ids=ids, use_cache=False).last_hidden_state  # [B, T, H]
        rows, cols = rows.to(model.device), cols.to(model.device)
        logprobs, entropy = model.head(hidden[rows, cols], ids[rows, cols + 1], return_entropy)  # [N], [N] | None
    logprobs = logprobs.cpu().split(completion.tolist())
    entropies = entropy.cpu().split(completion.tolist()) if entropy is not None else [None] * len(batch)
    return [SequenceResult(lp, ent) for lp, ent in zip(logprobs, entropies, strict=True)]


def sequence_logprobs(model: ReferenceModel, sequences: Sequence[TokenSequence], max_batch_tokens: int,
                      return_entropy: bool = False) -> list[SequenceResult]:
    """Scores every sequence (validated first) in token-budget batches; results in the order given."""
    validate_sequences(sequences, model.vocab_size, model.max_model_len)
    results: list[SequenceResult | None] = [None] * len(sequences)
    for batch in plan_batches([len(s.token_ids) for s in sequences], max_batch_tokens):
        for i, result in zip(batch, score_batch(model, [sequences[i] for i in batch], return_entropy), strict=True):
            results[i] = result
    return results  # type: ignore[return-value]  # every index is in exactly one batch


class ReferenceScorer:
    """The service's core: validates, then runs token-budget batches off the event loop, a bounded number at once."""

    def __init__(self, model: ReferenceModel, max_batch_tokens: int, max_concurrent_batches: int = 1):
        self.model = model
        self.max_batch_tokens = max_batch_tokens
        self._slots = asyncio.Semaphore(max_concurrent_batches)

    async def logprobs(self, sequences: Sequence[TokenSequence], return_entropy: bool = False) -> list[SequenceResult]:
        """Like `sequence_logprobs`, without blocking the event loop; records the service metrics."""
        start = time.perf_counter()
        validate_sequences(sequences, self.model.vocab_size, self.model.max_model_len)
        batches = plan_batches([len(s.token_ids) for s in sequences], self.max_batch_tokens)
        scored = await asyncio.gather(*(self._run([sequences[i] for i in b], return_entropy) for b in batches))
        results: list[SequenceResult | None] = [None] * len(sequences)
        for batch, batch_results in zip(batches, scored, strict=True):
            for i, result in zip(batch, batch_results, strict=True):
                results[i] = result
        metrics.record_request(sequences, time.perf_counter() - start)
        return results  # type: ignore[return-value]

    async def _run(self, batch: list[TokenSequence], return_entropy: bool) -> list[SequenceResult]:
        async with self._slots:
            start = time.perf_counter()
            results = await asyncio.to_thread(score_batch, self.model, batch, return_entropy)
        metrics.record_batch(batch, self.max_batch_tokens, time.perf_counter() - start)
        return results
