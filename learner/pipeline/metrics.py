"""Prometheus metrics of the in-learner rollout pipeline (rollout-side metrics, not only trainer logs)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from rlfleet.metrics import LATENCY_BUCKETS

PROMPTS = Counter(
    "rlfleet_pipeline_prompts_total",
    "Prompts by outcome: trained, or dropped with a reason (reward_error, uniform_rewards, stale_requeued, run_ended).",
    ["outcome"])
GROUPS_READY = Gauge("rlfleet_pipeline_ready_groups", "Scored groups waiting to be batched.")
INFLIGHT = Gauge("rlfleet_pipeline_inflight_requests", "Generate calls in flight across all generators.")
GENERATORS = Gauge("rlfleet_pipeline_generators_up", "Generators that passed their last health probe and are not benched.")
GENERATOR_FAILURES = Counter(
    "rlfleet_pipeline_generator_failures_total", "Generate calls that failed or timed out (their prompts were resubmitted).")
GENERATE_LATENCY = Histogram(
    "rlfleet_pipeline_generate_seconds", "Wall time of one Generate call.", buckets=LATENCY_BUCKETS)
REWARD_LATENCY = Histogram(
    "rlfleet_pipeline_score_seconds", "Wall time of scoring one group on one reward service.", ["service"],
    buckets=LATENCY_BUCKETS)
REWARD_ITEMS = Counter(
    "rlfleet_pipeline_reward_items_total", "Completions scored, by reward service and status.", ["service", "status"])
REWARD_UNAVAILABLE = Counter(
    "rlfleet_pipeline_reward_unavailable_total", "Score calls that failed and were retried (the pipeline paused).",
    ["service"])
REFERENCE_LATENCY = Histogram(
    "rlfleet_pipeline_reference_seconds", "Wall time of one reference LogProbs call.", buckets=LATENCY_BUCKETS)
