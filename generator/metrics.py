"""Prometheus metrics of the generator (vLLM's own `vllm:*` metrics share the same registry and endpoint)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from rlfleet.metrics import LATENCY_BUCKETS

TOKENS_GENERATED = Counter(
    "rlfleet_generator_tokens_generated_total", "Completion tokens generated (every sample of every group).")
PROMPT_TOKENS = Counter(
    "rlfleet_generator_prompt_tokens_total", "Prompt tokens submitted (once per prompt, not per sample).")
REQUESTS = Counter(
    "rlfleet_generator_requests_total",
    "Prompt groups (one vLLM request of n samples) by outcome: finished, aborted (call cancelled), "
    "failed (engine error), rejected (overloaded).", ["status"])
COMPLETIONS = Counter(
    "rlfleet_generator_completions_total", "Completions by finish reason.", ["finish_reason"])
TIME_TO_FIRST_TOKEN = Histogram(
    "rlfleet_generator_time_to_first_token_seconds", "Time from a prompt's arrival in the engine to its first token.",
    buckets=LATENCY_BUCKETS)
REQUEST_LATENCY = Histogram(
    "rlfleet_generator_request_duration_seconds", "Time from a prompt's submission to its whole group being done.",
    buckets=LATENCY_BUCKETS)
RUNNING = Gauge("rlfleet_generator_running_requests", "Requests the engine is generating now.")
WAITING = Gauge("rlfleet_generator_waiting_requests", "Requests the engine holds waiting for a slot.")
IN_FLIGHT = Gauge("rlfleet_generator_in_flight_requests", "Prompts admitted and not yet finished (bounded by max_concurrent_requests).")
POLICY_VERSION = Gauge("rlfleet_generator_policy_version", "Adapter version serving new requests (0 = base model).")
LOADED_VERSIONS = Gauge("rlfleet_generator_loaded_adapters", "Adapter versions loaded in the engine.")
ADAPTER_LOADS = Counter(
    "rlfleet_generator_adapter_loads_total", "LoadAdapter outcomes: loaded, rejected.", ["status"])
ADAPTER_LOAD_TIME = Histogram(
    "rlfleet_generator_adapter_load_seconds", "Time from an adapter's first chunk to it serving new requests.",
    buckets=LATENCY_BUCKETS)
ADAPTER_BYTES = Counter("rlfleet_generator_adapter_bytes_total", "Adapter payload bytes received and loaded.")
