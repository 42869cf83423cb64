"""`rlfleet export --merge RUN_DIR_or_ADAPTER --out DIR`: writes the base model with the LoRA adapter merged in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def find_adapter(path: Path) -> Path:
    """The adapter folder of `path`: itself, RUN_DIR/adapter, or the newest checkpoint's adapter."""
    if (path / "adapter_config.json").exists():
        return path
    if (path / "adapter" / "adapter_config.json").exists():
        return path / "adapter"
    pointer = path / "checkpoints" / "LATEST"
    if pointer.exists():
        candidate = path / "checkpoints" / pointer.read_text().strip() / "adapter"
        if (candidate / "adapter_config.json").exists():
            return candidate
    raise SystemExit(f"error: no PEFT adapter under {path} (looked for adapter_config.json, adapter/, checkpoints/)")


def merge(adapter_dir: Path, out: Path, base: str | None = None) -> Path:
    """Loads base + adapter with PEFT, merges the LoRA update into the weights and saves a plain HF model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = base or json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlfleet export", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a learner RUN_DIR or a PEFT adapter folder")
    parser.add_argument("--out", type=Path, required=True, help="folder to write the merged Hugging Face model")
    parser.add_argument("--merge", action="store_true", required=True,
                        help="merge the adapter into the base weights (the only export format so far)")
    parser.add_argument("--base", help="base model path or name; default: the adapter's base_model_name_or_path")
    args = parser.parse_args(argv)
    out = merge(find_adapter(args.source), args.out, args.base)
    print(f"wrote merged model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
