"""gRPC server bootstrap shared by every service: health, reflection, limits, auth, TLS, graceful stop.

    server = GrpcServer(config.server, name="generator")
    server.add_servicer(generator_pb2_grpc.add_GeneratorServiceServicer_to_server, servicer)
    await server.start(["rlfleet.v1.GeneratorService"])
    ... load the model, hand it to the servicer ...
    await server.set_ready()              # health NOT_SERVING -> SERVING; calls no longer refused
    await server.wait_for_termination()   # until SIGTERM/SIGINT, then drains

Readiness is one switch for every service: from `start` until `set_ready`, health says NOT_SERVING
and every call to a servicer registered through `add_servicer` gets UNAVAILABLE, so clients and
probes never reach a service that is still loading (its servicer never sees a call before its core
exists). `set_not_ready` turns both back. Shutdown follows gRPC's advice: health NOT_SERVING first,
then `server.stop(grace)` lets in-flight calls finish.

Limits are the interceptor's (rlfleet.interceptors.CallLimits), not grpc's `maximum_concurrent_rpcs`:
application calls and the token-free probe streams (health Watch, reflection) have separate budgets.
Reflection is served only when `server.reflection` is set, and then needs the token like any call.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
from collections.abc import Iterable

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from rlfleet import cpu
from rlfleet.config import ServerConfig
from rlfleet.interceptors import BearerTokenInterceptor, CallLimits, ErrorAndMetricsInterceptor, ReadinessGate
from rlfleet.metrics import SERVICE_UP, start_metrics_server

log = logging.getLogger(__name__)


def channel_options(max_message_bytes: int, keepalive_seconds: float = 30.0) -> list[tuple[str, int]]:
    """Message-size and keepalive options; the server allows the client pings these settings send."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", int(keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def add_servicer(add_to_server, servicer, server, raw_requests: Iterable[str] = ()) -> str:
    """Registers a servicer through its generated `add_XServicer_to_server`, except that the methods
    named in `raw_requests` receive each request message still serialised (bytes). Returns the
    service's full name.

    For bulk streams whose servicer reads messages without copying them (LoadAdapter with
    rlfleet.adapters.decode_chunk); every other method keeps the generated deserializer.
    """
    class _Capture:
        def add_generic_rpc_handlers(self, handlers) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict) -> None:
            self.service, self.handlers = service, handlers

    capture = _Capture()
    add_to_server(servicer, capture)
    raw = set(raw_requests)
    missing = raw - set(capture.handlers)
    if missing:
        raise ValueError(f"{capture.service} has no method {', '.join(sorted(missing))}")
    handlers = {name: handler._replace(request_deserializer=None) if name in raw else handler
                for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)
    return capture.service


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server on this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that resolves elsewhere


class GrpcServer:
    """An aio gRPC server with the standard health and reflection services and rlfleet's interceptors."""

    def __init__(self, config: ServerConfig, name: str):
        self.config = config
        self.name = name
        interceptors: list[aio.ServerInterceptor] = []
        if config.auth_token:
            interceptors.append(BearerTokenInterceptor(config.auth_token, name))
        self._gate = ReadinessGate(name)
        self.limits = CallLimits(config.max_concurrent_rpcs, config.max_probe_streams)
        interceptors.append(ErrorAndMetricsInterceptor(name, self._gate, self.limits))
        self.grpc = aio.server(
            interceptors=interceptors,
            options=channel_options(config.max_message_bytes, config.keepalive_seconds),
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        self._services: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = asyncio.Event()

    async def start(self, service_names: Iterable[str]) -> int:
        """Binds, starts serving (health NOT_SERVING) and the metrics endpoint; returns the bound port."""
        self._services = list(service_names)
        if self.config.reflection:
            reflection.enable_server_reflection(
                [*self._services, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
                self.grpc)
        address = f"{self.config.host}:{self.config.port}"
        tls = self.config.tls
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ValueError("server.tls: set both cert_file and key_file, or neither")
        if tls.cert_file and tls.key_file:
            creds = grpc.ssl_server_credentials([(tls.key_file.read_bytes(), tls.cert_file.read_bytes())])
            self.port = self.grpc.add_secure_port(address, creds)
        else:
            self.port = self.grpc.add_insecure_port(address)
        self._warn_plaintext_token()
        for service in ["", *self._services]:
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.grpc.start()
        self.metrics_port = start_metrics_server(self.config.metrics_port, self.config.metrics_host or self.config.host)
        cpu.start_account(self.name)
        SERVICE_UP.labels(self.name).set(0)
        log.info("%s listening on %s:%d (NOT_SERVING until ready)", self.name, self.config.host, self.port)
        return self.port

    def _warn_plaintext_token(self) -> None:
        """Warns when a bearer token would cross a network in plaintext (anyone on the path can copy it)."""
        if self.config.auth_token and not self.config.tls.cert_file and not is_loopback(self.config.host):
            log.warning("%s: server.auth_token is set but TLS is not, on %s: the token crosses the network in "
                        "plaintext; set server.tls.cert_file and server.tls.key_file (or bind 127.0.0.1)",
                        self.name, self.config.host)

    def add_servicer(self, add_to_server, servicer, raw_requests: Iterable[str] = ()) -> None:
        """Registers `servicer` (see the module function `add_servicer`); its calls get UNAVAILABLE until `set_ready`.

        Registering with the generated `add_XServicer_to_server(servicer, server.grpc)` instead leaves
        the servicer answering at once: right only for test stand-ins that have nothing to load.
        """
        self._gate.services.add(add_servicer(add_to_server, servicer, self.grpc, raw_requests))

    @property
    def ready(self) -> bool:
        """True between `set_ready` and `set_not_ready`."""
        return self._gate.ready

    async def set_ready(self) -> None:
        """Health SERVING for the server and every service, and calls reach the servicers."""
        await self._set_ready(True)

    async def set_not_ready(self) -> None:
        """Health NOT_SERVING, and calls to servicers registered with `add_servicer` get UNAVAILABLE again."""
        await self._set_ready(False)

    async def _set_ready(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        self._gate.ready = ready  # before health says SERVING: a client that saw SERVING is never refused
        for service in ["", *self._services]:
            await self.health.set(service, status)
        SERVICE_UP.labels(self.name).set(1 if ready else 0)
        if ready:
            cpu.ready()
        log.info("%s %s", self.name, "SERVING" if ready else "NOT_SERVING")

    async def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING, then lets in-flight calls finish for `grace` seconds before cancelling them."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        await self.health.enter_graceful_shutdown()
        SERVICE_UP.labels(self.name).set(0)
        grace = self.config.grace_seconds if grace is None else grace
        log.info("%s draining (grace %.1fs)", self.name, grace)
        await self.grpc.stop(grace)

    async def wait_for_termination(self) -> None:
        """Blocks until SIGTERM or SIGINT (or `stop`), then drains gracefully."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop_requested.set)
        waiters = [asyncio.ensure_future(stop_requested.wait()), asyncio.ensure_future(self._stopped.wait())]
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        await self.stop()
        await self.grpc.wait_for_termination()
