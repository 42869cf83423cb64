"""What the deploy tests share: the files under test and how a container command maps to a service config."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose"
COMPOSE_FILES = sorted(COMPOSE.glob("docker-compose*.yml"))
K8S = ROOT / "deploy" / "k8s"
GRPC_PORT, METRICS_PORT = 50051, 9100

# `rlfleet` subcommand -> (module, config class) of each service.
SERVICE_CONFIGS = {
    "generator": ("generator.config", "GeneratorConfig"),
    "reward-server": ("reward_server.config", "RewardConfig"),
    "env-server": ("env_server.config", "EnvConfig"),
    "reference": ("reference.config", "ReferenceConfig"),
    "learner": ("learner.config", "LearnerConfig"),
}
# Services whose /metrics the dashboard may query, by metric-name prefix -> module defining them.
METRIC_MODULES = {
    "rlfleet_generator_": "generator.metrics",
    "rlfleet_reward_": "reward_server.metrics",
    "rlfleet_env_": "env_server.metrics",
    "rlfleet_reference_": "reference.metrics",
    "rlfleet_learner_": "learner.metrics",
}


def config_class(subcommand: str):
    """The config class of a service subcommand; skips the test while that service's code has not landed."""
    module_name, cls = SERVICE_CONFIGS[subcommand]
    try:
        return getattr(importlib.import_module(module_name), cls)
    except ModuleNotFoundError as err:
        pytest.skip(f"{module_name} is not in this checkout yet ({err}); its command cannot be checked")


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def rlfleet_services(compose: dict) -> dict[str, dict]:
    """Compose services that run the rlfleet image's entrypoint with a service subcommand."""
    return {name: svc for name, svc in compose["services"].items()
            if svc.get("command") and svc["command"][0] in SERVICE_CONFIGS}


def host_path(container_path: str, mounts: dict[str, Path]) -> str:
    """Maps a path inside a container to the repository file bind-mounted there (unchanged when none is)."""
    for target, source in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return str(source / Path(container_path).relative_to(target)) if source.is_dir() else str(source)
    return container_path


def bind_mounts(volumes: list[str], base: Path) -> dict[str, Path]:
    """`./x:/y[:ro]` bind mounts as {container path: host path}; named volumes are left out."""
    mounts = {}
    for spec in volumes:
        source, target = spec.split(":")[:2]
        if source.startswith((".", "/")):
            mounts[target] = (base / source).resolve()
    return mounts


def translate_args(args: list[str], mounts: dict[str, Path]) -> list[str]:
    return [host_path(a, mounts) if a.startswith("/") else a for a in args]


def targets_in(value) -> list[str]:
    """Every `host:port` / `dns:///host:port` string found in a (nested) config dump."""
    found: list[str] = []
    if isinstance(value, dict):
        for v in value.values():
            found += targets_in(v)
    elif isinstance(value, list):
        for v in value:
            found += targets_in(v)
    # Two or more port digits: a device string such as "cuda:0" is not an address.
    elif isinstance(value, str) and re.fullmatch(r"(dns:///)?[A-Za-z0-9.-]+:\d{2,5}", value):
        found.append(value)
    return found

