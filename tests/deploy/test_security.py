"""Deployment security without a cluster: the token reaches every service, TLS overlays and certificates, network policy."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlfleet.config import ConfigError, ServerConfig, TlsConfig, load_config
from rlfleet.server import GrpcServer
from tests.deploy.cluster import (
    COMPOSE,
    COMPOSE_FILES,
    K8S,
    ROOT,
    bind_mounts,
    config_class,
    load_yaml_docs,
    rlfleet_services,
    translate_args,
)

MAKE_CERTS = ROOT / "deploy" / "make-certs.sh"
TOKEN = "t0ken-for-the-test"
# The client settings through which each service sends the token (server.auth_token: all of them).
CLIENT_TOKENS = {"learner": ("client",), "generator": ("learner_client",), "reward-server": (), "env-server": (),
                 "reference": ()}


def _env_file(path: Path, fill: str | None = None) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments skipped); empty values become `fill` when given."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip() or (fill if fill is not None else value.strip())
    return env


def _compose_config(path: Path, service: dict, environ: dict[str, str]):
    command = service["command"]
    environ = {**environ, **{k: str(v) for k, v in (service.get("environment") or {}).items()}}
    args = translate_args(command[1:], bind_mounts(service.get("volumes", []), path.parent))
    return load_config(config_class(command[0]), args, environ=environ)


def _k8s_config(container: dict, environ: dict[str, str]):
    """The config a pod's container runs with: its args over the ConfigMaps (sources in deploy/k8s)."""
    mounts = {"/etc/rlfleet": K8S, "/rewards": K8S / "rewards", "/environments": K8S / "environments"}
    return load_config(config_class(container["args"][0]), translate_args(container["args"][1:], mounts),
                       environ=environ)


def _get(config, path: tuple[str, ...]):
    for part in path:
        config = getattr(config, part)
    return config


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_compose_service_requires_and_sends_the_token_from_the_env_file(path):
    compose = yaml.safe_load(path.read_text())
    filled = _env_file(COMPOSE / "rlfleet.env.example", fill=TOKEN)
    for name, service in rlfleet_services(compose).items():
        assert service.get("env_file") == "rlfleet.env", name
        config = _compose_config(path, service, filled)
        assert config.server.auth_token == TOKEN, name
        for client in CLIENT_TOKENS[service["command"][0]]:
            assert _get(config, (client, "auth_token")) == TOKEN, (name, client)
        with pytest.raises(ConfigError, match="--server.auth-token: empty bearer token"):  # copied, not filled in
            _compose_config(path, service, _env_file(COMPOSE / "rlfleet.env.example"))


def _k8s_objects(folder: Path = K8S) -> list[dict]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in load_yaml_docs(folder / name)]


def test_every_k8s_deployment_reads_the_token_from_the_secret():
    objects = _k8s_objects()
    (secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"] == "rlfleet-auth"]
    assert set(secret["stringData"]) == {"token"}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        from_secret = {e["name"] for e in container["env"]
                       if e.get("valueFrom", {}).get("secretKeyRef") == {"name": "rlfleet-auth", "key": "token"}}
        config = _k8s_config(container, dict.fromkeys(from_secret, TOKEN))
        assert config.server.auth_token == TOKEN, deployment["metadata"]["name"]
        for client in CLIENT_TOKENS[container["args"][0]]:
            assert _get(config, (client, "auth_token")) == TOKEN, (deployment["metadata"]["name"], client)


def _selects(selector: dict, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))


def _ingress_allowed(policies: list[dict], source: str, target: str, port: str) -> bool:
    """NetworkPolicy semantics within one namespace: isolated once selected; allowed if any selecting rule matches."""
    src, dst = {"app.kubernetes.io/name": source}, {"app.kubernetes.io/name": target}
    selecting = [p["spec"] for p in policies
                 if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], dst)]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get("ingress", []):
            peers = any("namespaceSelector" in peer or _selects(peer["podSelector"], src) for peer in rule["from"])
            if peers and any(p["port"] == port for p in rule["ports"]):
                return True
    return False


def test_network_policy_lets_only_the_learner_reach_generators_reward_and_reference():
    policies = [o for o in _k8s_objects() if o["kind"] == "NetworkPolicy"]
    pods = ["generator", "reward", "env", "reference", "learner", "intruder"]
    grpc = {(s, t) for s in pods for t in pods if s != t and _ingress_allowed(policies, s, t, "grpc")}
    assert grpc == {("learner", "generator"), ("learner", "reward"), ("learner", "env"), ("learner", "reference"),
                    ("generator", "learner")}
    assert all(_ingress_allowed(policies, s, t, "metrics") for s in pods for t in pods)  # Prometheus scrapes
    (no_egress,) = [p["spec"] for p in policies if "Egress" in p["spec"]["policyTypes"]]
    for code in ("reward", "env"):  # the pods where user code runs
        assert _selects(no_egress["podSelector"], {"app.kubernetes.io/name": code}) and no_egress["egress"] == []
    ports = {p["name"] for o in _k8s_objects() if o["kind"] == "Deployment"
             for p in o["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc", "metrics"}  # the named ports the policies refer to


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(MAKE_CERTS), str(folder), "extra.example"], check=True, capture_output=True)
    return folder


def test_made_certificates_serve_tls_under_every_service_name(certs):
    """A server with make-certs.sh's files answers `rlfleet health` verifying each name clients will use."""
    names = ["generator", "reward", "env", "reference", "learner", "localhost", "reward.rlfleet.svc", "extra.example"]

    async def run():
        server = GrpcServer(ServerConfig(host="127.0.0.1", port=0, tls=TlsConfig(
            cert_file=certs / "server.pem", key_file=certs / "server-key.pem")), name="certs")
        await server.start([])
        await server.set_ready()
        base = [sys.executable, "-m", "rlfleet.cli", "health", f"127.0.0.1:{server.port}", "--tls-ca",
                str(certs / "ca.pem"), "--tls-server-name"]
        codes = {name: (await asyncio.to_thread(subprocess.run, [*base, name], capture_output=True)).returncode
                 for name in [*names, "impostor"]}
        await server.stop(0)
        return codes

    assert asyncio.run(run()) == {**dict.fromkeys(names, 0), "impostor": 1}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_tls_overlay_points_every_service_at_the_made_files(path, certs, tmp_path):
    folder = tmp_path / "compose"
    shutil.copytree(COMPOSE, folder, ignore=shutil.ignore_patterns("rlfleet.env", "tls"))
    shutil.copytree(certs, folder / "tls")
    (folder / "rlfleet.env").write_text((COMPOSE / "rlfleet.env.example").read_text().replace("=\n", f"={TOKEN}\n"))
    merged = subprocess.run(["docker-compose", "-f", str(folder / path.name), "-f", str(folder / "tls.yml"),
                             "config", "--format", "json"], capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    services = yaml.safe_load(merged.stdout)["services"]
    for name, service in rlfleet_services({"services": services}).items():
        mounts = {v["target"]: Path(v["source"]) for v in service["volumes"] if v["type"] == "bind"}
        config = load_config(config_class(service["command"][0]), translate_args(service["command"][1:], mounts),
                             environ=service["environment"])
        env = service["environment"]
        files = [config.server.tls.cert_file, config.server.tls.key_file, Path(env["RLFLEET_HEALTH_TLS_CA"])]
        files += [_get(config, (client, "tls_ca_file")) for client in CLIENT_TOKENS[service["command"][0]]]
        for file in files:
            assert Path(translate_args([str(file)], mounts)[0]).is_file(), (name, file)
        assert env["RLFLEET_HEALTH_TLS_SERVER_NAME"] == "localhost" and config.server.auth_token == TOKEN


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed; kustomize build not run")
def test_k8s_tls_component_mounts_the_secret_and_probes_over_tls(certs, tmp_path):
    folder = tmp_path / "k8s"
    shutil.copytree(K8S, folder, ignore=shutil.ignore_patterns("certs"))
    shutil.copytree(certs, folder / "tls" / "certs")
    kustomization = folder / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("# components: [tls]", "components: [tls]"))
    built = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objects = [o for o in yaml.safe_load_all(built.stdout) if o]
    (tls_secret,) = [o for o in objects if o["kind"] == "Secret" and o["metadata"]["name"].startswith("rlfleet-tls")]
    assert set(tls_secret["data"]) == {"ca.pem", "server.pem", "server-key.pem"}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == tls_secret["metadata"]["name"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        config = _k8s_config(container, {k: v if v is not None else TOKEN for k, v in env.items()})
        for file in (config.server.tls.cert_file, config.server.tls.key_file, Path(env["RLFLEET_HEALTH_TLS_CA"])):
            assert file.parent == Path(mount["mountPath"]) and file.name in tls_secret["data"], file
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["exec"]["command"] == ["rlfleet", "health", "127.0.0.1:50051"], probe
