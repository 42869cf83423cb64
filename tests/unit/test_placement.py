"""`rlfleet up --cpus/--threads`: placement parsed and checked, and a started service really pinned (with its children)."""

from __future__ import annotations

import os
import time

import pytest

from launcher.cluster import LocalCluster, Service
from launcher.launch import Ports, cluster_tables
from launcher.up import UpConfig
from rlfleet.config import ConfigError, load_config, to_toml
from tests.conftest import free_port


def test_placement_defaults_and_pins():
    config = load_config(UpConfig, ["--cpus", "generator=0", "learner=0-1", "--threads", "reward=3"], environ={})
    # pinned services get one thread per CPU; the rest keep 2 (generator, learner) or 1 (reward, reference)
    assert config.placement("generator") == (1, frozenset({0}))
    assert config.placement("learner") == (2, frozenset({0, 1}))
    assert config.placement("reward") == (3, None)
    assert config.placement("reference") == (1, None)


@pytest.mark.parametrize("flags, message", [
    (["--cpus", "gpu=0"], "--cpus: 'gpu=0': expected SERVICE=VALUE with SERVICE one of generator"),
    (["--cpus", "generator=x"], "--cpus: generator=x: expected CPU numbers like 0, 0-3 or 0,2"),
    (["--cpus", "generator=4096"], r"--cpus: generator=4096: this machine offers CPUs \["),
    (["--threads", "learner=0"], "--threads: learner=0: the number of threads must be a whole number >= 1"),
])
def test_bad_placement_names_the_option(flags, message):
    with pytest.raises(ConfigError, match=message):
        load_config(UpConfig, flags, environ={})


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two CPUs to pin to one")
def test_a_pinned_service_and_its_workers_run_on_its_cpus_only(tmp_path):
    cpu = max(os.sched_getaffinity(0))
    config = UpConfig(cpus=[f"reward={cpu}"])
    tables = cluster_tables(config, "unused", tmp_path, Ports.from_base(50100, 1))
    (tmp_path / "cluster.toml").write_text(to_toml(tables))
    threads, cpus = config.placement("reward")
    cluster = LocalCluster(tmp_path)
    port = free_port()
    service = cluster.start(Service("reward", "reward-server", ["--config", str(tmp_path / "cluster.toml")], port,
                                    free_port(), threads=threads, cpus=cpus))
    try:
        cluster.wait_healthy([service], 120)
        from rlfleet import cpu as cpu_account

        pids = cpu_account.tree_pids(service.process.pid)
        assert len(pids) >= 2  # the service and its reward worker(s), started after the pin
        for pid in pids:
            assert os.sched_getaffinity(pid) == {cpu}
        assert _environ(service.process.pid)["OMP_NUM_THREADS"] == "1"
    finally:
        cluster.stop_all()


def _environ(pid: int) -> dict[str, str]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        raw = open(f"/proc/{pid}/environ", "rb").read()
        if raw:
            return dict(kv.split("=", 1) for kv in raw.decode().split("\0") if "=" in kv)
        time.sleep(0.1)
    return {}
