"""Reward server over real loopback gRPC: hostile scripts, statuses, weights, idempotency, overload, health.

Calls go through rlfleet.clients.RewardClient, except where a test sends what the client never
would: a chosen request_id sent twice (idempotency), or a column that is not JSON.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from reward_server.__main__ import main
from reward_server.config import RewardConfig
from reward_server.core import RewardCore
from reward_server.server import SERVICE, start_server
from rlfleet.cli import run_command
from rlfleet.clients import RewardClient, make_channel
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.outcomes import RewardItem, RewardStatus
from rlfleet.v1 import reward_pb2, reward_pb2_grpc
from rlfleet.workers.limits import LimitsConfig

OK, TIMEOUT, ERROR, INVALID = (RewardStatus.OK, RewardStatus.TIMEOUT, RewardStatus.ERROR, RewardStatus.INVALID_OUTPUT)
ONE_ATTEMPT = ClientConfig(max_attempts=1)

HOSTILE = '''
import ctypes, os, re, subprocess, sys, time

def _record(pidfile, pid):
    with open(pidfile, "a") as f:
        f.write(f"{pid}\\n")

def hostile(prompt, completion, pidfile=None, marker="", **columns):
    """Misbehaves as the completion asks; processes it leaves behind run `sleep MARKER`."""
    if completion == "busy":
        while True:
            pass
    if completion == "gil":  # catastrophic backtracking: one C call that never releases the GIL
        re.match(r"(a+)+$", "a" * 64 + "b")
    if completion == "forkbomb":
        for _ in range(20):
            pid = os.fork()
            if pid == 0:
                os.execvp("sleep", ["sleep", marker])
            _record(pidfile, pid)
        while True:
            time.sleep(1)
    if completion == "membomb":
        return len([0] * 2**31)  # 16 GiB of pointers, far past the address-space limit
    if completion == "pipe_holder":  # a grandchild keeps the worker's pipes open after the worker exits
        child = subprocess.Popen(["sleep", marker], close_fds=False)
        _record(pidfile, child.pid)
        os._exit(0)
    if completion == "os_exit":
        os._exit(7)
    if completion == "segfault":
        ctypes.string_at(0)
    if completion == "sys_exit":
        sys.exit(0)
    if completion == "nan":
        return float("nan")
    if completion == "text":
        return "1.0"
    return float(len(completion))

def short_list(prompts, completions, **columns):
    """Returns one value too few."""
    return [1.0] * (len(completions) - 1)
'''


def _config(script: Path, **overrides) -> RewardConfig:
    return RewardConfig(script=script, server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0), **overrides)


async def _serve(config: RewardConfig):
    core = RewardCore(config)
    core.start_workers()
    server = await start_server(config.server, core)
    return server, core


async def _stop(server, core) -> None:
    await server.stop(0)
    core.close()


def _item(completion: str, **columns) -> RewardItem:
    return RewardItem("p", completion, columns)


def _raw_item(completion: str) -> reward_pb2.RewardItem:
    return reward_pb2.RewardItem(prompt="p", completion=completion)


def _metrics(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def _alive(marker: str) -> list[int]:
    """Live processes of the whole machine running `sleep MARKER` (pids inside a worker's namespace mean nothing here)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def writable() -> Path:
    """A folder reward code may write to: as root, the tests' workers run as nobody (pytest's tmp_path is root's)."""
    folder = Path(tempfile.mkdtemp(prefix="rlfleet-reward-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.slow
def test_hostile_items_cost_one_item_each(tmp_path, writable):
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    pidfile, marker = str(writable / "pids"), f"{time.time() % 1000:.6f}"
    config = _config(script, reward=["hostile:1"], workers=2, item_timeout_seconds=1.5,
                     limits=LimitsConfig(address_space_bytes=2 * 1024**3))
    kinds = ["ok", "busy", "gil", "forkbomb", "membomb", "pipe_holder", "os_exit", "segfault", "sys_exit", "nan",
             "text", "fine"]

    async def run():
        server, core = await _serve(config)
        async with RewardClient(f"127.0.0.1:{server.port}") as client:
            first = await client.score([_item(k, pidfile=pidfile, marker=marker) for k in kinds])
            after = await client.score([_item("abc")])
        scraped = await asyncio.to_thread(_metrics, server.metrics_port)
        await _stop(server, core)
        return first, after, scraped

    first, after, scraped = asyncio.run(run())
    got = {k: (r.status, r.reward, r.error) for k, r in zip(kinds, first, strict=True)}
    assert got["ok"] == (OK, 2.0, "") and got["fine"] == (OK, 4.0, "")  # len("fine") = 4
    for kind in ("busy", "gil", "forkbomb"):
        assert got[kind][0] == TIMEOUT and "killed" in got[kind][2], kind
    assert got["membomb"][0] == ERROR and "MemoryError" in got["membomb"][2]
    assert got["pipe_holder"][0] == ERROR and "exited with code 0" in got["pipe_holder"][2]
    assert got["os_exit"][0] == ERROR and "code 7" in got["os_exit"][2]
    assert got["segfault"][0] == ERROR and "SIGSEGV" in got["segfault"][2]
    assert got["sys_exit"][0] == ERROR and "sys.exit(0)" in got["sys_exit"][2]
    assert got["nan"][0] == INVALID and "not finite" in got["nan"][2] and got["nan"][1] == 0.0
    assert got["text"][0] == INVALID and "not a number" in got["text"][2]
    assert (after[0].status, after[0].reward) == (OK, 3.0)
    assert len(Path(pidfile).read_text().split()) == 21  # 20 fork-bomb children + the pipe holder started ...
    assert _alive(marker) == []  # ... and none outlived its worker
    restarts = {dict(k[1]).get("reason"): v for k, v in scraped.items() if k[0] == "rlfleet_reward_worker_restarts_total"}
    assert restarts.get("timeout", 0) >= 3 and restarts.get("crash", 0) >= 3
    scored = {dict(k[1])["status"]: v for k, v in scraped.items()
              if k[0] == "rlfleet_reward_items_scored_total" and dict(k[1]).get("reward") == "hostile"}
    assert scored["TIMEOUT"] >= 3 and scored["OK"] >= 3 and scored["INVALID_OUTPUT"] >= 2
    assert scraped[("rlfleet_reward_queue_items", ())] == 0
    assert ("rlfleet_reward_component_mean", (("reward", "hostile"),)) in scraped
    assert any(k[0] == "rlfleet_reward_score_duration_seconds_count" and dict(k[1])["reward"] == "hostile"
               for k in scraped)


BATCH = '''
def accuracy(prompts, completions, answer, **columns):
    """1 when the completion equals the answer."""
    return [1.0 if c == a else 0.0 for c, a in zip(completions, answer)]

def length_bonus(prompt, completion, **columns):
    """Not applicable (None) to empty completions."""
    return None if not completion else len(completion) / 10

def flaky(prompts, completions, **columns):
    """Raises on one item: the batch is retried item by item."""
    if "boom" in completions:
        raise ValueError("boom")
    return [0.5] * len(completions)
'''


def test_weights_none_components_and_batch_retry(tmp_path):
    script = tmp_path / "rewards.py"
    script.write_text(BATCH + HOSTILE)
    config = _config(script, reward=["accuracy:1.0", "length_bonus:0.5", "flaky:2"])

    async def run():
        server, core = await _serve(config)
        async with RewardClient(f"127.0.0.1:{server.port}") as client:
            items = [RewardItem("q", completion, {"answer": "four"}) for completion in ("four", "", "boom")]
            scored = await client.score(items)
            scored_version = client.script_version
            listed = await client.list_rewards()
            listed_version = client.script_version
            bad = await client.score([_item("a"), _item("b")])
        await _stop(server, core)
        return scored, scored_version, listed, listed_version, bad

    r, scored_version, listed, listed_version, bad = asyncio.run(run())
    # item 0: accuracy 1 * 1.0 + length 0.4 * 0.5 + flaky 0.5 * 2 = 1 + 0.2 + 1 = 2.2
    assert r[0].status == OK and r[0].reward == pytest.approx(2.2)
    assert dict(r[0].components) == pytest.approx({"accuracy": 1.0, "length_bonus": 0.4, "flaky": 0.5})
    # item 1: accuracy 0, length None (left out, not 0), flaky 0.5 * 2 = 1.0
    assert r[1].status == OK and r[1].reward == pytest.approx(1.0) and "length_bonus" not in r[1].components
    # item 2: only this item fails: flaky raised on it when retried alone
    assert r[2].status == ERROR and r[2].reward == 0.0 and "flaky: ERROR: ValueError: boom" in r[2].error
    assert r[2].components["accuracy"] == 0.0
    assert [(s.name, s.weight, s.kind) for s in listed] == [
        ("accuracy", 1.0, "function"), ("length_bonus", 0.5, "function"), ("flaky", 2.0, "function")]
    assert listed[0].description == "1 when the completion equals the answer."
    assert listed_version == scored_version and len(scored_version) == 16
    # no `answer` column at all: accuracy's batch call raises TypeError for every item
    assert [x.status for x in bad] == [ERROR, ERROR] and "TypeError" in bad[0].error


def test_wrong_length_batch_is_invalid_output_and_version_tracks_script(tmp_path):
    script = tmp_path / "rewards.py"
    script.write_text(HOSTILE)

    async def run(text):
        script.write_text(text)
        server, core = await _serve(_config(script, reward=["short_list:1"]))
        async with RewardClient(f"127.0.0.1:{server.port}") as client:
            out = await client.score([_item("a"), _item("b"), _item("c")])
        await _stop(server, core)
        return out, client.script_version

    first, first_version = asyncio.run(run(HOSTILE))
    _, second_version = asyncio.run(run(HOSTILE + "\n# edited\n"))
    assert [r.status for r in first] == [INVALID] * 3
    assert "returned 2 values for 3 items" in first[0].error
    assert first_version != second_version


def test_retried_request_id_is_scored_once(tmp_path, writable):
    script = tmp_path / "count.py"
    log = writable / "calls.log"
    script.write_text(f'def counted(prompt, completion, **c):\n    open({str(log)!r}, "a").write("x\\n")\n    return 1.0\n')

    async def run():
        server, core = await _serve(_config(script))
        async with make_channel(f"127.0.0.1:{server.port}") as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            request = reward_pb2.ScoreRequest(request_id="r-1", items=[_raw_item("a"), _raw_item("b")])
            first, second = await asyncio.gather(stub.Score(request), stub.Score(request))
            third = await stub.Score(request)
        await _stop(server, core)
        return first, second, third

    first, second, third = asyncio.run(run())
    assert first == second == third
    assert log.read_text().count("x") == 2  # two items, scored once in total


def test_retry_after_the_first_call_gave_up_shares_the_work(tmp_path, writable):
    script = tmp_path / "slow.py"
    log = writable / "calls.log"
    script.write_text(f"import time\ndef slow(prompt, completion, **c):\n"
                      f"    open({str(log)!r}, 'a').write('x')\n    time.sleep(1.5)\n    return 1.0\n")

    async def run():
        server, core = await _serve(_config(script, workers=1))
        async with make_channel(f"127.0.0.1:{server.port}", ClientConfig(max_attempts=1)) as channel:
            stub = reward_pb2_grpc.RewardServiceStub(channel)
            request = reward_pb2.ScoreRequest(request_id="r-2", items=[_raw_item("a")])
            impatient = asyncio.ensure_future(stub.Score(request, timeout=1))
            await asyncio.sleep(0.5)
            patient = await stub.Score(request, timeout=10)  # joins the running work before the first gives up
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await impatient
        await _stop(server, core)
        return err.value.code(), patient

    code, patient = asyncio.run(run())
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert patient.results[0].reward == 1.0 and log.read_text() == "x"  # scored once


def test_overload_answers_resource_exhausted_quickly(tmp_path):
    script = tmp_path / "slow.py"
    script.write_text("import time\ndef slow(prompt, completion, **c):\n    time.sleep(1)\n    return 1.0\n")

    async def run():
        server, core = await _serve(_config(script, workers=1, max_queued_items=4))
        target = f"127.0.0.1:{server.port}"
        async with RewardClient(target, ONE_ATTEMPT) as client, make_channel(target, ONE_ATTEMPT) as channel:
            busy = asyncio.ensure_future(client.score([_item("a")] * 3))
            await asyncio.sleep(0.3)
            start = time.perf_counter()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await client.score([_item("b")] * 2)
            refused_after = time.perf_counter() - start
            with pytest.raises(grpc.aio.AioRpcError) as empty:
                await client.score([])
            with pytest.raises(grpc.aio.AioRpcError) as bad_json:  # the client JSON-encodes: only a raw stub can
                await reward_pb2_grpc.RewardServiceStub(channel).Score(
                    reward_pb2.ScoreRequest(items=[reward_pb2.RewardItem(columns={"answer": "{4"})]))
            await busy
        await _stop(server, core)
        return err.value, refused_after, empty.value, bad_json.value

    err, refused_after, empty, bad_json = asyncio.run(run())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_queued_items" in err.details()
    assert refused_after < 0.5
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT and empty.details().startswith("items:")
    assert bad_json.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_json.details().startswith('items[0].columns["answer"]: value is not JSON')


def test_health_is_fast_while_workers_are_busy_and_cancelled_work_is_abandoned(tmp_path):
    script = tmp_path / "hostile.py"
    script.write_text(HOSTILE)
    config = _config(script, reward=["hostile:1"], workers=2, item_timeout_seconds=60)

    async def run():
        server, core = await _serve(config)
        target = f"127.0.0.1:{server.port}"
        async with RewardClient(target, ONE_ATTEMPT, timeout=3) as client, make_channel(target) as channel, \
                RewardClient(target, ONE_ATTEMPT, timeout=20) as patient:
            health = health_pb2_grpc.HealthStub(channel)
            calls = [asyncio.ensure_future(client.score([_item("busy")])) for _ in range(2)]
            await asyncio.sleep(1.0)
            latencies, statuses = [], []
            for _ in range(5):
                start = time.perf_counter()
                reply = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                latencies.append(time.perf_counter() - start)
                statuses.append(reply.status)
            codes = []
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call
                codes.append(err.value.code())
            start = time.perf_counter()
            after = await patient.score([_item("ab")] * 4)
            after_seconds = time.perf_counter() - start
        await _stop(server, core)
        return latencies, statuses, codes, after, after_seconds

    latencies, statuses, codes, after, after_seconds = asyncio.run(run())
    assert statuses == [health_pb2.HealthCheckResponse.SERVING] * 5
    assert max(latencies) < 0.1, latencies
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 2
    # the busy workers were killed when their callers gave up, not after the 60 s item timeout
    assert after_seconds < 10 and [r.reward for r in after] == [2.0] * 4


def test_not_serving_until_ready(tmp_path):
    script = tmp_path / "r.py"
    script.write_text("def one(prompt, completion, **c):\n    return 1.0\n")
    config = _config(script)

    async def run():
        from reward_server.servicer import RewardServicer
        from rlfleet.server import GrpcServer

        core = RewardCore(config)
        core.start_workers()
        server = GrpcServer(config.server, name="reward")
        server.add_servicer(reward_pb2_grpc.add_RewardServiceServicer_to_server, RewardServicer(core))
        await server.start([SERVICE])
        async with make_channel(f"127.0.0.1:{server.port}", ClientConfig(max_attempts=1)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            before = (await health.Check(health_pb2.HealthCheckRequest(service=SERVICE))).status
            with pytest.raises(grpc.aio.AioRpcError) as early:
                await reward_pb2_grpc.RewardServiceStub(channel).Score(reward_pb2.ScoreRequest(items=[_raw_item("a")]))
        await _stop(server, core)
        return before, early.value.code()

    before, early = asyncio.run(run())
    assert before == health_pb2.HealthCheckResponse.NOT_SERVING
    assert early == grpc.StatusCode.UNAVAILABLE


def test_broken_script_exits_naming_file_and_line(tmp_path, capsys):
    script = tmp_path / "broken.py"
    script.write_text("import os\n\n\ndef f(prompt, completion):\n    return 1.0\n\nvalue = 1 / 0\n")
    missing = tmp_path / "fine.py"
    missing.write_text("def f(prompt, completion):\n    return 1.0\n")
    assert run_command("reward-server", ["--script", str(script), "--server.port", "0"]) == 2
    assert f"{script}:7: ZeroDivisionError: division by zero" in capsys.readouterr().err
    assert run_command("reward-server", ["--script", str(missing), "--reward", "nope:1", "--server.port", "0"]) == 2
    assert "no reward function 'nope'" in capsys.readouterr().err


def test_check_dry_run_prints_scores(tmp_path, capsys):
    script = tmp_path / "acc.py"
    script.write_text(BATCH)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"prompt": "q", "completion": "four", "reference": "four"}\n'
                    '{"prompt": "q", "completion": "<think></think>x", "reference": "four"}\n')
    code = main(["--check", str(script), "--sample", str(rows), "--reward", "accuracy:1",
                 "--reward", "think_answer_format:0.5"])
    out = capsys.readouterr().out
    assert code == 0
    assert "row 0: OK reward=1 accuracy=1 think_answer_format=0" in out
    assert "row 1: OK reward=0 accuracy=0 think_answer_format=0" in out
    assert os.path.exists(rows)
