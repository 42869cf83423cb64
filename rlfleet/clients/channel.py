"""gRPC channels under every client: deadlines on every call, retries, round-robin over replicas.

    channel = make_channel("dns:///generator:50051", ClientConfig(timeout_seconds=120))

The typed clients (`rlfleet.clients`) open their channels here; code that deliberately sends
malformed protos (service tests) may open one directly.

- Every call gets `timeout_seconds` as its deadline unless it passes its own (a call without a
  deadline can hang a trainer forever).
- Retries live in the gRPC service config, for UNAVAILABLE and RESOURCE_EXHAUSTED only.
- `round_robin` load balancing: a `dns:///name:port` target spreads calls over every address the
  name resolves to, which is how scaled generators (`docker compose --scale`) are all used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Self

import grpc
from grpc import aio

from rlfleet.config import ClientConfig
from rlfleet.server import channel_options


def service_config(max_attempts: int) -> str:
    """The JSON gRPC service config: round-robin balancing and a retry policy for transient codes."""
    config: dict = {"loadBalancingConfig": [{"round_robin": {}}]}
    if max_attempts > 1:
        config["methodConfig"] = [{
            "name": [{}],  # every service and method
            "retryPolicy": {
                "maxAttempts": max_attempts,
                "initialBackoff": "0.1s",
                "maxBackoff": "5s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        }]
    return json.dumps(config)


class _Defaults:
    """Fills in the default deadline and the auth metadata of a call."""

    def __init__(self, timeout: float, token: str | None):
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def details(self, d: aio.ClientCallDetails) -> aio.ClientCallDetails:
        metadata = aio.Metadata(*(d.metadata or ()), *self.metadata) if self.metadata else d.metadata
        return aio.ClientCallDetails(d.method, d.timeout if d.timeout is not None else self.timeout,
                                     metadata, d.credentials, d.wait_for_ready)


class _UnaryUnary(_Defaults, aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):
        return await continuation(self.details(details), request)


class _UnaryStream(_Defaults, aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):
        return await continuation(self.details(details), request)


class _StreamUnary(_Defaults, aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, details, request_iterator):
        return await continuation(self.details(details), request_iterator)


class _StreamStream(_Defaults, aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, details, request_iterator):
        return await continuation(self.details(details), request_iterator)


def _options(config: ClientConfig) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = list(channel_options(config.max_message_bytes))
    options += [("grpc.service_config", service_config(config.max_attempts)), ("grpc.enable_retries", 1)]
    if config.tls_ca_file and config.tls_server_name:  # the name to verify (and send as SNI) instead of the host
        options.append(("grpc.ssl_target_name_override", config.tls_server_name))
    return options


def make_channel(target: str, config: ClientConfig | None = None) -> aio.Channel:
    """An asyncio channel to `target` with rlfleet's defaults; create it inside the running loop."""
    config = config or ClientConfig()
    interceptors: Sequence[aio.ClientInterceptor] = [
        cls(config.timeout_seconds, config.auth_token) for cls in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)]
    if config.tls_ca_file:
        creds = grpc.ssl_channel_credentials(config.tls_ca_file.read_bytes())
        return aio.secure_channel(target, creds, options=_options(config), interceptors=interceptors)
    return aio.insecure_channel(target, options=_options(config), interceptors=interceptors)


def make_sync_channel(target: str, config: ClientConfig | None = None) -> grpc.Channel:
    """A blocking channel with the same options (for CLIs and health probes); pass `timeout=` per call."""
    config = config or ClientConfig()
    if config.tls_ca_file:
        creds = grpc.ssl_channel_credentials(config.tls_ca_file.read_bytes())
        return grpc.secure_channel(target, creds, options=_options(config))
    return grpc.insecure_channel(target, options=_options(config))


def auth_metadata(config: ClientConfig) -> tuple[tuple[str, str], ...]:
    """Metadata to pass explicitly on sync channels (the async ones add it themselves)."""
    return (("authorization", f"Bearer {config.auth_token}"),) if config.auth_token else ()


class ChannelClient:
    """Base of the typed clients: one channel to `target`, closed by `close()` or by leaving `async with`."""

    def __init__(self, target: str, config: ClientConfig | None = None):
        self.target = target
        self.config = config or ClientConfig()
        self._channel = make_channel(target, self.config)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
