"""Prometheus and Grafana config: every service scraped on its metrics port, rules valid, dashboard metrics real."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from rlfleet.config import load_config
from tests.deploy.cluster import (
    COMPOSE,
    COMPOSE_FILES,
    METRIC_MODULES,
    METRICS_PORT,
    config_class,
    rlfleet_services,
)

PROMETHEUS = COMPOSE / "prometheus"
DASHBOARD = COMPOSE / "grafana" / "dashboards" / "rlfleet.json"
# A metric name and its {label matchers}; names inside recording-rule names (level:metric:op) excluded.
SELECTOR = re.compile(r"(?<![:\w])(rlfleet_[a-z0-9_]+)(?![:\w])(?:\{([^}]*)\})?")
# Labels Prometheus adds at scrape time, and the bucket label of histograms.
SCRAPE_LABELS = {"job", "instance", "le"}


def _scrape_targets() -> dict[str, list[tuple[str, int, str]]]:
    """job -> [(host, port, "dns" | "static")] from prometheus.yml."""
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs: dict[str, list] = {}
    for job in config["scrape_configs"]:
        for sd in job.get("dns_sd_configs", []):
            assert sd["type"] == "A"
            jobs.setdefault(job["job_name"], []).extend((name, sd["port"], "dns") for name in sd["names"])
        for sc in job.get("static_configs", []):
            for target in sc["targets"]:
                host, port = target.rsplit(":", 1)
                jobs.setdefault(job["job_name"], []).append((host, int(port), "static"))
    return jobs


def test_prometheus_scrapes_every_service_on_its_metrics_port():
    jobs = _scrape_targets()
    for path in COMPOSE_FILES:
        compose = yaml.safe_load(path.read_text())
        for name in rlfleet_services(compose):
            assert name in jobs, f"{path.name}: service {name} is not scraped"
            assert all((host, port) == (name, METRICS_PORT) for host, port, _ in jobs[name]), jobs[name]
        for job, targets in jobs.items():
            assert all(host in compose["services"] or host == "localhost" for host, _, _ in targets), job
    assert [kind for _, _, kind in jobs["generator"]] == ["dns"]  # every scaled replica, not one of them


def test_staleness_alert_bound_matches_the_learners_max_staleness():
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    (alert,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "RolloutStalenessAboveBound"]
    bound = int(re.search(r">\s*(\d+)\s*$", alert["expr"].strip())[1])
    for name in ("cluster.toml", "cluster.cpu.toml"):
        source = tomllib.loads((COMPOSE / name).read_text())["learner"]["source"]
        assert source["max_staleness"] == bound, name


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (Debian: apt-get install prometheus; scripts/install.sh does it)")
def test_promtool_accepts_the_config_and_rules():
    for args in (["check", "config", str(PROMETHEUS / "prometheus.yml")],
                 ["check", "rules", str(PROMETHEUS / "rules.yml")]):
        result = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def _queried_selectors() -> list[tuple[str, set[str], str]]:
    """(metric name, label names in its selector, where) for every rlfleet metric the dashboard and rules query."""
    exprs = [(t["expr"], f"panel {p['title']!r}") for p in json.loads(DASHBOARD.read_text())["panels"]
             for t in p["targets"]]
    rules = yaml.safe_load((PROMETHEUS / "rules.yml").read_text())
    exprs += [(r["expr"], f"rule {r.get('alert') or r.get('record')}") for g in rules["groups"] for r in g["rules"]]
    out = []
    for expr, where in exprs:
        for name, selector in SELECTOR.findall(expr):
            labels = {m.split("=")[0].strip().rstrip("!~") for m in selector.split(",") if m.strip()}
            out.append((name, labels, where))
    return out


def _module_exports(module_name: str) -> dict[str, set[str]]:
    """Sample names -> label names of every metric a service's metrics module defines."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        pytest.skip(f"{module_name} is not in this checkout yet ({err})")
    exports: dict[str, set[str]] = {}
    for metric in vars(module).values():
        if isinstance(metric, MetricWrapperBase):
            suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"],
                        "summary": ["_sum", "_count", ""]}[metric._type]
            for suffix in suffixes:
                exports[metric._name + suffix] = set(metric._labelnames)
    return exports


def _live_exports(text: str) -> dict[str, set[str]]:
    return {s.name: set(s.labels) for f in text_string_to_metric_families(text) for s in f.samples}


def test_dashboard_has_the_panels_the_issue_asks_for():
    titles = " | ".join(p["title"].lower() for p in json.loads(DASHBOARD.read_text())["panels"])
    for words in ("reward per component", "kl", "entropy", "response length", "tokens/s per generator",
                  "reward latency p50 / p99", "weight-push latency", "policy version per generator",
                  "step time breakdown"):
        assert words in titles, words


@pytest.mark.parametrize("prefix", sorted(METRIC_MODULES))
def test_queried_metrics_are_exported_by_their_service(prefix, request, running_reference):
    # The reference and the reward service (and the shared rlfleet_grpc_* / rlfleet_service_ready
    # metrics) are read from running servers; generator and learner, too costly to start here (vLLM,
    # DeepSpeed), from the metrics modules their servers export.
    live = _live_exports(running_reference.metrics_text())
    if prefix == "rlfleet_reference_":
        exports = live
    elif prefix == "rlfleet_reward_":
        exports = _live_exports(request.getfixturevalue("running_reward").metrics_text())
    else:
        exports = _module_exports(METRIC_MODULES[prefix])
    shared = {n: labels for n, labels in live.items() if n.startswith(("rlfleet_grpc_", "rlfleet_service_"))}
    queried = [(n, labels, where) for n, labels, where in _queried_selectors() if n.startswith(prefix)]
    assert queried, f"nothing queries {prefix}*"
    for name, labels, where in queried:
        assert name in exports, f"{where}: {name} is not exported (known: {sorted(exports)})"
        assert labels <= exports[name] | SCRAPE_LABELS, f"{where}: {name} has no label {labels - exports[name]}"
    for name, labels, where in _queried_selectors():
        if name.startswith(("rlfleet_grpc_", "rlfleet_service_")):
            assert name in shared and labels <= shared[name] | SCRAPE_LABELS, f"{where}: {name}"


def test_alerts_use_only_recording_rules_that_exist():
    rules = [r for g in yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"] for r in g["rules"]]
    recorded = {r["record"] for r in rules if "record" in r}
    used = {name for r in rules for name in re.findall(r"\b[a-z_]+:[a-z0-9_]+:[a-z0-9_]+\b", r["expr"])}
    assert used <= recorded, used - recorded


def test_grafana_datasource_is_the_compose_prometheus():
    datasource = yaml.safe_load((COMPOSE / "grafana/provisioning/datasources/prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    uids = {t["datasource"]["uid"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]}
    assert uids == {source["uid"]} and source["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((COMPOSE / "grafana/provisioning/dashboards/rlfleet.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_reference_metrics_port_in_config_is_the_scraped_port():
    for name in ("cluster.toml", "cluster.cpu.toml"):
        config = load_config(config_class("reference"), ["--config", str(COMPOSE / name)], environ={})
        assert config.server.metrics_port == METRICS_PORT
