"""Local processes of one rlfleet cluster: start each service, wait for gRPC health, stop them cleanly.

Used by `rlfleet up` and the end-to-end tests. Every service runs as `python -m rlfleet.cli NAME
--config RUN_DIR/cluster.toml` plus its own port flags, with its log in RUN_DIR/logs/NAME.log.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlfleet.health import check


@dataclass
class Service:
    """One service process of the cluster."""

    name: str                    # unique, e.g. "generator-0"
    command: str                 # rlfleet subcommand: generator, reward-server, reference, learner
    args: list[str]
    port: int
    metrics_port: int
    threads: int = 1             # OMP/MKL threads: two cores are shared by every process
    cpus: frozenset[int] | None = None  # CPU affinity (inherited by its threads and children); None: any
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class ClusterError(RuntimeError):
    """A service failed to start or died; the message carries the end of its log."""


DISTRIBUTED_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def own_job_environ() -> dict[str, str]:
    """This process's environment without torch.distributed rendezvous variables, for a child that is
    its own job: inherited from a launcher or an in-process learner, they would make a learner join a
    group that is not its own (and reuse a MASTER_PORT already bound)."""
    return {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}


class LocalCluster:
    """Starts services as child processes (each in its own process group) and stops them on exit."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.services: list[Service] = []
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    def start(self, service: Service) -> Service:
        service.log_path = self.run_dir / "logs" / f"{service.name}.log"
        # Several torch processes share the cores: idle OpenMP threads must sleep, not spin (measured
        # in bench/: 1.54 -> 1.28 s per step on 2 cores).
        env = {"OMP_WAIT_POLICY": "PASSIVE", **own_job_environ(), "OMP_NUM_THREADS": str(service.threads),
               "MKL_NUM_THREADS": str(service.threads), "TOKENIZERS_PARALLELISM": "false",
               "PYTHONUNBUFFERED": "1", **service.env}
        command = [sys.executable, "-m", "rlfleet.cli", service.command, *service.args,
                   "--server.host", "127.0.0.1", "--server.port", str(service.port),
                   "--server.metrics-port", str(service.metrics_port)]
        with open(service.log_path, "ab") as log:
            service.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                               start_new_session=True, cwd=os.getcwd())
        if service.cpus is not None:
            # Set before the child's interpreter has started a thread or a child: all of them inherit it.
            os.sched_setaffinity(service.process.pid, service.cpus)
        self.services.append(service)
        return service

    def log_tail(self, service: Service, lines: int = 30) -> str:
        if service.log_path is None or not service.log_path.exists():
            return ""
        return "\n".join(service.log_path.read_text(errors="replace").splitlines()[-lines:])

    def wait_healthy(self, services: list[Service], timeout: float) -> None:
        """Blocks until every service answers SERVING; raises ClusterError if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        pending = list(services)
        while pending:
            for service in list(pending):
                if not service.alive():
                    raise ClusterError(f"{service.name} exited with code {service.process.returncode} while "
                                       f"starting; end of {service.log_path}:\n{self.log_tail(service)}")
                if check(service.address, timeout=1.0):
                    pending.remove(service)
            if pending and time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise ClusterError(f"{names} not SERVING after {timeout:.0f}s; see {self.run_dir / 'logs'}")
            if pending:
                time.sleep(0.5)

    def stop(self, service: Service, grace: float = 20.0) -> int | None:
        """SIGTERM (the service drains and, for the learner, checkpoints), then SIGKILL after `grace` seconds."""
        if service.process is None:
            return None
        if service.alive():
            os.killpg(service.process.pid, signal.SIGTERM)
            try:
                service.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(service.process.pid, signal.SIGKILL)
                service.process.wait()
        return service.process.returncode

    def kill(self, service: Service) -> None:
        """SIGKILL the whole process group: a crash, as far as the rest of the cluster can tell."""
        if service.alive():
            os.killpg(service.process.pid, signal.SIGKILL)
            service.process.wait()

    def stop_all(self, grace: float = 20.0) -> None:
        # The learner first, so it checkpoints while the generators can still take its last push.
        for service in sorted(self.services, key=lambda s: s.command != "learner"):
            self.stop(service, grace)
