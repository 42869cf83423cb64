"""A real Prometheus, with compose/prometheus's jobs and rules, scrapes real services running on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import pytest
import yaml

from tests.conftest import free_port
from tests.deploy.cluster import COMPOSE

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus not installed (Debian: apt-get install prometheus; scripts/install.sh does it)")


def _get(url: str) -> dict:
    return json.loads(urllib.request.urlopen(url, timeout=5).read())


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def _loopback_config(tmp_path, targets: dict[str, int]) -> str:
    """compose/prometheus/prometheus.yml with each job's discovery replaced by the loopback port of its service."""
    config = yaml.safe_load((COMPOSE / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(COMPOSE / "prometheus" / "rules.yml")]
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in targets:
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
            jobs.append(job)
    assert {j["job_name"] for j in jobs} == set(targets)
    config["scrape_configs"] = jobs
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_prometheus_scrapes_the_services_and_loads_the_rules(tmp_path, running_reference, running_reward):
    port = free_port()
    config = _loopback_config(tmp_path, {"reference": running_reference.metrics_port,
                                         "reward": running_reward.metrics_port})
    prometheus = subprocess.Popen(
        ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "wb"), start_new_session=True)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        def all_up():
            try:
                targets = _get(f"{api}/targets")["data"]["activeTargets"]
            except OSError:
                return None
            healthy = {t["labels"]["job"] for t in targets if t["health"] == "up"}
            return healthy if healthy == {"reference", "reward"} else None

        _wait_for(all_up, 60, "both targets to be up")
        ready = _wait_for(lambda: _get(f"{api}/query?query=rlfleet_service_ready")["data"]["result"], 30,
                          "rlfleet_service_ready samples")
        groups = _get(f"{api}/rules")["data"]["groups"]
    finally:
        prometheus.terminate()
        prometheus.wait(30)
    stderr = (tmp_path / "prometheus.log").read_text()
    assert {(r["metric"]["job"], r["value"][1]) for r in ready} >= {("reference", "1"), ("reward", "1")}, ready
    assert {g["name"] for g in groups} == {"rlfleet-recording", "rlfleet-alerts"}, stderr[-2000:]
    assert sum(len(g["rules"]) for g in groups) >= 10
    assert all(r["health"] != "err" for g in groups for r in g["rules"]), groups
