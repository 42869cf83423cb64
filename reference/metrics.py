"""Prometheus metrics of the reference service (`rlfleet_reference_*`), on the shared registry."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import Counter, Histogram

from rlfleet.metrics import LATENCY_BUCKETS

if TYPE_CHECKING:
    from reference.core import TokenSequence

SEQUENCES = Counter("rlfleet_reference_sequences_total", "Sequences scored.")
TOKENS = Counter("rlfleet_reference_tokens_total",
                 "Tokens run through the model, by part: prompt or completion (completion tokens get a log-prob).",
                 ["part"])
REQUEST_LATENCY = Histogram("rlfleet_reference_request_duration_seconds",
                            "Wall time of one LogProbs request, validation to last batch.", buckets=LATENCY_BUCKETS)
BATCH_LATENCY = Histogram("rlfleet_reference_batch_duration_seconds",
                          "Wall time of one forward pass (token-budget batch), queueing excluded.",
                          buckets=LATENCY_BUCKETS)
BATCH_FILL = Histogram("rlfleet_reference_batch_fill_ratio",
                       "Real (unpadded) tokens of a batch divided by max_batch_tokens.",
                       buckets=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 2.0, 4.0))
BATCH_PADDING = Histogram("rlfleet_reference_batch_padding_ratio",
                          "Padding tokens of a batch divided by its padded size (waste from length mismatch).",
                          buckets=(0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0))


def record_request(sequences: Sequence[TokenSequence], seconds: float) -> None:
    """Counts one answered request."""
    prompt = sum(s.prompt_length for s in sequences)
    total = sum(len(s.token_ids) for s in sequences)
    SEQUENCES.inc(len(sequences))
    TOKENS.labels("prompt").inc(prompt)
    TOKENS.labels("completion").inc(total - prompt)
    REQUEST_LATENCY.observe(seconds)


def record_batch(batch: Sequence[TokenSequence], max_batch_tokens: int, seconds: float) -> None:
    """Records one forward pass: its latency, how full the budget was, and how much of it was padding."""
    lengths = [len(s.token_ids) for s in batch]
    real, padded = sum(lengths), max(lengths) * len(lengths)
    BATCH_LATENCY.observe(seconds)
    BATCH_FILL.observe(real / max_batch_tokens)
    BATCH_PADDING.observe(1 - real / padded)
