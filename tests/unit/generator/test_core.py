"""The generator core on the transformers FAKE engine: groups, version pinning, retirement, abort, overload.

The fake stands in for vLLM (tested for real in tests/service/test_generator.py) so that the core's
own bookkeeping can be checked in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time

import pytest

from generator.config import GeneratorConfig
from generator.core import Generator
from generator.rollouts import GenerateBatch
from rlfleet.adapters import AdapterPayload, adapter_from_dir, base_model_id
from rlfleet.errors import InvalidRequest, NotFound, Overloaded, Rejected
from rlfleet.generation import PromptInput, Sampling
from tests.conftest import random_lora_adapter


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory) -> AdapterPayload:
    out = random_lora_adapter(tiny_model_dir, tmp_path_factory.mktemp("adapter"), seed=1, rank=8, alpha=32)
    return adapter_from_dir(out, 1, base_model_id(tiny_model_dir))


def _config(model: str, tmp_path, **overrides) -> GeneratorConfig:
    return GeneratorConfig(model=model, engine="transformers-fake", max_model_len=128, max_lora_rank=8,
                           keep_versions=2, max_concurrent_requests=4, adapter_dir=tmp_path / "served", **overrides)


def _batch(count: int = 1, version: int | None = None, **sampling) -> GenerateBatch:
    return GenerateBatch([PromptInput(f"p{i}", token_ids=(65 + i, 66)) for i in range(count)],
                         Sampling(**{"max_tokens": 4, "temperature": 0.0, **sampling}), version)


async def _collect(core: Generator, batch: GenerateBatch):
    return [g async for g in core.generate(batch)]


def test_groups_of_n_with_a_logprob_per_token(tiny_model_dir, tmp_path):
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        return await _collect(core, _batch(2, n=3, max_tokens=5, temperature=1.0, seed=4))

    groups = asyncio.run(run())
    assert sorted(g.prompt_index for g in groups) == [0, 1]
    for g in groups:
        assert len(g.completions) == 3 and g.policy_version == 0
        for c in g.completions:
            # 5 tokens at most (fewer only if EOS came first), one raw log-prob (<= 0) per token
            assert 1 <= len(c.token_ids) <= 5 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)


def test_in_flight_call_keeps_its_version_and_it_is_unloaded_after(tiny_model_dir, tmp_path, adapter):
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        await core.load_adapter(adapter, time.perf_counter())
        slow = asyncio.ensure_future(_collect(core, _batch(max_tokens=40, min_tokens=40)))
        while not core.engine.stats().running:
            await asyncio.sleep(0.01)
        loaded_during = []
        for version in (2, 3):   # K = 2: v1 leaves the servable set while the slow call still uses it
            result = await core.load_adapter(dataclasses.replace(adapter, policy_version=version), time.perf_counter())
            loaded_during.append(result.loaded_versions)
        with pytest.raises(NotFound):
            await _collect(core, _batch(version=1))
        groups = await slow
        await asyncio.sleep(0.05)   # the retirement runs as a background task
        return (loaded_during, groups, core.versions.loaded, sorted(p.name for p in core.adapter_dir.iterdir()),
                list(core.staging_dir.iterdir()))

    loaded_during, groups, loaded_after, dirs, spares = asyncio.run(run())
    assert loaded_during == [[1, 2], [1, 2, 3]]   # v1 stays while in use
    assert groups[0].policy_version == 1 and len(groups[0].completions[0].token_ids) == 40
    assert loaded_after == [2, 3]
    assert dirs == [".incoming", "a000002-v2", "a000003-v3"]   # v1's folder (engine id 1) is gone too...
    # ...and its weights file waits in the staging folder for the next push to write over
    assert [p.name.startswith(".spare-") for p in spares] == [True] and spares[0].read_bytes() == adapter.weights


def test_closing_the_call_aborts_and_frees_capacity(tiny_model_dir, tmp_path):
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        stream = core.generate(_batch(3, max_tokens=100, min_tokens=100))
        first = asyncio.ensure_future(stream.__anext__())
        while not core.engine.stats().running:
            await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):   # 3 in flight + 2 > max_concurrent_requests = 4
            await _collect(core, _batch(2))
        first.cancel()   # what gRPC does to a cancelled call's handler
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await stream.aclose()
        await asyncio.sleep(0.1)
        return core.engine.stats().running, await _collect(core, _batch(4))

    running, after = asyncio.run(run())
    assert running == 0
    assert len(after) == 4


def test_rejected_adapter_leaves_the_serving_version(tiny_model_dir, tmp_path, adapter):
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        await core.load_adapter(adapter, time.perf_counter())
        before = await _collect(core, _batch())
        with pytest.raises(Rejected, match="base_model_id"):
            await core.load_adapter(dataclasses.replace(adapter, policy_version=2, base_model_id="x"), time.perf_counter())
        with pytest.raises(Rejected, match="older than the serving version 1"):
            await core.load_adapter(dataclasses.replace(adapter, policy_version=0), time.perf_counter())
        base = await _collect(core, _batch(version=0))
        return before, await _collect(core, _batch()), base, core.info()

    before, after, base, info = asyncio.run(run())
    assert info.policy_version == 1 and info.loaded_versions == [1] and info.engine == "transformers-fake"
    assert after[0].policy_version == 1 and after[0].completions[0].token_ids == before[0].completions[0].token_ids
    assert base[0].completions[0].token_ids != before[0].completions[0].token_ids   # the adapter matters


@pytest.mark.parametrize(("sampling", "field"), [
    ({"temperature": float("inf")}, "sampling.temperature"),
    ({"temperature": float("nan")}, "sampling.temperature"),
    ({"n": 2, "temperature": 0.0}, "sampling.n"),   # greedy: both samples would be the same
])
def test_sampling_holes_are_invalid_requests_naming_the_field(tiny_model_dir, tmp_path, sampling, field):
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        with pytest.raises(InvalidRequest) as err:
            await _collect(core, _batch(**sampling))
        return err.value.field, await _collect(core, _batch(n=2, temperature=1.0))

    name, after = asyncio.run(run())
    assert name == field
    assert len(after[0].completions) == 2   # the next good call is served


def test_a_loaded_version_is_acknowledged_again_only_if_identical(tiny_model_dir, tmp_path, adapter):
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        await core.load_adapter(adapter, time.perf_counter())
        again = await core.load_adapter(dataclasses.replace(adapter), time.perf_counter())
        other_bytes = dataclasses.replace(adapter, weights=adapter.weights[:-4] + bytes(4))
        with pytest.raises(Rejected, match="version 1 of learner run '' is already loaded with other weights"):
            await core.load_adapter(other_bytes, time.perf_counter())
        with pytest.raises(Rejected, match="already loaded with other weights"):
            await core.load_adapter(dataclasses.replace(adapter, base_model_id="other"), time.perf_counter())
        return again, core.info(), await _collect(core, _batch())

    again, info, after = asyncio.run(run())
    assert again.loaded_versions == [1] and info.loaded_versions == [1]
    assert after[0].policy_version == 1


def test_a_new_learner_run_drops_the_old_runs_versions(tiny_model_dir, tmp_path, adapter):
    # A learner resumed from a checkpoint of step 1 while generators hold run-1's v1..v3: run-2's v2
    # is other weights than run-1's v2, so it is loaded (not refused as "older"), and run-1's go.
    async def run():
        core = await Generator.create(_config(tiny_model_dir, tmp_path))
        for version in (1, 2, 3):
            await core.load_adapter(dataclasses.replace(adapter, policy_version=version, run_id="run-1"),
                                    time.perf_counter())
        result = await core.load_adapter(dataclasses.replace(adapter, policy_version=2, run_id="run-2"),
                                         time.perf_counter())
        await asyncio.sleep(0.05)   # the retirement runs as a background task
        with pytest.raises(NotFound):
            await _collect(core, _batch(version=3))
        with pytest.raises(Rejected, match="header.run_id: learner run 'run-1' was replaced by run 'run-2'"):
            await core.load_adapter(dataclasses.replace(adapter, policy_version=4, run_id="run-1"), time.perf_counter())
        return result, core.versions.run_id, sorted(p.name for p in core.adapter_dir.iterdir())

    result, run_id, dirs = asyncio.run(run())
    assert result.loaded_versions == [2] and run_id == "run-2"
    assert dirs == [".incoming", "a000004-v2"]   # run-1's three adapters unloaded, their folders gone
