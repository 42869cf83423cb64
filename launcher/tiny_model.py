"""Builds the tiny local causal LM used by tests and the default demo: `rlfleet tiny-model DIR`.

Nothing can be downloaded from a hub on the machines this project is built on, so tests and the
demo need a model made on the spot. It is an ordinary Hugging Face folder that transformers, PEFT
and vLLM all load:

- Llama architecture, head_dim 32 (vLLM's CPU attention rejects head_dim < 32), random init from a
  fixed seed, a few million parameters;
- a byte-level BPE tokenizer built with `tokenizers` (no merges: one token per byte, plus special
  tokens), with EOS/PAD and a minimal chat template. A Llama model type is used because with the
  qwen2 type transformers 5 swaps in its own tokenizer class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>")
# Jinja chat template: "<|user|>text<|assistant|>" with no spaces, so a prompt costs few tokens.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ '<|eos|>' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Size of the tiny model; the defaults give ~3.5 M parameters and run fast on 2 CPU cores."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 8          # head_dim = 256 / 8 = 32, the smallest vLLM's CPU backend accepts
    num_kv_heads: int = 4
    intermediate_size: int = 688
    max_position_embeddings: int = 1024
    seed: int = 0


def build_tokenizer():
    """A byte-level tokenizer: 256 byte tokens followed by the special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_alphabet))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        clean_up_tokenization_spaces=False, model_max_length=1024)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Writes the tokenizer and a randomly initialised Llama model to `out_dir`; returns the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        intermediate_size=spec.intermediate_size, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False, torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "rlfleet_tiny_model.json").write_text(json.dumps(spec.__dict__, indent=1) + "\n")
    return out


def ensure_tiny_model(out_dir: str | Path) -> Path:
    """Builds the tiny model in `out_dir` unless a complete one is already there."""
    out = Path(out_dir)
    if (out / "rlfleet_tiny_model.json").exists() and (out / "model.safetensors").exists():
        return out
    return build_tiny_model(out)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="rlfleet tiny-model", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the Hugging Face model into")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    parser.add_argument("--hidden-size", type=int, default=TinyModelSpec.hidden_size,
                        help="model width (a multiple of 32 times --heads)")
    parser.add_argument("--layers", type=int, default=TinyModelSpec.num_layers, help="decoder layers")
    args = parser.parse_args(argv)
    if args.hidden_size % TinyModelSpec.num_heads or args.hidden_size // TinyModelSpec.num_heads < 32:
        parser.error(f"--hidden-size must be a multiple of {TinyModelSpec.num_heads} with head_dim >= 32 "
                     f"(>= {32 * TinyModelSpec.num_heads})")
    spec = TinyModelSpec(hidden_size=args.hidden_size, num_layers=args.layers, seed=args.seed,
                         intermediate_size=args.hidden_size * 8 // 3 // 8 * 8)
    path = build_tiny_model(args.out_dir, spec)
    print(f"wrote tiny model to {path}")
    return 0
