"""Server interceptors: the one place domain errors become status codes, plus readiness, auth and RPC metrics.

kserve's ExceptionToStatusInterceptor is the model: servicers contain no try/except; whatever they
raise is mapped here, so every service answers the same way for the same kind of failure.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc import aio

from rlfleet import errors
from rlfleet.metrics import RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS

log = logging.getLogger(__name__)

_STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Rejected, grpc.StatusCode.FAILED_PRECONDITION),
)

# Health checks stay open without a token so that probes (Docker, Kubernetes) need no secret.
_PUBLIC_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def status_for(exc: BaseException) -> grpc.StatusCode:
    """The status code a domain error maps to; INTERNAL for anything unexpected."""
    for kind, code in _STATUS_OF:
        if isinstance(exc, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _wrap_handler(handler: grpc.RpcMethodHandler, wrap_unary, wrap_stream) -> grpc.RpcMethodHandler:
    """Returns a copy of `handler` whose behaviour is wrapped (unary or streaming response)."""
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(
            wrap_unary(handler.unary_unary), handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(
            wrap_unary(handler.stream_unary), handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(
            wrap_stream(handler.unary_stream), handler.request_deserializer, handler.response_serializer)
    return grpc.stream_stream_rpc_method_handler(
        wrap_stream(handler.stream_stream), handler.request_deserializer, handler.response_serializer)


class ReadinessGate:
    """Services that answer UNAVAILABLE until their server is ready (rlfleet.server.GrpcServer.set_ready).

    Health and reflection are never gated. A refused call that streams requests is read to its end
    first: a status sent while the client was still streaming crashed the client's gRPC core (grpcio
    1.85: "ILLEGAL STATE: FORWARDED_BATCH").
    """

    def __init__(self, name: str):
        self.name = name
        self.services: set[str] = set()
        self.ready = False

    def refuses(self, method: str) -> bool:
        """Whether a call to `method` ("/package.Service/Method") is refused now."""
        return not self.ready and method.split("/", 2)[1] in self.services

    def refusal(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` with its behaviour replaced by a NotReady error (mapped to UNAVAILABLE)."""
        error = errors.NotReady(f"{self.name} is still loading (health NOT_SERVING); retry when it reports SERVING")

        async def refuse(request, context):
            if handler.request_streaming:
                async for _ in request:
                    pass
            raise error

        async def refuse_stream(request, context):
            await refuse(request, context)
            yield  # pragma: no cover - makes this an async generator

        return _wrap_handler(handler, lambda _fn: refuse, lambda _fn: refuse_stream)


class ErrorAndMetricsInterceptor(aio.ServerInterceptor):
    """Maps raised domain errors to status codes and records per-RPC counts and latency.

    It also applies `gate` (refusing gated services' calls until ready) rather than a second
    interceptor would: each interceptor costs every call a coroutine hop, and the gate's check is one
    attribute lookup once the server is ready.
    """

    def __init__(self, service: str, gate: ReadinessGate | None = None):
        self.service = service
        self.gate = gate

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        if self.gate is not None and not self.gate.ready and self.gate.refuses(details.method):
            handler = self.gate.refusal(handler)
        method = details.method.rsplit("/", 1)[-1]
        return _wrap_handler(handler, lambda fn: self._unary(fn, method), lambda fn: self._stream(fn, method))

    async def _fail(self, context: aio.ServicerContext, exc: BaseException, method: str) -> None:
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s.%s failed", self.service, method, exc_info=exc)
        await context.abort(code, str(exc) or type(exc).__name__)

    def _record(self, method: str, context: aio.ServicerContext, start: float) -> None:
        code = context.code() if hasattr(context, "code") else None
        name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
        RPC_REQUESTS.labels(self.service, method, name).inc()
        RPC_LATENCY.labels(self.service, method).observe(time.perf_counter() - start)
        RPC_IN_FLIGHT.labels(self.service).dec()

    def _unary(self, fn: Callable[..., Awaitable], method: str):
        async def wrapped(request, context):
            start = time.perf_counter()
            RPC_IN_FLIGHT.labels(self.service).inc()
            try:
                return await fn(request, context)
            except aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                await self._fail(context, exc, method)
            finally:
                self._record(method, context, start)
        return wrapped

    def _stream(self, fn: Callable[..., AsyncIterator], method: str):
        async def wrapped(request, context):
            start = time.perf_counter()
            RPC_IN_FLIGHT.labels(self.service).inc()
            try:
                async for item in fn(request, context):
                    yield item
            except aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, exc, method)
            finally:
                self._record(method, context, start)
        return wrapped


class BearerTokenInterceptor(aio.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` (health checks excepted) with UNAUTHENTICATED."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(_PUBLIC_PREFIXES):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        sent = sent.encode() if isinstance(sent, str) else sent
        if hmac.compare_digest(sent, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None

        async def deny_unary(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization' metadata")

        async def deny_stream(request, context):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization' metadata")
            yield  # pragma: no cover - makes this an async generator

        return _wrap_handler(handler, lambda _fn: deny_unary, lambda _fn: deny_stream)
