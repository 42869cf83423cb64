"""The generator service: rollouts from vLLM with hot-swapped, versioned LoRA adapters (`rlfleet generator`)."""
