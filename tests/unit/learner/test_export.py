"""`rlfleet export --merge`: the merged model computes what base + adapter computes."""

from __future__ import annotations

import torch

from learner.export import main


def test_merged_model_matches_base_plus_adapter(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)  # PEFT starts B at zero; a real adapter moved it
    model.peft_config["default"].base_model_name_or_path = tiny_model_dir
    (tmp_path / "run").mkdir()
    model.save_pretrained(tmp_path / "run" / "adapter")
    assert main([str(tmp_path / "run"), "--merge", "--out", str(tmp_path / "merged")]) == 0

    ids = torch.tensor([[1, 70, 80, 90, 100]])
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "run" / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        want, got, plain = adapted(ids).logits, merged(ids).logits, base(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert (got - plain).abs().max() > 1e-3  # the adapter did change the model
    assert not any("lora" in n for n, _ in merged.named_parameters())
