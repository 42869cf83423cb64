"""Deploy-test fixtures: a real reference service on loopback (tiny model) whose /metrics the tests read."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass

import pytest

from tests.conftest import free_port


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "compose: runs the real compose cluster in Docker (CI's own stage: pytest -m compose); "
        "deselected unless -m names it")


def pytest_collection_modifyitems(config, items):
    """Deselects `compose` tests unless the -m expression names them: they need Docker, built images and minutes."""
    if "compose" in (config.getoption("markexpr") or ""):
        return
    deselected = [item for item in items if item.get_closest_marker("compose")]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if not item.get_closest_marker("compose")]


@dataclass(frozen=True)
class RunningService:
    """A service running in a background thread of this process."""

    grpc_port: int
    metrics_port: int

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        return urllib.request.urlopen(url, timeout=5).read().decode()


@pytest.fixture(scope="session")
def running_reference(tiny_model_dir):
    """The real reference server (config parsed from compose/cluster.cpu.toml, ports moved to loopback),
    after one LogProbs call so that every metric it exports has samples."""
    from reference.config import ReferenceConfig
    from reference.server import start_reference_server
    from rlfleet.clients import ReferenceClient
    from rlfleet.config import load_config
    from tests.deploy.cluster import COMPOSE

    config = load_config(ReferenceConfig, [
        "--config", str(COMPOSE / "cluster.cpu.toml"), "--model", tiny_model_dir,
        "--server.host", "127.0.0.1", "--server.port", "0", "--server.metrics-port", "0"], environ={})
    loop = asyncio.new_event_loop()
    started: dict = {}
    ready = threading.Event()

    async def start():
        server = await start_reference_server(config)
        async with ReferenceClient(f"127.0.0.1:{server.port}", timeout=60) as client:
            await client.logprobs([([1, 2, 3, 4], 2)])
        started["server"] = server

    def run():
        try:
            loop.run_until_complete(start())
        finally:
            ready.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="reference-server", daemon=True)
    thread.start()
    assert ready.wait(120) and "server" in started, "the reference server did not start"
    server = started["server"]
    yield RunningService(server.port, server.metrics_port)
    asyncio.run_coroutine_threadsafe(server.stop(0), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="session")
def running_reward(tmp_path_factory):
    """The reward service as compose runs it (`rlfleet reward-server --config cluster.cpu.toml`, the demo
    script), on loopback ports in a subprocess, after one Score call so its labelled metrics have samples."""
    pytest.importorskip("reward_server.config", reason="the reward server is not in this checkout yet")
    from rlfleet.clients import RewardClient
    from rlfleet.health import check
    from rlfleet.outcomes import RewardItem
    from tests.deploy.cluster import COMPOSE, ROOT

    grpc_port, metrics_port = free_port(), free_port()
    log_path = tmp_path_factory.mktemp("reward") / "reward.log"
    log = open(log_path, "wb")  # a file, not a pipe nobody reads, which could fill and block the child
    process = subprocess.Popen(
        [sys.executable, "-m", "rlfleet.cli", "reward-server", "--config", str(COMPOSE / "cluster.cpu.toml"),
         "--script", str(COMPOSE / "rewards" / "reverse.py"), "--server.host", "127.0.0.1",
         "--server.port", str(grpc_port), "--server.metrics-port", str(metrics_port)],
        cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not check(f"127.0.0.1:{grpc_port}", timeout=1):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.3)
        async def score():
            async with RewardClient(f"127.0.0.1:{grpc_port}", timeout=60) as client:
                return await client.score([RewardItem("reverse:abc", "cba", {"answer": "cba"})])

        assert asyncio.run(score())[0].reward == pytest.approx(1.5)  # accuracy 1 x 1.0 + similarity 1 x 0.5
        yield RunningService(grpc_port, metrics_port)
    finally:
        process.terminate()
        process.wait(30)
        log.close()
