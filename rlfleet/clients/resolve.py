"""The one resolver of `dns:///name:port` targets into the replicas behind them (scaled generators).

A gRPC channel to `dns:///generator:50051` already round-robins its calls over every address; the
learner needs the replicas one by one as well, to push each its own copy of an adapter and to
send each prompt to the least-loaded generator. `expand_target` is resolved again by its callers
from time to time, so replicas that join or leave while training runs are noticed. A channel to
one replica takes `replica_config`, so that with TLS its certificate is still checked against the name.
"""

from __future__ import annotations

import socket

from rlfleet.config import ClientConfig


def split_target(target: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `HOST:PORT`, `[IPv6]:PORT` or `dns:///HOST:PORT`; ValueError naming the target.

    The scheme is "dns" or "" (a single address). `dns://AUTHORITY/HOST:PORT` (a chosen DNS server)
    is refused: the resolver here asks the system's.
    """
    scheme, rest = "", target
    if target.startswith("dns:"):
        scheme, rest = "dns", target[4:]
        if rest.startswith("//"):
            authority, _, rest = rest[2:].partition("/")
            if authority:
                raise ValueError(f"{target!r}: a DNS authority is not supported; write dns:///HOST:PORT")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{target!r} is not HOST:PORT or dns:///HOST:PORT")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    return scheme, host, int(port)


def expand_target(target: str) -> list[str]:
    """Every `ip:port` a `dns:///name:port` target stands for, sorted ([] while it resolves to nothing).

    Any other target is returned as given. IPv6 addresses come bracketed (`[::1]:50051`), as gRPC
    targets need them. Raises ValueError for a target that is not an address.
    """
    scheme, host, port = split_target(target)
    if scheme != "dns":
        return [target]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []  # not (yet) in DNS: a scaled service with no replica up resolves to nothing
    addresses = sorted({info[4][0] for info in infos})
    return [f"[{a}]:{port}" if ":" in a else f"{a}:{port}" for a in addresses]


def expand_targets(targets: list[str]) -> list[str]:
    """`expand_target` over several targets, each address once, in order."""
    return list(expand_replicas(targets))


def expand_replicas(targets: list[str]) -> dict[str, str]:
    """Every address of `targets` (as `expand_targets`), mapped to the target it came from (the first, if several)."""
    replicas: dict[str, str] = {}
    for target in targets:
        for address in expand_target(target):
            replicas.setdefault(address, target)
    return replicas


def replica_config(config: ClientConfig, target: str) -> ClientConfig:
    """`config` for a channel to one address that `target` expanded to.

    With TLS, a replica of `dns:///NAME:PORT` is reached by its IP address, which its certificate does
    not name: the channel must check the certificate against NAME (`ClientConfig.tls_server_name`),
    as a channel to the name itself would.
    """
    scheme, host, _ = split_target(target)
    if config.tls_ca_file is None or config.tls_server_name or scheme != "dns":
        return config
    return config.model_copy(update={"tls_server_name": host})
