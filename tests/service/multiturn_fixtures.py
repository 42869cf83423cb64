"""A scripted stand-in for a generator (tests choose each turn) and a real calculator environment service on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from env_server.config import EnvConfig
from env_server.core import EnvironmentCore
from env_server.server import start_server
from rlfleet.clients import EnvironmentClient
from rlfleet.config import ServerConfig
from rlfleet.generation import PromptInput, Sampling
from rlfleet.outcomes import FinishReason
from rlfleet.rollouts import Group, Sample
from tasks import ENVIRONMENT_SCRIPTS


@dataclass
class ScriptedGenerator:
    """Answers each context with `policy(decoded context)`, EOS appended, as GeneratorClient.generate would.

    Not the component under test (the multi-turn driver is): a real model's turns cannot be chosen. Log-probs
    are -(1 + position) / 100 within each turn, so a test can tell which tokens they were given to.
    """

    tokenizer: object
    policy: Callable[[str], str]
    version: int = 3
    calls: list[tuple[int, int | None, list[tuple[int, ...]]]] = field(default_factory=list)
    """(n, policy_version asked, prompt ids) of every Generate call."""

    async def generate(self, prompts: Sequence[PromptInput], sampling: Sampling, policy_version: int | None = None,
                       timeout: float | None = None) -> AsyncIterator[Group]:
        self.calls.append((sampling.n, policy_version, [p.token_ids for p in prompts]))
        for prompt in prompts:
            text = self.policy(self.tokenizer.decode(list(prompt.token_ids)))
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]
            finish = FinishReason.STOP
            if len(ids) > sampling.max_tokens:
                ids, finish = ids[:sampling.max_tokens], FinishReason.LENGTH
            logprobs = [-(1 + i) / 100 for i in range(len(ids))]
            samples = [Sample(list(ids), list(logprobs), finish, text) for _ in range(sampling.n)]
            yield Group(prompt.prompt_id, list(prompt.token_ids), samples,
                        self.version if policy_version is None else policy_version)


@contextlib.asynccontextmanager
async def calculator_service(**overrides) -> AsyncIterator[EnvironmentClient]:
    """The built-in calculator environment served over loopback gRPC, and a client of it."""
    config = EnvConfig(script=Path(ENVIRONMENT_SCRIPTS["calculator"]), workers=1,
                       server=ServerConfig(host="127.0.0.1", port=0, metrics_port=0), **overrides)
    core = EnvironmentCore(config)
    core.start_workers()
    server = await start_server(config.server, core)
    try:
        async with EnvironmentClient(f"127.0.0.1:{server.port}", timeout=30) as client:
            yield client
    finally:
        await server.stop(0)
        core.close()
