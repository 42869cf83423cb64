"""Prometheus metrics shared by every service: per-RPC counters and latency, and the /metrics endpoint.

Naming follows Prometheus rules: `rlfleet_` prefix, `_total` counters, base units (`_seconds`,
`_bytes`), label values from small fixed sets (method names and status codes, never request ids).
Service-specific metrics live in each service's own `metrics.py` and use the same registry.
"""

from __future__ import annotations

import functools
import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

# Latency buckets from 1 ms to 5 min: RPCs range from health checks to whole generation batches.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

RPC_REQUESTS = Counter(
    "rlfleet_grpc_requests_total", "gRPC calls handled, by method and final status code.",
    ["service", "method", "code"])
RPC_LATENCY = Histogram(
    "rlfleet_grpc_request_duration_seconds", "Wall time from call start to final status, by method.",
    ["service", "method"], buckets=LATENCY_BUCKETS)
RPC_IN_FLIGHT = Gauge(
    "rlfleet_grpc_requests_in_flight", "gRPC calls being handled now.", ["service"])
SERVICE_UP = Gauge(
    "rlfleet_service_ready", "1 when the service reports SERVING on its health endpoint, else 0.", ["service"])
AUTH_FAILURES = Counter(
    "rlfleet_auth_failures_total", "Calls refused with UNAUTHENTICATED (no or wrong bearer token).", ["service"])


@functools.cache
def child(metric, *labels: str):
    """`metric.labels(*labels)`, looked up once: prometheus_client's labels() costs ~5 us a call (a lock and a
    check of every label), and an RPC paid it ~9 times. Label values come from small fixed sets, so the
    cache stays small."""
    return metric.labels(*labels)


def start_metrics_server(port: int | None, host: str = "127.0.0.1",
                         registry: CollectorRegistry = REGISTRY) -> int | None:
    """Serves `registry` at http://HOST:PORT/metrics in a daemon thread; returns the bound port."""
    if port is None:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    bound = server.server_address[1]
    log.info("metrics on %s:%d/metrics", host, bound)
    return bound
