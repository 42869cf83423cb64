"""The CPU compose cluster for real: up, health, training, a scaled and a killed generator, Prometheus, down -v.

CI's compose stage runs it after the main suite (`bash scripts/images.sh && pytest -m compose`); the
default run deselects it (tests/deploy/conftest.py). It uses the images scripts/images.sh built (named
in compose/.env), publishes ports on 127.0.0.1 only, and is skipped only where no Docker engine answers.
The tests run in order against one cluster: each step builds on the state the previous one left.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess

import pytest

from tests.conftest import free_port
from tests.deploy.cluster import COMPOSE
from tests.deploy.compose_cluster import ComposeCluster, docker, wait_for

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(2400)]  # guards for a busy machine

PROJECT = "rlfleet-compose-test"
MIN_STEPS = 20              # trained steps the run must reach (the shipped max_steps is 60)
STEPS_AFTER_KILL = 3        # steps trained with the survivor after a generator is killed


def _engine_or_skip() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker CLI here (bash scripts/images.sh installs Docker and starts its engine)")
    info = docker("info", "--format", "{{.ServerVersion}}", check=False, timeout=30)
    if info.returncode != 0:
        pytest.skip(f"no Docker engine answers ({info.stderr.strip()[:200]}); bash scripts/images.sh starts one")


@pytest.fixture(scope="module")
def token_file():
    """compose/rlfleet.env (the services' bearer token): the developer's own, else a random one for this run."""
    path = COMPOSE / "rlfleet.env"
    if path.exists():
        yield path
        return
    token = secrets.token_urlsafe(32)
    lines = (COMPOSE / "rlfleet.env.example").read_text().splitlines()
    path.write_text("\n".join(line + token if re.fullmatch(r"RLFLEET_\w+=", line) else line for line in lines) + "\n")
    yield path
    path.unlink()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, token_file):
    """`docker compose up -d` of compose/docker-compose.cpu.yml; `down -v` and the logs saved at the end."""
    _engine_or_skip()
    env = {**os.environ, "LEARNER_PORT": str(free_port()), "PROMETHEUS_PORT": str(free_port())}
    cluster = ComposeCluster(PROJECT, env, int(env["LEARNER_PORT"]), int(env["PROMETHEUS_PORT"]))
    for image in set(cluster.compose("config", "--images").stdout.split()):
        assert docker("image", "inspect", image, check=False).returncode == 0, (
            f"image {image} is missing: run `bash scripts/images.sh` first (it writes compose/.env)")
    cluster.compose("down", "-v", "--remove-orphans")  # a previous run's leftovers
    # --no-build / --pull never: only the images built here run, nothing is fetched.
    cluster.compose("up", "-d", "--no-build", "--pull", "never", timeout=1500)
    yield cluster
    logs = tmp_path_factory.mktemp("compose") / "compose.log"
    logs.write_text(cluster.compose("logs", "--no-color", "--timestamps", check=False).stdout)
    print(f"\ncompose logs: {logs}")
    cluster.compose("down", "-v", "--remove-orphans", check=False)


def _long_running(cluster: ComposeCluster) -> set[str]:
    """Services with a health check (the image's or their own): all but the one-shots, which disable it."""
    services = json.loads(cluster.compose("config", "--format", "json").stdout)["services"]
    return {name for name, s in services.items() if not (s.get("healthcheck") or {}).get("disable")}


def _healthy(cluster: ComposeCluster, services: set[str]) -> dict | None:
    rows = {r["Service"]: r for r in cluster.containers() if r["Service"] in services}
    return rows if set(rows) == services and all(r["Health"] == "healthy" for r in rows.values()) else None


def test_model_is_built_and_warm_started_by_one_shot_services(cluster):
    for service in ("model-init", "warm-start"):
        (row,) = cluster.containers(service)
        assert (row["State"], row["ExitCode"]) == ("exited", 0), row
    log = cluster.logs("warm-start")
    losses = [float(x) for x in re.findall(r"warm-start step \d+/130 loss ([\d.]+)", log)]
    assert "warm-start: done" in log and len(losses) >= 2, log[-2000:]
    assert losses[-1] < 0.5 * losses[0], losses  # the supervised phase taught something


def test_every_service_reports_healthy(cluster):
    services = _long_running(cluster)
    assert {"generator", "reward", "reference", "learner", "prometheus"} <= services, services
    rows = wait_for(f"the health checks of {sorted(services)} to say healthy",
                    lambda: _healthy(cluster, services), timeout=480)
    published = [(name, p["URL"]) for name, r in rows.items() for p in r["Publishers"] if p["PublishedPort"]]
    assert published and all(url == "127.0.0.1" for _, url in published), published  # this machine only


def test_learner_trains_and_its_log_shows_progress(cluster):
    records = wait_for("the first 3 trained steps", lambda: (m := cluster.metrics()) and len(m) >= 3 and m,
                       timeout=300)
    log = cluster.logs("learner")
    assert re.search(r"step 3/\d+ +reward [\d.]+", log), log[-2000:]
    # Warm-started, the tiny model earns reward from the start (untrained, every reward was 0.0).
    assert max(r["reward_mean"] for r in records[:3]) > 0.1, records[:3]


def test_scaled_generator_pulls_the_current_adapter_and_serves(cluster):
    (first,) = cluster.containers("generator")
    version_before = int(cluster.metrics()[-1]["policy_version"])
    cluster.compose("up", "-d", "--no-deps", "--no-build", "--pull", "never", "--scale", "generator=2", "generator")
    (new,) = [r for r in cluster.containers("generator") if r["Name"] != first["Name"]]
    wait_for(f"{new['Name']} to report healthy",
             lambda: cluster.containers("generator")[-1]["Health"] == "healthy", timeout=360)
    log = docker("logs", new["Name"])
    pulled = re.search(r"pulled policy v(\d+) from the learner", log.stdout + log.stderr)
    assert pulled, (log.stdout + log.stderr)[-2000:]
    assert int(pulled.group(1)) >= version_before  # the current adapter, not the base model
    # Serving: Prometheus (DNS discovery) finds the replica, and it generates tokens for the pipeline.
    instance = f"{cluster.ip(new['Name'])}:9100"
    wait_for(f"tokens generated by {instance}",
             lambda: cluster.query("rlfleet_generator_tokens_generated_total").get(instance, 0) > 0, timeout=180)
    version = wait_for(f"a later push to reach {instance}",
                       lambda: (v := cluster.query("rlfleet_generator_policy_version").get(instance, 0))
                       > int(pulled.group(1)) and v, timeout=180)
    print(f"\nnew replica {new['Name']}: pulled v{pulled.group(1)} (learner at v{version_before} when scaled), "
          f"then received v{version:.0f}")


def test_prometheus_scrapes_every_replica_and_loads_the_alert_rules(cluster):
    generators = {f"{cluster.ip(r['Name'])}:9100" for r in cluster.containers("generator")}
    assert len(generators) == 2

    services = _long_running(cluster)  # each has a scrape job of its own name

    def targets_up() -> list[dict] | None:
        active = cluster.prometheus("targets", state="active")["activeTargets"]
        up = {t["labels"]["job"] for t in active if t["health"] == "up"}
        on_generators = {t["labels"]["instance"] for t in active if t["labels"]["job"] == "generator"}
        every_up = all(t["health"] == "up" for t in active)
        return active if every_up and services <= up and on_generators == generators else None

    active = wait_for("every replica as an `up` target", targets_up, timeout=90)
    print("\nPrometheus targets:\n" + "\n".join(
        f"  {t['labels']['job']:<10} {t['labels']['instance']:<22} {t['health']}" for t in active))
    groups = wait_for("the rules to be evaluated", lambda: (g := cluster.prometheus("rules")["groups"]) and all(
        r["health"] == "ok" for group in g for r in group["rules"]) and g, timeout=60)
    assert {g["name"] for g in groups} == {"rlfleet-recording", "rlfleet-alerts"}
    alerts = {r["name"] for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert {"GeneratorDown", "NoGenerators", "LearnerStalled", "RolloutStalenessAboveBound"} <= alerts


def test_killed_generator_leaves_every_prompt_trained_or_dropped_with_a_reason(cluster):
    first = cluster.containers("generator")[0]["Name"]
    killed_at = len(cluster.metrics())
    docker("kill", first)
    wait_for(f"{STEPS_AFTER_KILL} steps after the kill",
             lambda: len(cluster.metrics()) >= killed_at + STEPS_AFTER_KILL, timeout=240)
    # The run ends by itself at max_steps (the learner exits 0 and is not restarted).
    wait_for("the learner to finish its run", lambda: cluster.containers("learner")[0]["State"] == "exited",
             timeout=480)
    (learner,) = cluster.containers("learner")
    assert learner["ExitCode"] == 0, cluster.logs("learner")[-3000:]
    accounting = json.loads(cluster.read("/runs/learner/pipeline_accounting.json"))
    dropped = accounting["dropped"]
    assert accounting["issued"] == accounting["trained"] + sum(dropped.values()), accounting
    assert all(reason and count > 0 for reason, count in dropped.items()), dropped
    print(f"\naccounting after the kill at step {killed_at}: {accounting}")


def test_run_directory_is_in_the_runs_volume_and_reward_rises(cluster):
    records = [json.loads(line) for line in cluster.read("/runs/learner/metrics.jsonl").splitlines() if line]
    assert len(records) >= MIN_STEPS
    k = 5
    first = sum(r["reward_mean"] for r in records[:k]) / k
    last = sum(r["reward_mean"] for r in records[-k:]) / k
    print(f"\ncompose run: {len(records)} steps (policy version {records[-1]['policy_version']:.0f}); "
          f"train reward {first:.3f} (first {k} steps) -> {last:.3f} (last {k} steps)")
    assert last > first, (first, last)
    listing = cluster.compose("run", "--rm", "--no-deps", "--entrypoint", "ls", "learner", "/runs/learner").stdout
    assert {"metrics.jsonl", "checkpoints", "pipeline_accounting.json"} <= set(listing.split()), listing


def test_down_removes_everything(cluster):
    cluster.compose("down", "-v", "--remove-orphans")
    assert cluster.leftovers() == {"containers": [], "volumes": [], "networks": []}
    assert subprocess.run(["docker", "image", "inspect", "rlfleet:cpu"], capture_output=True).returncode == 0
