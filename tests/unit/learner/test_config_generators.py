"""One setting per concept in LearnerConfig: one generator list, one client config, reference rules beside the fields.

Old keys (push.generators, source.generators, source.client) fail with a message naming the key that replaced them.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from learner.config import LearnerConfig
from learner.loop import make_source
from rlfleet.config import load_config

GENERATORS = ["127.0.0.1:50100", "dns:///generator:50051"]


def _load(tmp_path, toml: str) -> LearnerConfig:
    path = tmp_path / "cluster.toml"
    path.write_text(toml)
    return load_config(LearnerConfig, ["--config", str(path)], environ={})


@pytest.mark.parametrize(("table", "old", "new"), [
    ('[learner.push]\ngenerators = ["127.0.0.1:50100"]\n', "push.generators", "generators (learner.generators"),
    ('[learner.source]\ntype = "pipeline"\ngenerators = ["127.0.0.1:50100"]\n', "source.generators",
     "generators (learner.generators"),
    ('[learner.source]\ntype = "pipeline"\n\n[learner.source.client]\ntimeout_seconds = 5\n', "source.client",
     "client (learner.client"),
])
def test_old_keys_name_the_key_that_replaced_them(tmp_path, table, old, new):
    with pytest.raises(SystemExit) as err:
        _load(tmp_path, f'[learner]\nmodel = "m"\n\n{table}')
    assert f"{old} was replaced by {new}" in str(err.value)


def test_the_cluster_files_key_is_read_by_rollouts_and_pushes_alike(tmp_path):
    config = _load(tmp_path, f'[learner]\nmodel = "m"\ngenerators = {GENERATORS!r}\n'.replace("'", '"')
                   + '\n[learner.source]\ntype = "pipeline"\ndataset = "builtin:reverse"\n\n[learner.client]\ntimeout_seconds = 7\n')
    assert config.generators == GENERATORS

    async def build():
        source = make_source(config.model_copy(update={"run_dir": tmp_path}))
        try:
            return source.pool.targets, source.pool.client.timeout_seconds, source.scorer.services[0][0].config
        finally:
            await source.close()

    targets, timeout, reward_client = asyncio.run(build())
    assert targets == GENERATORS and timeout == 7          # the pipeline: the one list, the one client config
    assert reward_client.timeout_seconds == 7              # reward calls: the same client config


def test_generator_targets_are_checked_beside_the_field():
    with pytest.raises(ValidationError, match="'generator' is not HOST:PORT"):
        LearnerConfig(model="m", generators=["generator"])
    with pytest.raises(ValidationError, match="generators: the pipeline source needs at least one"):
        LearnerConfig(model="m", generators=[])
    assert LearnerConfig(model="m", generators=[], source={"type": "push"}).generators == []  # pushes to none


def test_reference_needed_is_decided_once_and_has_its_own_timeout(tmp_path):
    kl = {"kl": {"coef": 0.01}}
    with pytest.raises(ValidationError, match="source.reference: learner.reference = 'service'"):
        LearnerConfig(model="m", reference="service", algo=kl)
    assert not LearnerConfig(model="m", reference="in_process", algo=kl).needs_reference_service
    assert not LearnerConfig(model="m", reference="service").needs_reference_service  # KL off: nothing to fetch
    pushed = LearnerConfig(model="m", reference="service", algo=kl, source={"type": "push"})
    assert pushed.needs_reference_service and make_source(pushed).require_ref_logprobs  # rollouts must carry them

    config = LearnerConfig(model="m", run_dir=tmp_path, reference="service", algo=kl, source={
        "type": "pipeline", "dataset": "builtin:reverse", "reference": "127.0.0.1:50130", "reward_timeout_seconds": 60,
        "reference_timeout_seconds": 9})

    async def build():
        source = make_source(config)
        try:
            return source.reference.timeout
        finally:
            await source.close()

    assert asyncio.run(build()) == 9  # not the reward deadline
