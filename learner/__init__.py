"""The learner: trains a LoRA adapter with DeepSpeed from rollout batches and pushes it to generators."""
