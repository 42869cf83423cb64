"""Prometheus metrics of the reward server (shared registry; served by rlfleet.metrics' /metrics endpoint)."""

from __future__ import annotations

import threading
from collections import deque

from prometheus_client import Counter, Gauge, Histogram

from rlfleet.metrics import LATENCY_BUCKETS, child

ITEMS_SCORED = Counter(
    "rlfleet_reward_items_scored_total", "Items scored, by reward component and status.", ["reward", "status"])
SCORE_LATENCY = Histogram(
    "rlfleet_reward_score_duration_seconds", "Wall time of one call of a reward on a chunk of items, by reward.",
    ["reward"], buckets=(0.0001, 0.0005, *LATENCY_BUCKETS))
WORKER_RESTARTS = Counter(
    "rlfleet_reward_worker_restarts_total", "Worker processes killed and replaced, by reason.", ["reason"])
QUEUE_ITEMS = Gauge(
    "rlfleet_reward_queue_items", "Items accepted and not yet scored (queued or running).")
REJECTED_ITEMS = Counter(
    "rlfleet_reward_rejected_items_total", "Items refused with RESOURCE_EXHAUSTED because the queue was full.")
DUPLICATE_REQUESTS = Counter(
    "rlfleet_reward_duplicate_requests_total", "Score calls answered from an earlier call with the same request_id.")
MEAN_REWARD = Gauge(
    "rlfleet_reward_component_mean", "Mean value of each reward component over the last window of OK items.",
    ["reward"])


class WindowMean:
    """Mean of the last `size` values per component, published to MEAN_REWARD (computed when scraped)."""

    def __init__(self, size: int):
        self.size = size
        self._values: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, component: str, values: list[float]) -> None:
        if not values:
            return
        with self._lock:
            window = self._values.get(component)
            if window is None:
                window = self._values[component] = deque(maxlen=self.size)
                # The mean is taken when /metrics is scraped, not at every Score call (a sum over the window).
                child(MEAN_REWARD, component).set_function(lambda: self._mean(window))
            window.extend(values)

    def _mean(self, window: deque[float]) -> float:
        with self._lock:
            return sum(window) / len(window)
