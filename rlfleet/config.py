"""Config loading shared by every service: one pydantic model, from TOML < environment < CLI flags.

Each service declares one `ServiceConfig` subclass whose fields carry a one-line docstring
(pydantic's `use_attribute_docstrings`), and `load_config` turns it into an argparse parser:

    rlfleet generator --config run.toml --server.port 50052 --max-loras 3

- A TOML file (`--config`) may hold one table per service (`[generator]`, `[learner]`, ...), so one
  file describes the whole cluster; a file without the service's table is read from its top level.
- Environment variables `RLFLEET_<FIELD>` (nested fields joined by `__`, e.g.
  `RLFLEET_SERVER__PORT=50052`) override the file.
- Flags override both. Nested fields are dotted (`--server.port`), lists take several values or
  repeat the flag, dicts and lists of objects take JSON. `--print-config` prints the resolved config as TOML and exits.

A value or file the user must fix raises `ConfigError`, whose message names the option or file;
`rlfleet.cli` prints it as one message and exits 2, with no traceback.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

ENV_PREFIX = "RLFLEET_"


class ConfigError(SystemExit):
    """A config value, file or input the user must fix; the message names the option or the file.

    `rlfleet.cli` prints it as `PROG: error: MESSAGE` and exits 2 (argparse's code for usage errors).
    It derives from SystemExit so that a caller that does not catch it still stops without a traceback.
    """


class ConfigModel(BaseModel):
    """Base of every config model: unknown keys are errors and field docstrings are help texts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True)


def _check_token(token: str | None) -> str | None:
    """An empty token is refused, not read as "no auth": it is what an unfilled env file or Secret gives."""
    if token is not None and not token.strip():
        raise ValueError("empty bearer token (an env file or Secret left unfilled?); set a long random token, "
                         "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`, or leave it unset")
    return token


class TlsConfig(ConfigModel):
    """Server-side TLS; both files or neither."""

    cert_file: Path | None = None
    """PEM certificate chain served to clients; enables TLS together with key_file."""
    key_file: Path | None = None
    """PEM private key of cert_file."""


class ServerConfig(ConfigModel):
    """How a service listens: address, limits, auth and metrics."""

    host: str = "0.0.0.0"
    """Interface to bind; 127.0.0.1 keeps the service local to this machine."""
    port: int = Field(50051, ge=0, le=65535)
    """gRPC port; 0 picks a free port (tests)."""
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """HTTP port serving Prometheus /metrics; unset disables it, 0 picks a free port."""
    metrics_host: str | None = None
    """Interface the /metrics endpoint binds; unset: the same as host."""
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=4 * 1024 * 1024)
    """Largest gRPC message sent or received, in bytes (gRPC's default of 4 MiB is too small for rollout batches)."""
    max_concurrent_rpcs: int = Field(256, ge=1)
    """Application RPCs handled at once; past it new calls get RESOURCE_EXHAUSTED instead of queueing. Health
    checks and the probe streams (max_probe_streams) are not counted."""
    max_probe_streams: int = Field(16, ge=1)
    """Health Watch and reflection streams open at once (a budget of their own, since health needs no token); past
    it new ones get RESOURCE_EXHAUSTED."""
    reflection: bool = False
    """Serve gRPC server reflection (grpcurl and similar tools list the API through it); it needs the bearer token
    when auth_token is set."""
    grace_seconds: float = Field(10.0, ge=0)
    """On SIGTERM/SIGINT, how long in-flight calls may finish before they are cancelled."""
    auth_token: str | None = None
    """Shared bearer token; when set, every call except health checks must send `authorization: Bearer <token>`."""
    tls: TlsConfig = TlsConfig()
    """TLS certificate and key; unset serves plaintext."""
    keepalive_seconds: float = Field(30.0, gt=0)
    """Interval of server keepalive pings on idle connections."""

    _token = field_validator("auth_token")(_check_token)


class ClientConfig(ConfigModel):
    """How a service calls another one: deadline, retries, auth."""

    timeout_seconds: float = Field(60.0, gt=0)
    """Default deadline of every call that sets none itself."""
    max_attempts: int = Field(4, ge=1, le=5)
    """Attempts per call for UNAVAILABLE / RESOURCE_EXHAUSTED (gRPC caps this at 5)."""
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=4 * 1024 * 1024)
    """Largest message sent or received, in bytes."""
    auth_token: str | None = None
    """Bearer token sent with every call (must match the server's)."""
    tls_ca_file: Path | None = None
    """PEM root certificates to verify servers with; unset uses plaintext."""
    tls_server_name: str | None = None
    """Name the servers' certificates must carry, when it is not the target's host (a target by IP address).
    Replicas of a `dns:///NAME:PORT` target are checked against NAME without it."""

    _token = field_validator("auth_token")(_check_token)


class CommandConfig(ConfigModel):
    """Base of a command's config; `section` names its table in a cluster TOML file."""

    section: ClassVar[str] = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Python logging level."""


class ServiceConfig(CommandConfig):
    """Base of the one config model each gRPC service has."""

    server: ServerConfig = ServerConfig()
    """Listening address, limits, auth and metrics of this service."""


C = TypeVar("C", bound=BaseModel)


def _unwrap_optional(annotation: Any) -> Any:
    """`X | None` -> X; anything else unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _leaf_fields(model: type[BaseModel], prefix: tuple[str, ...] = ()):
    """Yields (path, annotation, description) for every flag-able field, recursing into sub-models."""
    for name, info in model.model_fields.items():
        annotation = _unwrap_optional(info.annotation)
        path = prefix + (name,)
        if _is_model(annotation):
            yield from _leaf_fields(annotation, path)
        else:
            yield path, annotation, info.description or ""


def _flag(path: tuple[str, ...]) -> str:
    return "--" + ".".join(p.replace("_", "-") for p in path)


def _kind(annotation: Any) -> str:
    """How a flag's text becomes a value: 'bool', 'list' (repeatable), 'json' or 'scalar'."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        return "bool"
    if origin in (list, tuple, set):
        (item,) = typing.get_args(annotation)[:1] or (str,)
        return "json" if _is_model(_unwrap_optional(item)) or typing.get_origin(item) else "list"
    if origin is dict or _is_model(annotation) or origin in (typing.Union, types.UnionType):
        return "json"
    return "scalar"


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_text(text: str, kind: str, flag: str) -> Any:
    if kind != "json":
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"{flag}: expected JSON ({err.msg} at column {err.colno})") from None


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are a ConfigError naming the option (with the closest real one), not the whole usage."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            unknown = [w.split("=")[0] for w in message.split(":", 1)[1].split() if w.startswith("--")]
            close = [m for w in unknown for m in difflib.get_close_matches(w, self._option_string_actions, 1)]
            message += f" (did you mean {' or '.join(close)}?)" if close else ""
        raise ConfigError(f"{message}; `{self.prog} --help` lists every option")


def build_parser(cls: type[CommandConfig], prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser with one flag per config field (defaults left unset so layers merge)."""
    parser = _Parser(prog=prog, description=description or cls.__doc__, argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, help=f"TOML file; its [{cls.section}] table (or top level) is read")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as TOML and exit")
    for path, annotation, help_text in _leaf_fields(cls):
        help_text = (help_text or "").replace("%", "%%")  # argparse %-formats help ("90 % of" broke --help)
        kind = _kind(annotation)
        dest = "cfg:" + ".".join(path)
        if kind == "bool":
            parser.add_argument(_flag(path), dest=dest, action=argparse.BooleanOptionalAction, help=help_text)
        elif kind == "list":
            parser.add_argument(_flag(path), dest=dest, action="extend", nargs="+", metavar="VALUE",
                                help=help_text + " (several values, or the flag repeated)")
        else:
            metavar = "JSON" if kind == "json" else "VALUE"
            parser.add_argument(_flag(path), dest=dest, metavar=metavar, help=help_text)
    return parser


def _env_layer(cls: type[BaseModel], environ: typing.Mapping[str, str]) -> dict:
    layer: dict = {}
    for path, annotation, _ in _leaf_fields(cls):
        name = ENV_PREFIX + "__".join(path).upper()
        if name in environ:
            kind = _kind(annotation)
            text = environ[name]
            value = _parse_text(text, "json", name) if kind in ("json", "list") and text.strip()[:1] in "[{" else text
            if kind == "list" and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            _set_path(layer, path, value)
    return layer


def _file_layer(cls: type[CommandConfig], path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--config: cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"--config: {path} is not valid TOML: {err}") from None
    table = data.get(cls.section)
    if isinstance(table, dict):
        return table
    # A cluster file without this service's table configures other services only.
    return {} if any(isinstance(data.get(name), dict) for name in CLUSTER_SECTIONS) else data


# Tables of a cluster config file, one per service (see compose/ and `rlfleet up`).
CLUSTER_SECTIONS = ("generator", "reward", "reference", "learner", "up")


def _flag_layer(args: argparse.Namespace, cls: type[BaseModel]) -> dict:
    kinds = {".".join(path): (_kind(ann), _flag(path)) for path, ann, _ in _leaf_fields(cls)}
    layer: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith("cfg:"):
            key = dest[4:]
            kind, flag = kinds[key]
            _set_path(layer, tuple(key.split(".")), _parse_text(value, kind, flag) if isinstance(value, str) else value)
    return layer


def _error_line(error: dict) -> str:
    """One pydantic error as `--flag: what is wrong (got VALUE)`; a cross-field rule has no flag of its own."""
    path = tuple(str(p) for p in error["loc"] if not isinstance(p, int))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"  {'.'.join(path)}: unknown key (there is no option {_flag(path)})"
    got = "" if error["type"] == "missing" or not path else f" (got {error.get('input')!r})"
    return f"  {_flag(path) + ': ' if path else ''}{message}{got}"


def validate_layers(cls: type[C], *layers: dict) -> C:
    """Merges layers (later wins) and validates; a bad value raises ConfigError naming the flag."""
    merged: dict = {}
    for layer in layers:
        merged = _deep_merge(merged, layer)
    try:
        return cls.model_validate(merged)
    except ValidationError as err:
        lines = [_error_line(e) for e in err.errors()]
        raise ConfigError(f"invalid {cls.__name__}:\n" + "\n".join(lines)) from None


def load_config(cls: type[C], argv: list[str] | None = None, prog: str = "rlfleet",
                environ: typing.Mapping[str, str] | None = None) -> C:
    """Parses argv into `cls` with precedence defaults < TOML file < environment < flags."""
    parser = build_parser(cls, prog)
    args = parser.parse_args(argv)
    config = validate_layers(cls, _file_layer(cls, getattr(args, "config", None)),
                             _env_layer(cls, os.environ if environ is None else environ),
                             _flag_layer(args, cls))
    if getattr(args, "print_config", False):
        sys.stdout.write(to_toml(config.model_dump(mode="json", exclude_none=True), cls.section))
        raise SystemExit(0)
    return config


def check_model_path(model: str | Path, option: str) -> None:
    """Raises ConfigError when `model` names a local model folder that is missing or holds no config.json.

    A Hugging Face hub name (`org/name`, `gpt2`) passes: transformers and vLLM read a local folder
    first and otherwise ask the hub, so a name counts as a path only when it cannot be a hub id or
    its first component exists here (`models/tiny` with a local `models/`).
    """
    text = str(model)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{option}: {text} is a folder without config.json, not a Hugging Face model")
        return
    if path.exists():
        raise ConfigError(f"{option}: {text} is a file; expected a model folder")
    parts = Path(text).parts
    hub_id = not path.is_absolute() and not text.startswith((".", "~")) and len(parts) <= 2
    if not hub_id or (len(parts) == 2 and Path(parts[0]).is_dir()):
        raise ConfigError(f"{option}: no such model folder: {text}")


def check_file(path: Path, option: str, what: str = "file") -> None:
    """Raises ConfigError naming `option` when `path` is not an existing file."""
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise ConfigError(f"{option}: {what} {path} {problem}")


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # strings, numbers and booleans are spelled alike in JSON and TOML


def to_toml(data: dict, section: str = "") -> str:
    """Writes a (nested) dict of JSON-able values as TOML; tables after scalars, as TOML requires."""
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and v is not None}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    out = [f"[{section}]"] if section and scalars else []
    out += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
    text = "\n".join(out) + ("\n" if out else "")
    for key, value in tables.items():
        text += ("\n" if text else "") + to_toml(value, f"{section}.{key}" if section else key)
    return text
