"""Server interceptors: the one place domain errors become status codes, plus readiness, limits, auth and RPC metrics.

kserve's ExceptionToStatusInterceptor is the model: servicers contain no try/except; whatever they
raise is mapped here, so every service answers the same way for the same kind of failure.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
from grpc import aio

from rlfleet import cpu, errors
from rlfleet.metrics import AUTH_FAILURES, RPC_IN_FLIGHT, RPC_LATENCY, RPC_REQUESTS, child

log = logging.getLogger(__name__)

_STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotReady, grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.Rejected, grpc.StatusCode.FAILED_PRECONDITION),
)

# Health checks stay open without a token so that probes (Docker, Kubernetes) need no secret.
# Reflection is not among them: it lists the whole API (rlfleet.server serves it only when asked).
_PUBLIC_PREFIX = "/grpc.health.v1.Health/"
# Long-lived streams of the cheap services, counted in their own small budget (see CallLimits).
_PROBE_STREAMS = ("/grpc.health.v1.Health/Watch", "/grpc.reflection.")
_HEALTH_CHECK = "/grpc.health.v1.Health/Check"


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


async def _drain(request) -> None:
    """Reads a request stream to its end: a status sent while the client was still streaming crashed the
    client's gRPC core (grpcio 1.85: "ILLEGAL STATE: FORWARDED_BATCH")."""
    async for _ in request:
        pass


class CallLimit:
    """How many calls of one kind may run at once; the one past it is refused with Overloaded.

    It replaces grpc's `maximum_concurrent_rpcs`, which counts every call alike: 8 open reflection
    streams (no token needed) used up a server's whole budget, and authenticated calls and health
    checks then got RESOURCE_EXHAUSTED. No lock: the aio server runs every handler on one event loop.
    """

    def __init__(self, limit: int, what: str, option: str):
        self.limit = limit
        self.in_use = 0
        self._error = errors.Overloaded(f"{limit} {what} in progress, the most this server takes at once "
                                        f"({option}); retry later")

    def acquire(self) -> bool:
        """Takes a slot; False (nothing taken) when all are in use."""
        if self.in_use >= self.limit:
            return False
        self.in_use += 1
        return True

    def release(self) -> None:
        self.in_use -= 1

    async def refuse(self, request, request_streaming: bool):
        """Raises the Overloaded error, after reading a request stream to its end."""
        if request_streaming:
            await _drain(request)
        raise self._error


class CallLimits:
    """Separate budgets for application RPCs and for the probe streams (health Watch, reflection).

    Health Check is counted in neither: it is one short unary call, and a liveness probe must get its
    answer however many other calls are open.
    """

    def __init__(self, max_rpcs: int, max_probe_streams: int):
        self.rpcs = CallLimit(max_rpcs, "calls", "server.max_concurrent_rpcs")
        self.probe_streams = CallLimit(max_probe_streams, "health Watch / reflection streams",
                                       "server.max_probe_streams")

    def for_method(self, method: str) -> CallLimit | None:
        if method.startswith(_PROBE_STREAMS):
            return self.probe_streams
        return None if method == _HEALTH_CHECK else self.rpcs


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
                await _drain(request)
            raise error

        async def refuse_stream(request, context):
            await refuse(request, context)
            yield  # pragma: no cover - makes this an async generator

        return _wrap_handler(handler, lambda _fn: refuse, lambda _fn: refuse_stream)


class ErrorAndMetricsInterceptor(aio.ServerInterceptor):
    """Maps raised domain errors to status codes, applies the call limits and records per-RPC counts and latency.

    It also applies `gate` (refusing gated services' calls until ready) rather than a second
    interceptor would: each interceptor costs every call a coroutine hop, and the gate's check is one
    attribute lookup once the server is ready.
    """

    def __init__(self, service: str, gate: ReadinessGate | None = None, limits: CallLimits | None = None):
        self.service = service
        self.gate = gate
        self.limits = limits
        # method -> (the handler grpc found, its wrapped copy): grpc hands the same handler for every call of a
        # method, so it is wrapped once rather than at every call (new handler tuples and closures per RPC).
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None:
            return None
        if self.gate is not None and not self.gate.ready and self.gate.refuses(details.method):
            return self._wrap(self.gate.refusal(handler), details.method)
        cached = self._wrapped.get(details.method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, details.method)
        self._wrapped[details.method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, full_method: str) -> grpc.RpcMethodHandler:
        method = full_method.rsplit("/", 1)[-1]
        limit = self.limits.for_method(full_method) if self.limits is not None else None
        streaming = handler.request_streaming
        return _wrap_handler(handler, lambda fn: self._unary(fn, method, limit, streaming),
                             lambda fn: self._stream(fn, method, limit, streaming))

    async def _fail(self, context: aio.ServicerContext, exc: BaseException, method: str) -> None:
        code = status_for(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.exception("%s.%s failed", self.service, method, exc_info=exc)
        await context.abort(code, str(exc) or type(exc).__name__)

    def _record(self, method: str, context: aio.ServicerContext, start: float, limit: CallLimit | None,
                admitted: bool) -> None:
        if admitted and limit is not None:
            limit.release()
        code = context.code() if hasattr(context, "code") else None
        name = code.name if isinstance(code, grpc.StatusCode) else "OK" if code in (None, 0) else str(code)
        child(RPC_REQUESTS, self.service, method, name).inc()
        child(RPC_LATENCY, self.service, method).observe(time.perf_counter() - start)
        child(RPC_IN_FLIGHT, self.service).dec()
        cpu.rpc_ended(method)

    def _unary(self, fn: Callable[..., Awaitable], method: str, limit: CallLimit | None, streaming: bool):
        async def wrapped(request, context):
            start = time.perf_counter()
            child(RPC_IN_FLIGHT, self.service).inc()
            cpu.rpc_started(method)
            admitted = limit is None or limit.acquire()
            try:
                if not admitted:
                    await limit.refuse(request, streaming)
                return await fn(request, context)
            except aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001 - this is the one place errors become statuses
                await self._fail(context, exc, method)
            finally:
                self._record(method, context, start, limit, admitted)
        return wrapped

    def _stream(self, fn: Callable[..., AsyncIterator], method: str, limit: CallLimit | None, streaming: bool):
        if not inspect.isasyncgenfunction(fn):
            # A handler that sends with `await context.write(...)` and returns None (grpc_health's aio
            # Watch): iterating it raised TypeError, so Watch answered INTERNAL. Await it instead.
            return self._unary(fn, method, limit, streaming)

        async def wrapped(request, context):
            start = time.perf_counter()
            child(RPC_IN_FLIGHT, self.service).inc()
            cpu.rpc_started(method)
            admitted = limit is None or limit.acquire()
            try:
                if not admitted:
                    await limit.refuse(request, streaming)
                async for item in fn(request, context):
                    yield item
            except aio.AbortError:
                raise
            except Exception as exc:  # noqa: BLE001
                await self._fail(context, exc, method)
            finally:
                self._record(method, context, start, limit, admitted)
        return wrapped


class BearerTokenInterceptor(aio.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` (health checks excepted) with UNAUTHENTICATED.

    Every refusal is counted (`rlfleet_auth_failures_total`) and logged with the caller's address, at
    most one line per `log_every_seconds`: an unauthenticated client must not be able to fill the log.
    """

    def __init__(self, token: str, service: str = "", log_every_seconds: float = 10.0):
        self._expected = f"Bearer {token}".encode()
        self.service = service
        self._log_every = log_every_seconds
        self._next_log = 0.0
        self._unlogged = 0

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        if details.method.startswith(_PUBLIC_PREFIX):
            return await continuation(details)
        sent = dict(details.invocation_metadata or ()).get("authorization", "")
        sent = sent.encode() if isinstance(sent, str) else sent
        if hmac.compare_digest(sent, self._expected):
            return await continuation(details)
        handler = await continuation(details)
        if handler is None:
            return None
        problem = "wrong bearer token" if sent else "no bearer token"

        async def deny_unary(request, context):
            self._denied(context.peer(), details.method, problem)
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token in 'authorization' metadata")

        async def deny_stream(request, context):
            await deny_unary(request, context)
            yield  # pragma: no cover - makes this an async generator

        return _wrap_handler(handler, lambda _fn: deny_unary, lambda _fn: deny_stream)

    def _denied(self, peer: str, method: str, problem: str) -> None:
        AUTH_FAILURES.labels(self.service).inc()
        now = time.monotonic()
        if now < self._next_log:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more refused since the last such line)" if self._unlogged else ""
        log.warning("%s: refused %s from %s: %s%s", self.service, method, peer, problem, more)
        self._next_log, self._unlogged = now + self._log_every, 0
