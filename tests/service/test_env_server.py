"""Environment server over real loopback gRPC: multi-turn sessions, model mistakes, hung and crashing environments,
retries, limits. Calls go through rlfleet.clients.EnvironmentClient, except where a test sends what the client never
would: a chosen session id or step index twice, or malformed requests.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from env_server.config import EnvConfig
from env_server.core import EnvironmentCore
from env_server.server import start_server
from rlfleet.cli import run_command
from rlfleet.clients import EnvironmentClient, make_channel
from rlfleet.config import ClientConfig, ServerConfig
from rlfleet.environments import EnvStatus, ToolCall
from rlfleet.outcomes import ItemScore, RewardStatus
from rlfleet.v1 import environment_pb2, environment_pb2_grpc
from rlfleet.workers.limits import LimitsConfig

OK, TIMEOUT, ERROR = EnvStatus.OK, EnvStatus.TIMEOUT, EnvStatus.ERROR
UNKNOWN_TOOL, BAD_ARGUMENTS, INVALID = EnvStatus.UNKNOWN_TOOL, EnvStatus.BAD_ARGUMENTS, EnvStatus.INVALID_OUTPUT

ENV = '''
import os, time

RESETS = [0]  # per worker process: shows whether reset ran again, and on which worker


class Counter:
    """Keeps a running total; misbehaves on request."""

    def __init__(self):
        self.total = 0

    def reset(self, start: int = 0, **row):
        RESETS[0] += 1
        self.total, self.done = start, False
        return f"total {self.total}; reset {RESETS[0]} in this worker"

    def add(self, n: int) -> int:
        """Adds to the total.

        Args:
            n: How much to add.
        """
        self.total += n
        return self.total

    def stop(self) -> str:
        """Ends the session."""
        self.done = True
        return "stopped"

    def hang(self) -> str:
        """Never answers."""
        while True:
            time.sleep(1)

    def crash(self) -> str:
        """Kills its own process."""
        os._exit(3)

    def shout(self, size: int) -> str:
        """A long text.

        Args:
            size: Its length in characters.
        """
        return "x" * size

    def on_message(self, message):
        return None if "bye" in message else f"you said {message!r}; total {self.total}"

    def get_reward(self):
        if self.total < 0:
            raise ValueError("negative total")
        if self.total == 13:
            return float("nan")
        return {"total": float(self.total), "bonus": 0.5}
'''


def _config(script: Path, **overrides) -> EnvConfig:
    return EnvConfig(script=script, server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0), **overrides)


async def _serve(tmp_path: Path, **overrides):
    script = tmp_path / "counter.py"
    script.write_text(ENV)
    core = EnvironmentCore(_config(script, **overrides))
    core.start_workers()
    server = await start_server(core.config.server, core)
    return server, core


async def _stop(server, core) -> None:
    await server.stop(0)
    core.close()


def _metrics(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


async def _scrape(server, before: dict | None = None) -> dict:
    """The metrics now, less their values in `before` (one registry serves every test of this process)."""
    now = await asyncio.to_thread(_metrics, server.metrics_port)
    return {k: v - (before or {}).get(k, 0.0) for k, v in now.items()}


def test_multi_turn_session(tmp_path):
    async def run():
        server, core = await _serve(tmp_path)
        before = await _scrape(server)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            catalog = await env.list_environments()
            session = await env.start({"start": 1, "prompt": "count"})
            turns = [await session.step(ToolCall.of("add", n=2)), await session.step(ToolCall("add", '{"n": 4}')),
                     await session.step("hello"), await session.step("bye")]
            with pytest.raises(grpc.aio.AioRpcError) as after_done:
                await session.step(ToolCall.of("add", n=1))
            score, again = await session.finish(), await session.finish()
            await session.close()
            await session.close()  # Close is idempotent
            lost = await session.step(ToolCall.of("add", n=1))
        scraped = await _scrape(server, before)
        await _stop(server, core)
        return catalog, session, turns, after_done.value, score, again, lost, scraped

    catalog, session, turns, after_done, score, again, lost, scraped = asyncio.run(run())
    assert [(e.name, e.has_reward, e.description) for e in catalog.environments] == [
        ("Counter", True, "Keeps a running total; misbehaves on request.")]
    assert (catalog.call_timeout_seconds, catalog.max_sessions, catalog.max_observation_chars) == (30.0, 1024, 65536)
    assert session.ok and session.start.environment == "Counter"
    assert session.observation == "total 1; reset 1 in this worker"  # reset(start=1, prompt="count")
    assert [t.name for t in session.tools] == ["add", "crash", "hang", "shout", "stop"]
    assert session.tools[0].parameters == {"type": "object", "required": ["n"], "properties": {
        "n": {"type": "integer", "description": "How much to add."}}}
    # 1 + 2 = 3, 3 + 4 = 7; on_message answers, then "bye" makes it return None: done
    assert [(t.status, t.observation, t.done) for t in turns] == [
        (OK, "3", False), (OK, "7", False), (OK, "you said 'hello'; total 7", False), (OK, "", True)]
    assert after_done.code() == grpc.StatusCode.FAILED_PRECONDITION and "is done" in after_done.details()
    assert score == again == ItemScore(7.5, {"total": 7.0, "bonus": 0.5})  # components summed: 7 + 0.5
    assert (lost.status, lost.done) == (ERROR, True) and "session lost" in lost.error and "closed" in lost.error
    assert scraped[("rlfleet_env_sessions_started_total", (("environment", "Counter"), ("status", "ok")))] == 1
    assert scraped[("rlfleet_env_tool_calls_total", (("environment", "Counter"), ("status", "ok"), ("tool", "add")))] == 2
    assert scraped[("rlfleet_env_steps_total", (("environment", "Counter"), ("kind", "message"), ("status", "ok")))] == 2
    assert scraped[("rlfleet_env_call_duration_seconds_count", (("call", "tool"), ("environment", "Counter")))] == 2
    assert scraped[("rlfleet_env_sessions_open", ())] == 0  # a gauge: 0 less 0 before


def test_sessions_stay_on_the_replica_that_started_them(tmp_path):
    """Two replicas behind one name: starts alternate, and every later call reaches the session's own replica."""
    async def run():
        replicas = [await _serve(tmp_path, workers=1) for _ in range(2)]
        addresses = [f"127.0.0.1:{server.port}" for server, _ in replicas]
        async with EnvironmentClient("dns:///env:50051", timeout=10, resolve=lambda target: addresses) as env:
            sessions = [await env.start({"start": 10 * i}) for i in range(4)]
            steps = [await s.step(ToolCall.of("add", n=1)) for s in sessions]
            scores = [await s.finish() for s in sessions]
        for server, core in replicas:
            await _stop(server, core)
        return addresses, sessions, steps, scores

    addresses, sessions, steps, scores = asyncio.run(run())
    # round robin from the second address: sessions 0 and 2 on one replica, 1 and 3 on the other
    assert [s.address for s in sessions] == [addresses[1], addresses[0], addresses[1], addresses[0]]
    assert [s.observation for s in sessions] == [f"total {10 * i}; reset {1 + i // 2} in this worker" for i in range(4)]
    assert [s.observation for s in steps] == ["1", "11", "21", "31"]  # each start's total + 1: its own instance
    assert [s.reward for s in scores] == [1.5, 11.5, 21.5, 31.5]


def test_model_mistakes_are_statuses_and_the_session_goes_on(tmp_path):
    calls = [ToolCall.of("multiply", n=2), ToolCall("add", '{"n": '), ToolCall("add", "[1]"), ToolCall.of("add", n="2"),
             ToolCall.of("add"), ToolCall.of("add", n=1, m=2), ToolCall.of("add", n=1.5), ToolCall.of("add", n=5)]

    async def run():
        server, core = await _serve(tmp_path)
        before = await _scrape(server)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            session = await env.start({"start": 10})
            results = [await session.step(c) for c in calls]
        scraped = await _scrape(server, before)
        await _stop(server, core)
        return results, scraped

    results, scraped = asyncio.run(run())
    got = [(r.status, r.observation, r.done) for r in results]
    assert got[0] == (UNKNOWN_TOOL, "{'error': 'Tool multiply not found.'}", False)  # TRL's words
    assert got[1][0] == BAD_ARGUMENTS and got[1][1].startswith("{'error': 'arguments are not JSON")
    assert got[2] == (BAD_ARGUMENTS, "{'error': 'arguments of add must be a JSON object, got array'}", False)
    assert got[3] == (BAD_ARGUMENTS, "{'error': 'n: expected integer, got string'}", False)
    assert got[4] == (BAD_ARGUMENTS, '{\'error\': "add needs argument \'n\'"}', False)
    assert got[5] == (BAD_ARGUMENTS, '{\'error\': "add has no argument \'m\' (it takes n)"}', False)
    assert got[6] == (BAD_ARGUMENTS, "{'error': 'n: expected integer, got number'}", False)
    assert got[7] == (OK, "15", False)  # 10 + 5: none of the refused calls ran
    errors = {dict(k[1])["status"]: v for k, v in scraped.items() if k[0] == "rlfleet_env_tool_errors_total" and v}
    assert errors == {"unknown_tool": 1, "bad_arguments": 6}
    assert scraped[("rlfleet_env_tool_calls_total",
                    (("environment", "Counter"), ("status", "unknown_tool"), ("tool", "(unknown)")))] == 1


def test_hanging_tool_times_out_and_the_service_keeps_serving(tmp_path):
    async def run():
        server, core = await _serve(tmp_path, workers=1, call_timeout_seconds=1.0)
        before = await _scrape(server)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            hung, neighbour = await env.start({}), await env.start({"start": 5})  # one worker: the same one
            started = time.monotonic()
            timed_out = await hung.step(ToolCall.of("hang"))
            seconds = time.monotonic() - started
            again = await hung.step(ToolCall.of("add", n=1))
            hung_score = await hung.finish()
            lost = await neighbour.step(ToolCall.of("add", n=1))
            lost_score = await neighbour.finish()
            fresh = await env.start({"start": 2})
            works = await fresh.step(ToolCall.of("add", n=3))
        scraped = await _scrape(server, before)
        await _stop(server, core)
        return timed_out, seconds, again, hung_score, lost, lost_score, fresh, works, scraped

    timed_out, seconds, again, hung_score, lost, lost_score, fresh, works, scraped = asyncio.run(run())
    assert (timed_out.status, timed_out.done) == (TIMEOUT, True) and "call_timeout_seconds" in timed_out.error
    assert 1.0 <= seconds < 8.0
    assert (again.status, again.done) == (TIMEOUT, True)  # a failed session answers its failure
    assert hung_score.status is RewardStatus.TIMEOUT and hung_score.reward == 0.0
    assert (lost.status, lost.done) == (ERROR, True) and lost.error.startswith("session lost: another session's call")
    assert lost_score.status is RewardStatus.ERROR
    assert fresh.observation == "total 2; reset 1 in this worker"  # a fresh worker answered
    assert (works.status, works.observation) == (OK, "5")
    assert scraped[("rlfleet_env_worker_restarts_total", (("reason", "timeout"),))] == 1
    assert scraped[("rlfleet_env_sessions_lost_total", ())] == 1


def test_crashing_environment_costs_its_session_only(tmp_path):
    async def run():
        server, core = await _serve(tmp_path, workers=2)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            doomed, other = await env.start({}), await env.start({})  # least busy: one on each worker
            crashed = await doomed.step(ToolCall.of("crash"))
            survived = await other.step(ToolCall.of("add", n=4))
            fresh = await env.start({"start": 1})
            works = await fresh.step(ToolCall.of("add", n=1))
        await _stop(server, core)
        return crashed, survived, works

    crashed, survived, works = asyncio.run(run())
    assert (crashed.status, crashed.done) == (ERROR, True)
    assert "environment worker crashed: worker exited with code 3" in crashed.error
    assert (survived.status, survived.observation) == (OK, "4")
    assert (works.status, works.observation) == (OK, "2")


def test_retries_are_idempotent(tmp_path):
    def start(session_id: str, start: int) -> environment_pb2.StartSessionRequest:
        return environment_pb2.StartSessionRequest(session_id=session_id, columns={"start": str(start)})

    def add(session_id: str, index: int, n: int) -> environment_pb2.StepRequest:
        return environment_pb2.StepRequest(session_id=session_id, step_index=index,
                                           tool_call=environment_pb2.ToolCall(name="add", arguments_json=f'{{"n": {n}}}'))

    async def run():
        server, core = await _serve(tmp_path, workers=1)
        channel = make_channel(f"127.0.0.1:{server.port}", ClientConfig(max_attempts=1, timeout_seconds=10))
        stub = environment_pb2_grpc.EnvironmentServiceStub(channel)
        first, retried = await stub.StartSession(start("s1", 1)), await stub.StartSession(start("s1", 1))
        errors = []
        for call in (stub.StartSession(start("s1", 2)), stub.Step(add("s1", 3, 1))):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call
            errors.append(err.value)
        steps = [await stub.Step(add("s1", 0, 5)), await stub.Step(add("s1", 0, 5)), await stub.Step(add("s1", 1, 1))]
        finishes = [await stub.Finish(environment_pb2.FinishRequest(session_id="s1")) for _ in range(2)]
        other = await stub.StartSession(start("s2", 0))
        await channel.close()
        await _stop(server, core)
        return first, retried, errors, steps, finishes, other

    first, retried, errors, steps, finishes, other = asyncio.run(run())
    assert first == retried and first.observation == "total 1; reset 1 in this worker"
    assert other.observation == "total 0; reset 2 in this worker"  # reset ran once for s1's two starts
    assert [e.code() for e in errors] == [grpc.StatusCode.FAILED_PRECONDITION] * 2
    assert "another row" in errors[0].details() and "expects step 0 next, got 3" in errors[1].details()
    assert [s.observation for s in steps] == ["6", "6", "7"]  # 1 + 5 once, then + 1
    assert finishes[0] == finishes[1] and finishes[0].reward == 7.5


def test_reward_failures_and_oversized_observations_are_typed(tmp_path):
    async def run():
        server, core = await _serve(tmp_path, max_observation_chars=100)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            raising, nan = await env.start({"start": -1}), await env.start({"start": 13})
            loud = await raising.step(ToolCall.of("shout", size=101))
            quiet = await raising.step(ToolCall.of("shout", size=100))
            scores = [await raising.finish(), await nan.finish()]
        await _stop(server, core)
        return loud, quiet, scores

    loud, quiet, scores = asyncio.run(run())
    assert (loud.status, loud.done) == (INVALID, False) and "101 characters" in loud.observation
    assert (quiet.status, quiet.observation) == (OK, "x" * 100)
    assert scores[0].status is RewardStatus.ERROR and "ValueError: negative total" in scores[0].error
    line = ENV.splitlines().index('            raise ValueError("negative total")') + 1  # ENV's line 1 is empty
    assert scores[0].error.endswith(f"counter.py:{line})")
    assert scores[1].status is RewardStatus.INVALID_OUTPUT and "not a finite number" in scores[1].error


def test_bad_requests_name_the_field(tmp_path):
    cases = [
        ("StartSession", environment_pb2.StartSessionRequest(session_id="a b"), "session_id: "),
        ("StartSession", environment_pb2.StartSessionRequest(session_id="s", columns={"x": "{"}), 'columns["x"]: '),
        ("StartSession", environment_pb2.StartSessionRequest(session_id="s", environment="Nope"), "environment: "),
        ("Step", environment_pb2.StepRequest(session_id="s"), "action: "),
    ]

    async def run():
        server, core = await _serve(tmp_path, workers=1)
        channel = make_channel(f"127.0.0.1:{server.port}", ClientConfig(max_attempts=1, timeout_seconds=10))
        stub = environment_pb2_grpc.EnvironmentServiceStub(channel)
        errors = []
        for method, request, _ in cases + [("Finish", environment_pb2.FinishRequest(session_id="never"), "")]:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await getattr(stub, method)(request)
            errors.append(err.value)
        await channel.close()
        await _stop(server, core)
        return errors

    errors = asyncio.run(run())
    for (_, _, field), err in zip(cases, errors, strict=False):
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith(field), err.details()
    assert errors[-1].code() == grpc.StatusCode.NOT_FOUND and "no session 'never'" in errors[-1].details()


def test_max_sessions_and_idle_expiry(tmp_path):
    async def run():
        server, core = await _serve(tmp_path, workers=1, max_sessions=2, session_idle_seconds=0.5)
        before = await _scrape(server)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", ClientConfig(max_attempts=1), timeout=10) as env:
            old = [await env.start({}), await env.start({})]
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await env.start({})
            await asyncio.sleep(1.2)  # past session_idle_seconds and the sweep interval
            new = await env.start({})
            expired = await old[0].step(ToolCall.of("add", n=1))
        scraped = await _scrape(server, before)
        await _stop(server, core)
        return full.value, new, expired, scraped

    full, new, expired, scraped = asyncio.run(run())
    assert full.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and full.details().startswith("max_sessions: ")
    assert new.ok
    assert (expired.status, expired.done) == (ERROR, True) and "expired" in expired.error
    assert scraped[("rlfleet_env_sessions_expired_total", ())] == 2


TRL_ENVS = '''
class Echo:
    def reset(self, text):  # no **row: the selecting `environment` column must not reach it (TRL drops it)
        self.text = text

    def echo(self, times: int) -> str:
        """Repeats the row's text.

        Args:
            times: How often.
        """
        return self.text * times


class Guess:
    def reset(self, secret, **row):
        self.secret, self.right = secret, False
        return "Guess a number."

    async def guess(self, number: int) -> str:
        """Guesses the secret (a coroutine tool, awaited as TRL does).

        Args:
            number: The guess.
        """
        self.right = number == self.secret
        return "right" if self.right else "wrong"

    def get_reward(self) -> float:
        return 1.0 if self.right else 0.0


environment_factory = {"echo": Echo, "guess": Guess}
'''


def test_trl_factory_dict_chosen_by_the_environment_column(tmp_path):
    script = tmp_path / "trl_envs.py"
    script.write_text(TRL_ENVS)

    async def run():
        core = EnvironmentCore(_config(script, workers=1))
        core.start_workers()
        server = await start_server(core.config.server, core)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            catalog = await env.list_environments()
            echo = await env.start({"environment": "echo", "text": "ab"})
            echoed = await echo.step(ToolCall.of("echo", times=2))
            echo_score = await echo.finish()
            guess = await env.start({"environment": "guess", "secret": 7})
            steps = [await guess.step(ToolCall.of("guess", number=3)), await guess.step(ToolCall.of("guess", number=7))]
            guess_score = await guess.finish()
        await _stop(server, core)
        return catalog, echo, echoed, echo_score, guess, steps, guess_score

    catalog, echo, echoed, echo_score, guess, steps, guess_score = asyncio.run(run())
    assert [(e.name, [t.name for t in e.tools], e.has_reward) for e in catalog.environments] == [
        ("echo", ["echo"], False), ("guess", ["guess"], True)]
    assert (echo.ok, echo.observation, echo.start.environment) == (True, None, "echo")  # reset returned None
    assert echoed.observation == "abab"
    assert echo_score is None  # no get_reward: no reward from the environment, not a 0
    assert (guess.observation, [t.name for t in guess.tools]) == ("Guess a number.", ["guess"])
    assert [s.observation for s in steps] == ["wrong", "right"]
    assert guess_score == ItemScore(1.0, {"guess": 1.0})


def test_check_dry_run_and_broken_scripts(tmp_path, capsys):
    script = tmp_path / "counter.py"
    script.write_text(ENV)
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"start": 2, "actions": [{"name": "add", "arguments": {"n": 3}}, "bye"]}\n')
    assert run_command("env-server", ["--check", str(script), "--sample", str(rows)]) == 0
    out = capsys.readouterr().out
    assert "environment Counter (get_reward): Keeps a running total" in out and "  tool add(n): Adds" in out
    assert "step 0: add({\"n\": 3}) -> OK '5'" in out and "reward: OK 5.5 total=5 bonus=0.5" in out
    broken = tmp_path / "broken.py"
    broken.write_text("class Broken:\n    def reset(self):\n        pass\n\n    def tool(self, x):\n        return x\n")
    assert run_command("env-server", ["--script", str(broken)]) == 2
    assert f"{broken}:5: environment Broken: tool tool has no docstring" in capsys.readouterr().err
    assert run_command("env-server", ["--script", str(tmp_path / "missing.py")]) == 2
    assert "--script" in capsys.readouterr().err


def test_worker_fence_holds_environment_code(tmp_path, monkeypatch):
    """The environment runs behind the reward workers' fence: no network namespace escape, no service token."""
    script = tmp_path / "peek.py"
    script.write_text('''
import os, socket

class Peek:
    def reset(self, **row):
        return None

    def look(self) -> str:
        """What the environment can see."""
        secret = os.environ.get("RLFLEET_SERVER__AUTH_TOKEN", "none")
        try:
            socket.create_connection(("1.1.1.1", 53), timeout=1).close()
            net = "open"
        except OSError:
            net = "blocked"
        return f"{secret} {net}"
''')

    monkeypatch.setenv("RLFLEET_SERVER__AUTH_TOKEN", "s3cret")  # the service's own settings never reach a worker

    async def run():
        core = EnvironmentCore(_config(script, workers=1, limits=LimitsConfig()))
        core.start_workers()
        fence = core.pool.fence
        server = await start_server(core.config.server, core)
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=10) as env:
            session = await env.start({})
            seen = await session.step(ToolCall.of("look"))
        await _stop(server, core)
        return fence, seen

    fence, seen = asyncio.run(run())
    secret, net = seen.observation.split()
    assert secret == "none"
    if fence.network_blocked:
        assert net == "blocked"
