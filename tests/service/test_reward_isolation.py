"""Reward workers as an isolation boundary, attacked over real loopback gRPC: secrets, network, escapes, replies."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import reward_server.workers
from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.server import SERVICE, start_server
from rlfleet.clients import make_channel
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.v1 import common_pb2, reward_pb2, reward_pb2_grpc
from rlfleet.workers.limits import LimitsConfig
from tests.conftest import free_port

OK, TIMEOUT, ERROR = common_pb2.REWARD_STATUS_OK, common_pb2.REWARD_STATUS_TIMEOUT, common_pb2.REWARD_STATUS_ERROR
ROOT = os.geteuid() == 0

HOSTILE = r'''
import os, pickle, resource, struct, sys, time

def escape(prompt, completion, marker="", **columns):
    """Double fork with setsid: the grandchild sleeps under `marker`; then this item hangs."""
    if completion == "fine":
        return 1.0
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execvp("sleep", ["sleep", marker])
        os._exit(0)
    while True:
        time.sleep(1)

def limits(prompt, completion, **columns):
    """1 when every rlimit is hard = soft and finite, and raising the CPU limit is refused."""
    for which in (resource.RLIMIT_AS, resource.RLIMIT_NOFILE, resource.RLIMIT_NPROC, resource.RLIMIT_CPU):
        soft, hard = resource.getrlimit(which)
        if soft != hard or hard == resource.RLIM_INFINITY:
            return 0.0
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    try:
        resource.setrlimit(resource.RLIMIT_CPU, (hard + 60, hard + 60))
    except (ValueError, OSError):
        return 1.0
    return 0.0

def reach(prompt, completion, port=0, **columns):
    """1 when the gRPC health service on the loopback port answers, 0 when it cannot be reached."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=3)
        except grpc.RpcError:
            return 0.0
    return 1.0

def pickled_reply(prompt, completion, **columns):
    """Writes a pickle that runs code in whoever unpickles it into the reply pipe, then answers normally."""
    if completion == "fine":
        return 1.0
    class Payload:
        def __reduce__(self):
            return exec, ("import reward_server.workers as w; w.PWNED = True",)
    data = pickle.dumps(Payload())
    os.write(int(sys.argv[2]), struct.pack("!i", len(data)) + data)
    return 1.0

def burn(prompt, completion, **columns):
    """Spins on the CPU until stopped."""
    while completion != "fine":
        pass
    return 1.0

def whoami(prompt, completion, **columns):
    """The worker's uid."""
    return float(os.getuid())
'''


def _config(script: Path, **limits) -> RewardConfig:
    return RewardConfig(script=script, server=ServerConfig(host="127.0.0.1", port=0), item_timeout_seconds=2,
                        limits=LimitsConfig(**limits))


def _item(completion: str, **columns) -> reward_pb2.RewardItem:
    return reward_pb2.RewardItem(prompt="p", completion=completion,
                                 columns={k: json.dumps(v) for k, v in columns.items()})


def _processes_with(marker: str) -> list[int]:
    """Live (not zombie) processes of the whole machine whose command line holds `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


async def _score(config: RewardConfig, reward: str, items, during=None):
    core = RewardCore(config.model_copy(update={"reward": [f"{reward}:1"]}))
    core.start_workers()
    server = await start_server(config.server, core)
    try:
        async with make_channel(f"127.0.0.1:{server.port}", ClientConfig(max_attempts=1)) as channel:
            call = asyncio.ensure_future(reward_pb2_grpc.RewardServiceStub(channel).Score(
                reward_pb2.ScoreRequest(items=[it(server.port) if callable(it) else it for it in items]), timeout=30))
            seen = await during() if during else None
            reply = await call
            after = await reward_pb2_grpc.RewardServiceStub(channel).Score(
                reward_pb2.ScoreRequest(items=[_item("fine")]), timeout=30)
    finally:
        await server.stop(0)
        core.close()
    return reply.results, after.results[0], seen


@pytest.fixture
def hostile(tmp_path) -> Path:
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    return script


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_setsid_double_forked_grandchild_dies_with_its_worker(hostile):
    marker = f"{time.time() % 1000:.6f}"  # `sleep 123.456789`: a command line no other process has

    async def grandchild_seen():
        for _ in range(100):
            if _processes_with(marker):
                return True
            await asyncio.sleep(0.02)
        return False

    results, after, seen = asyncio.run(_score(_config(hostile), "escape", [_item("x", marker=marker)],
                                              during=grandchild_seen))
    assert seen, "the grandchild never started"
    assert results[0].status == TIMEOUT and "killed" in results[0].error
    assert _processes_with(marker) == []  # gone when the item's TIMEOUT came back, setsid notwithstanding
    assert after.status == OK


def test_rlimits_are_hard_and_the_cpu_limit_cannot_be_raised(hostile):
    results, _, _ = asyncio.run(_score(_config(hostile), "limits", [_item("x")]))
    assert (results[0].status, results[0].reward) == (OK, 1.0), results[0].error


def test_a_pickled_reply_runs_no_code_in_the_server(hostile):
    results, after, _ = asyncio.run(_score(_config(hostile), "pickled_reply", [_item("a"), _item("b")]))
    assert not hasattr(reward_server.workers, "PWNED")
    for result in results:
        assert result.status == ERROR and "malformed reply" in result.error, result.error
    assert (after.status, after.reward) == (OK, 1.0)  # the server still serves


@pytest.mark.parametrize("limit", ["cpu_seconds_per_item", "cpu_seconds_per_worker"])
def test_cpu_limits_stop_a_spinning_item_before_its_deadline(hostile, limit):
    config = _config(hostile, **{limit: 0.5}).model_copy(update={"item_timeout_seconds": 30})
    start = time.monotonic()
    results, after, _ = asyncio.run(_score(config, "burn", [_item("x")]))
    # per item: the server's /proc reading; per worker: RLIMIT_CPU, hard = soft = 1 s (0.5 rounded up + 1)
    expected = "limits.cpu_seconds_per_item" if limit == "cpu_seconds_per_item" else "SIGKILL"
    assert results[0].status == ERROR and expected in results[0].error, results[0].error
    assert time.monotonic() - start < 25 and (after.status, after.reward) == (OK, 1.0)


@pytest.mark.parametrize("allow_network", [False, True])
def test_network_only_when_allowed(hostile, allow_network):
    from rlfleet.workers.isolation import plan_fence

    if not allow_network and not plan_fence(False, "nobody").network_blocked:
        pytest.skip("no network namespace on this machine")

    def reach_own_server(port):
        return _item("x", port=port)

    results, _, _ = asyncio.run(_score(_config(hostile, allow_network=allow_network), "reach", [reach_own_server]))
    # the reward server's own health service on loopback: reachable only when allowed
    assert (results[0].status, results[0].reward) == (OK, 1.0 if allow_network else 0.0)


@pytest.mark.skipif(not ROOT, reason="the drop to another user happens only when the service runs as root")
def test_root_service_runs_reward_code_as_nobody(hostile):
    results, _, _ = asyncio.run(_score(_config(hostile), "whoami", [_item("x")]))
    assert results[0].reward == 65534.0  # nobody's uid on Debian


SECRETS = r'''
import ctypes, os

def _hits(secret):
    hits = sum(secret in value.encode() for value in os.environ.values())
    for pid in os.listdir("/proc"):
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    hits += secret in f.read(1 << 20)
            except (OSError, ValueError):
                pass
    return hits

def hunt(prompt, completion, **columns):
    """Places where the secret `completion` shows: the environment, every /proc/PID, again with /proc unmounted."""
    hits = _hits(completion.encode())
    if ctypes.CDLL(None).umount2(b"/proc", 2) == 0:  # MNT_DETACH: uncover the host's /proc where allowed
        hits += _hits(completion.encode())
    return float(hits)

def uncovered(prompt, completion, **columns):
    """1 when this worker can unmount its /proc and see the host's (more than its namespace's few processes)."""
    ctypes.CDLL(None).umount2(b"/proc", 2)
    return float(len([p for p in os.listdir("/proc") if p.isdigit()]) > 10)
'''


def _serve_cli(script: Path, env: dict[str, str], python: list[str]):
    port = free_port()
    command = [*python, "-m", "reward_server", "--script", str(script), "--server.host", "127.0.0.1",
               "--server.port", str(port)] + [f"--limits.pass-env={name}" for name in ("PATH", "PYTHONPATH", "JUDGE_KEY")]
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), port


async def _hunt(port: int, token: str, secrets: list[str]) -> list[dict[str, float]]:
    config = ClientConfig(max_attempts=1, auth_token=token)
    async with make_channel(f"127.0.0.1:{port}", config) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(300):
            try:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            await asyncio.sleep(0.1)
        scored = await reward_pb2_grpc.RewardServiceStub(channel).Score(
            reward_pb2.ScoreRequest(items=[_item(s) for s in secrets]), timeout=30)
    assert all(r.status == OK for r in scored.results), [r.error for r in scored.results]
    return [dict(r.components) for r in scored.results]


def _as_nobody() -> list[str]:
    """A command prefix running this Python's code as nobody with the system's interpreter of the same version.

    On the developers' machines this interpreter lives under /root (mode 0700), which nobody cannot
    execute; Debian's python3.X runs the same code from the venv's site-packages.
    """
    python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if not ROOT or not Path(python).exists() or not Path("/usr/bin/setpriv").exists():
        pytest.skip(f"needs root, setpriv and {python}")
    return ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python]


@pytest.mark.parametrize("service_user", ["root", "nobody", "nobody-without-namespaces"])
def test_reward_code_cannot_find_the_services_token(service_user):
    python = [sys.executable] if service_user == "root" else _as_nobody()
    folder = Path(tempfile.mkdtemp(prefix="rlfleet-secrets-"))
    folder.chmod(0o755)  # the service may run as nobody
    script = folder / "secrets.py"
    script.write_text(SECRETS)
    token, judge_key = uuid.uuid4().hex, uuid.uuid4().hex
    root = Path(__file__).resolve().parents[2]
    site = next(p for p in sys.path if p.endswith("site-packages"))
    # Without `unshare` on its PATH the service finds no namespaces and starts workers beside itself.
    path = "/nonexistent" if service_user == "nobody-without-namespaces" else "/usr/bin:/bin"
    env = {"PATH": path, "PYTHONPATH": f"{root}:{site}", "RLFLEET_SERVER__AUTH_TOKEN": token, "JUDGE_KEY": judge_key}
    server, port = _serve_cli(script, env, python)
    try:
        token_found, judge_found = asyncio.run(_hunt(port, token, [token, judge_key]))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder)
    assert judge_found["hunt"] >= 1  # the hunt works: a variable named in --limits.pass-env is found
    assert token_found["hunt"] == 0  # the service's token is in no environment and no readable /proc/PID
    if service_user == "nobody":
        # its own user namespace lets the worker unmount /proc and see the service's process, but a
        # process in a child user namespace may not read the environ of one in its parent
        assert token_found["uncovered"] == 1.0
    if service_user == "nobody-without-namespaces":
        # the worker sees every process and shares the service's uid: PR_SET_DUMPABLE 0 in the
        # service is what hides its /proc/PID/environ
        assert token_found["uncovered"] == 1.0
