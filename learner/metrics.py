"""Prometheus metrics of the learner: training quality, throughput, step-time split, pushes, queue.

Label values come from small fixed sets: loss part names, clip sides, step phases, push outcomes,
reward component names (from the reward scripts) and generator addresses (the cluster's size).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from rlfleet.metrics import LATENCY_BUCKETS

STEPS = Counter("rlfleet_learner_steps_total", "Training steps done (one rollout batch each).")
UPDATES = Counter("rlfleet_learner_optimizer_updates_total", "Optimiser updates applied.")
TRAINED_TOKENS = Counter("rlfleet_learner_trained_tokens_total", "Completion tokens trained on (mask = 1).")
POLICY_VERSION = Gauge("rlfleet_learner_policy_version", "Newest adapter version produced by the learner.")
LOSS = Gauge("rlfleet_learner_loss", "Last step's loss and its parts.", ["part"])
KL = Gauge("rlfleet_learner_kl", "Last step's KL estimate to the reference model.")
ENTROPY = Gauge("rlfleet_learner_entropy", "Last step's mean per-token policy entropy (nats).")
CRITIC = Gauge("rlfleet_learner_critic", "Last step's critic stats (GAE only): explained variance of the "
               "returns by the values before the step, fraction of tokens whose value loss was clipped.", ["stat"])
CLIP_FRACTION = Gauge("rlfleet_learner_clip_fraction", "Fraction of tokens clipped, by side.", ["side"])
GRAD_NORM = Gauge("rlfleet_learner_grad_norm", "Global gradient norm before clipping (last update).")
LEARNING_RATE = Gauge("rlfleet_learner_learning_rate", "Learning rate of the last update.")
REWARD = Gauge("rlfleet_learner_reward", "Reward of the rollouts consumed by the last step.", ["stat"])
REWARD_COMPONENT = Gauge("rlfleet_learner_reward_component_mean", "Mean of each reward component.", ["component"])
ADVANTAGE = Gauge("rlfleet_learner_advantage", "Advantage over trained tokens in the last step.", ["stat"])
RESPONSE_LENGTH = Gauge("rlfleet_learner_response_length_tokens", "Completion length in the last step.", ["stat"])
TOKENS_PER_SECOND = Gauge("rlfleet_learner_tokens_per_second", "Trained tokens per second of the last step.")
STALENESS = Gauge("rlfleet_learner_rollout_staleness", "Policy-version lag of the rollouts consumed.", ["stat"])
PHASE_SECONDS = Histogram("rlfleet_learner_step_phase_seconds", "Wall time of each phase of a training step.",
                          ["phase"], buckets=LATENCY_BUCKETS)
PUSHES = Counter("rlfleet_learner_pushes_total", "Adapter pushes to generators, by outcome.", ["outcome"])
PUSH_BYTES = Counter("rlfleet_learner_push_bytes_total", "Adapter bytes delivered to generators.")
PUSH_SECONDS = Histogram("rlfleet_learner_push_seconds", "Time of one successful push to one generator.",
                         buckets=LATENCY_BUCKETS)
GENERATOR_VERSION = Gauge("rlfleet_learner_generator_acked_version",
                          "Policy version each generator last acknowledged.", ["generator"])
QUEUED_BATCHES = Gauge("rlfleet_learner_queued_batches", "PushRollouts batches waiting to be trained on.")
RECEIVED_BATCHES = Counter("rlfleet_learner_received_batches_total", "PushRollouts batches by outcome.", ["outcome"])
DROPPED_GROUPS = Counter("rlfleet_learner_dropped_groups_total", "Groups dropped by DAPO dynamic sampling.")
INVALID_GROUPS = Counter("rlfleet_learner_invalid_groups_total",
                         "Groups dropped before training because a step could not take them (learner.admission; "
                         "each logged with the field).")
SKIPPED_UPDATES = Counter("rlfleet_learner_skipped_updates_total",
                          "Optimiser updates skipped because the loss or a gradient was not finite.")
CHECKPOINTS = Counter("rlfleet_learner_checkpoints_total", "Checkpoints written.")


def record_step(record: dict[str, float]) -> None:
    """Sets the gauges from one step's flat record (see loop.py for the keys)."""
    get = record.get
    for part in ("loss", "pg_loss", "value_loss", "rs_nll_loss"):
        if part in record:
            LOSS.labels(part).set(record[part])
    setters = ((KL, "kl"), (ENTROPY, "entropy"), (GRAD_NORM, "grad_norm"), (LEARNING_RATE, "lr"),
               (TOKENS_PER_SECOND, "tokens_per_second"), (POLICY_VERSION, "policy_version"))
    for gauge, key in setters:
        if key in record:
            gauge.set(record[key])
    for stat, key in (("explained_variance", "value_explained_variance"), ("clip_fraction", "value_clip_frac")):
        if key in record:
            CRITIC.labels(stat).set(record[key])
    for side in ("low", "high"):
        if f"clip_frac_{side}" in record:
            CLIP_FRACTION.labels(side).set(record[f"clip_frac_{side}"])
    for gauge, prefix, stats in ((REWARD, "reward_", ("mean", "std")), (ADVANTAGE, "advantage_", ("mean", "std")),
                                 (RESPONSE_LENGTH, "response_length_", ("mean", "max")),
                                 (STALENESS, "staleness_", ("mean", "max"))):
        for stat in stats:
            if get(prefix + stat) is not None:
                gauge.labels(stat).set(record[prefix + stat])
    for key, value in record.items():
        if key.startswith("reward_component_mean/"):
            REWARD_COMPONENT.labels(key.split("/", 1)[1]).set(value)
    for phase in ("wait", "forward_backward", "optimizer", "push"):
        if f"{phase}_seconds" in record:
            PHASE_SECONDS.labels(phase).observe(record[f"{phase}_seconds"])
