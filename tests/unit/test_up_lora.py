"""`rlfleet up`'s LoRA tables: alpha fixed across ranks, and the generator's max_lora_rank one that vLLM compiles."""

from __future__ import annotations

import pytest

from generator.config import GeneratorConfig
from launcher.launch import Ports, cluster_tables, vllm_rank
from launcher.up import UpConfig
from learner.config import LearnerConfig
from rlfleet.config import load_config, to_toml


@pytest.mark.parametrize("rank, served", [(1, 1), (2, 8), (8, 8), (9, 16), (16, 16), (600, 600)])
def test_vllm_rank_is_the_smallest_compiled_rank_that_holds_the_adapter(rank, served):
    # vLLM compiles 1, 8, 16, 32, ...: rank 2 is served as 8; past 512 the generator's own check names it
    assert vllm_rank(rank) == served


def test_tables_carry_rank_alpha_and_a_generator_rank_vllm_accepts(tmp_path):
    tables = cluster_tables(UpConfig(lora_rank=4), "models/x", tmp_path, Ports.from_base(50100, 1))
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(tables))
    learner = load_config(LearnerConfig, ["--config", str(path)], environ={})
    generator = load_config(GeneratorConfig, ["--config", str(path)], environ={})
    assert (learner.lora.r, learner.lora.alpha) == (4, 32.0)   # alpha stays 32 whatever the rank
    assert generator.max_lora_rank == 8                        # rank 4 is padded to vLLM's 8
    assert UpConfig().lora_rank == 1
