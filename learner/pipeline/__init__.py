"""In-learner rollout pipeline: keeps generators busy, scores groups, fetches reference log-probs, emits batches."""
