"""Reference config: the model is required, the [reference] table is read, bad values name their flag."""

from __future__ import annotations

import pytest

from reference.config import ReferenceConfig
from rlfleet.config import load_config


def test_model_is_required():
    with pytest.raises(SystemExit) as err:
        load_config(ReferenceConfig, [], environ={})
    assert "--model" in str(err.value)


def test_cluster_file_table_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[reference]\nmodel = "/models/base"\ndtype = "bfloat16"\n[reference.server]\nport = 50053\n'
                    '[learner]\nmodel = "other"\n')
    config = load_config(ReferenceConfig, ["--config", str(path), "--max-batch-tokens", "4096"], environ={})
    assert (config.model, config.dtype, config.server.port, config.max_batch_tokens) == (
        "/models/base", "bfloat16", 50053, 4096)


def test_bad_values_name_the_flag():
    with pytest.raises(SystemExit) as err:
        load_config(ReferenceConfig, ["--model", "m", "--max-batch-tokens", "8"], environ={})
    assert "--max-batch-tokens" in str(err.value)
    with pytest.raises(SystemExit) as err:
        load_config(ReferenceConfig, ["--model", "m", "--dtype", "int8"], environ={})
    assert "--dtype" in str(err.value)
