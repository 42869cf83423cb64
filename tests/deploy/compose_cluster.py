"""A compose project driven from a test: the docker compose CLI, container health and logs, the learner's status."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tests.deploy.cluster import COMPOSE

T = TypeVar("T")
COMPOSE_FILE = COMPOSE / "docker-compose.cpu.yml"


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 3.0) -> T:
    """Polls `probe` until it returns something truthy; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ComposeCluster:
    """One compose project of the CPU file, with the host ports it publishes on 127.0.0.1."""

    project: str
    env: dict[str, str]
    learner_port: int
    prometheus_port: int

    def compose(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        command = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command[3:])} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        return result

    def containers(self, service: str | None = None) -> list[dict]:
        """`docker compose ps -a` rows (Name, Service, State, Health, ExitCode), oldest replica first."""
        out = self.compose("ps", "-a", "--format", "json", *([service] if service else [])).stdout
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        return sorted(rows, key=lambda r: (r["Service"], r["Name"]))

    def ip(self, container: str) -> str:
        return docker("inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", container
                      ).stdout.strip()

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-log-prefix", "--no-color", service).stdout

    def read(self, path: str) -> str:
        """A file of the learner's container (its run directory is the `runs` volume), running or exited."""
        command = ["docker", "compose", "-p", self.project, "-f", str(COMPOSE_FILE), "cp", f"learner:{path}", "-"]
        tar = subprocess.run(command, capture_output=True, timeout=60, env=self.env, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as archive:  # `cp SRC -` writes a tar stream
            (member,) = archive.getmembers()
            return archive.extractfile(member).read().decode()

    def metrics(self) -> list[dict]:
        """RUN_DIR/metrics.jsonl: one record per trained step ([] before the first)."""
        text = self.compose("exec", "-T", "learner", "cat", "/runs/learner/metrics.jsonl", check=False).stdout
        return [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]

    def prometheus(self, path: str, **query: str) -> dict:
        url = f"http://127.0.0.1:{self.prometheus_port}/api/v1/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.loads(reply.read())["data"]

    def query(self, expr: str) -> dict[str, float]:
        """An instant PromQL query: {instance: value}."""
        return {r["metric"].get("instance", ""): float(r["value"][1])
                for r in self.prometheus("query", query=expr)["result"]}

    def leftovers(self) -> dict[str, list[str]]:
        """Containers, volumes and networks still labelled with this project."""
        label = f"label=com.docker.compose.project={self.project}"
        return {kind: docker(*command, "--filter", label, "-q").stdout.split()
                for kind, command in (("containers", ("ps", "-a")), ("volumes", ("volume", "ls")),
                                      ("networks", ("network", "ls")))}
