"""Kubernetes manifests without a cluster: they parse, kustomize's inputs exist, commands parse, names and ports agree."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from rlfleet.cli import COMMANDS
from rlfleet.clients.resolve import split_target
from rlfleet.config import load_config
from tests.deploy.cluster import (
    COMPOSE,
    GRPC_PORT,
    K8S,
    METRICS_PORT,
    config_class,
    load_yaml_docs,
    targets_in,
)

KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
OBJECTS = [doc for name in KUSTOMIZATION["resources"] for doc in load_yaml_docs(K8S / name)]
DEPLOYMENTS = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "Deployment"}
SERVICES = {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == "Service"}
# Where the ConfigMaps of kustomization.yaml are mounted in the pods -> their source in this folder.
MOUNTED = {"/etc/rlfleet": K8S, "/rewards": K8S / "rewards", "/environments": K8S / "environments"}


def _container(name: str) -> dict:
    (container,) = DEPLOYMENTS[name]["spec"]["template"]["spec"]["containers"]
    return container


def _config(name: str):
    args = _container(name)["args"]
    translated = []
    for arg in args[1:]:
        for target, source in MOUNTED.items():
            if arg.startswith(target + "/"):
                arg = str(source / arg[len(target) + 1:])
        translated.append(arg)
    return load_config(config_class(args[0]), translated, environ={})


def test_every_manifest_parses_and_names_its_kind():
    assert len(OBJECTS) >= 10
    for obj in OBJECTS:
        assert obj["apiVersion"] and obj["kind"] and obj["metadata"]["name"], obj
    for generated in KUSTOMIZATION["configMapGenerator"]:
        for file in generated["files"]:
            assert (K8S / file).is_file(), file
    assert sorted(DEPLOYMENTS) == sorted(SERVICES) == ["env", "generator", "learner", "reference", "reward"]


def test_copies_match_the_compose_originals():
    assert (K8S / "cluster.toml").read_text() == (COMPOSE / "cluster.toml").read_text()
    assert (K8S / "rewards/reverse.py").read_text() == (COMPOSE / "rewards/reverse.py").read_text()
    assert (K8S / "environments/calculator.py").read_text() == (COMPOSE / "environments/calculator.py").read_text()


@pytest.mark.parametrize("name", ["generator", "reward", "env", "reference", "learner"])
def test_deployment_command_parses_and_ports_agree(name):
    container = _container(name)
    assert container["args"][0] in COMMANDS
    config = _config(name)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": config.server.port, "metrics": config.server.metrics_port} == {
        "grpc": GRPC_PORT, "metrics": METRICS_PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == GRPC_PORT, probe  # the gRPC health protocol
    pod = DEPLOYMENTS[name]["spec"]["template"]
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(METRICS_PORT)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert DEPLOYMENTS[name]["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    service = SERVICES[name]["spec"]
    assert service["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["name"]: p["port"] for p in service["ports"]} == {"grpc": GRPC_PORT, "metrics": METRICS_PORT}


def test_volumes_name_objects_that_exist():
    claims = {o["metadata"]["name"] for o in OBJECTS if o["kind"] == "PersistentVolumeClaim"}
    config_maps = {g["name"] for g in KUSTOMIZATION["configMapGenerator"]}
    for name, deployment in DEPLOYMENTS.items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for mount in pod["containers"][0]["volumeMounts"]:
            assert mount["name"] in volumes, (name, mount)
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps


def test_generators_are_behind_a_headless_service_and_addresses_name_services():
    assert SERVICES["generator"]["spec"]["clusterIP"] == "None"  # DNS answers with every pod
    assert SERVICES["env"]["spec"]["clusterIP"] == "None"  # each session's calls reach the pod that holds it
    for name in DEPLOYMENTS:
        for target in targets_in(_config(name).model_dump(mode="json")):
            _, host, port = split_target(target)
            assert host in SERVICES and port == GRPC_PORT, (name, target)
    assert _config("learner").generators == [f"dns:///generator:{GRPC_PORT}"]
    assert DEPLOYMENTS["learner"]["spec"]["replicas"] == 1


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed; kustomize build not run")
def test_kustomize_builds():
    result = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "rlfleet-config-" in result.stdout  # the generated, hash-suffixed ConfigMap is referenced
