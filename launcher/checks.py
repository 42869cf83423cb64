"""`rlfleet up`'s inputs checked before anything starts: model, dataset, reward script and names, ports.

Each check raises `ConfigError` naming the option and the file (and line, for a broken reward
script); `rlfleet` prints it as one message and exits 2. A run that would fail minutes later, after
the warm-start and the services' start-up, fails here in about a second instead.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from launcher.algorithms import check_reward_model_option
from launcher.environment import check_env_option, uses_reward_service
from launcher.launch import Ports
from launcher.up import BUILTIN_MODEL, UpConfig
from rlfleet.config import ConfigError, check_model_path
from tasks import REWARD_SCRIPT


def check_inputs(config: UpConfig) -> None:
    """Every check, cheapest first; raises ConfigError on the first problem."""
    if config.run_dir is not None and config.run_dir.exists() and not config.run_dir.is_dir():
        raise ConfigError(f"--run-dir: {config.run_dir} is a file, not a folder")
    if config.model.startswith("builtin:"):
        if config.model != BUILTIN_MODEL:
            raise ConfigError(f"--model: unknown built-in model {config.model!r}; the only one is {BUILTIN_MODEL!r}")
    else:
        check_model_path(config.model, "--model")
    check_env_option(config)   # before the dataset: a built-in environment names the dataset too
    check_dataset_option(config.dataset)
    check_reward_model_option(config)
    check_ports_free(used_ports(config))
    if uses_reward_service(config):
        check_reward_script(config.reward_script or REWARD_SCRIPT, config.reward,
                            "--reward-script" if config.reward_script else "--reward")


def check_dataset_option(dataset: str) -> None:
    from learner.pipeline.dataset import check_dataset

    try:
        check_dataset(dataset, prompt_column="prompt")
    except ValueError as err:
        raise ConfigError(f"--dataset: {err}") from None


def used_ports(config: UpConfig) -> list[int]:
    """Every gRPC and /metrics port the cluster will bind (see launcher.launch.Ports)."""
    ports = Ports.from_base(config.base_port, config.generators)
    grpc_ports = [*ports.generators, ports.learner]
    if uses_reward_service(config):
        grpc_ports.append(ports.reward)
    if config.env is not None:
        grpc_ports.append(ports.environment)
    if config.reference_service and config.kl_coef > 0:
        grpc_ports.append(ports.reference)
    return sorted(grpc_ports + [Ports.metrics(p) for p in grpc_ports])


def _port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        # As a gRPC server binds (SO_REUSEADDR): a socket in TIME_WAIT does not count as busy, a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports_free(ports: list[int]) -> None:
    """gRPC servers bind with SO_REUSEPORT, so a second one on a busy port would start and share it
    silently instead of failing: find the clash here."""
    busy = [p for p in ports if not _port_free(p)]
    if busy:
        raise ConfigError(f"--base-port: port(s) {', '.join(map(str, busy))} already in use on 127.0.0.1 "
                          f"(the cluster needs {ports[0]}-{ports[-1]}); stop what holds them or pick another --base-port")


def check_reward_script(script: Path, rewards: list[str], option: str) -> None:
    """Imports the script and resolves every --reward name exactly as the reward service will: in one of
    its worker processes (user code never runs in this process), with its FILE:LINE messages."""
    from pydantic import ValidationError

    from reward_server.config import RewardConfig
    from reward_server.core import RewardCore
    from rlfleet.workers.scripts import ScriptError

    if not Path(script).is_file():
        raise ConfigError(f"--reward-script: no such file: {script}")
    try:
        reward_config = RewardConfig(script=script, reward=rewards, workers=1)
    except ValidationError as err:
        raise ConfigError(f"--reward: {err.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    core, service_log = None, logging.getLogger("reward_server")
    level = service_log.level
    service_log.setLevel(logging.WARNING)  # the service's start-up lines would bury the one message up prints
    try:
        core = RewardCore(reward_config)
        core.start_workers()
    except ScriptError as err:
        raise ConfigError(f"{option}: {err}") from None
    finally:
        service_log.setLevel(level)
        if core is not None:
            core.close()
