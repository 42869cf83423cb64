"""One training step on one rollout batch, as named steps: prepare -> reference -> advantages -> updates.

    trainer = Trainer(config, PolicyEngine(config))
    result = trainer.train_step(batch, policy_version=trainer_version)   # blocking torch work

A step takes `epochs_per_batch x minibatches_per_batch` optimiser updates. Each update accumulates
gradients over token-budget micro-batches whose losses are normalised by the whole mini-batch's
token (and sequence) counts, so the accumulated gradient equals the gradient of the mini-batch loss.
An update whose loss or gradient comes out non-finite is skipped (its gradients dropped, the
optimiser untouched) and counted in `skipped_updates`, whatever the ZeRO stage or dtype.
With a GAE advantage, `prepare` also takes the critic's values (GAE's baseline and the value clip's
old values) and each micro-batch adds value.coef x the clipped value loss (learner/critic.py).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from learner.algos import (
    AdvantageInput,
    AdvantageOutput,
    PolicyLossInput,
    compute_advantages,
    explained_variance,
    filter_uniform_groups,
    kl_penalty,
    nll_loss,
    overlong_mask,
    sft_mask,
    value_clip_frac,
    value_loss,
)
from learner.batching import PaddedBatch, micro_batches, minibatch_rows, pad_batch
from learner.config import LearnerConfig
from learner.engine import PolicyEngine
from learner.objective import select_objective
from rlfleet import cpu
from rlfleet.errors import InvalidRequest
from rlfleet.rollouts import Batch, trajectory_summary


@dataclass
class StepResult:
    """What one training step reports: flat float metrics (names become JSONL keys and metric names)."""

    metrics: dict[str, float] = field(default_factory=dict)
    updates: int = 0
    trained_tokens: int = 0
    dropped_groups: int = 0
    skipped_updates: int = 0    # non-finite loss or gradient: no optimiser update taken


@dataclass
class Prepared:
    """A padded batch with everything an update needs."""

    padded: PaddedBatch
    advantages: Tensor         # [B, T]
    old_logprobs: Tensor | None  # [B, T]; None when the single update uses its own detached log-probs
    sft_mask: Tensor | None = None  # [B, T] trained tokens of the rejection-sampled (kept) completions; None = off
    old_values: Tensor | None = None  # [B, T] critic values before this step's updates (GAE only)
    returns: Tensor | None = None     # [B, T] value targets (GAE only)


@dataclass(frozen=True)
class Totals:
    """Normalisers of one mini-batch, so that its micro-batches' losses add up to the mini-batch loss."""

    num_tokens: float          # trained tokens (mask sum)
    num_sequences: float       # rows with at least one trained token
    num_sft_tokens: float      # trained tokens of the rejection-sampled completions (0 when off)


class Trainer:
    """Turns rollout batches into optimiser updates of the engine's adapter."""

    def __init__(self, config: LearnerConfig, engine: PolicyEngine):
        self.config = config
        self.engine = engine
        self.algo = config.algo
        self.objective = select_objective(config.algo, engine.device, config.fused_loss)
        self.shuffle = torch.Generator().manual_seed(config.seed)
        if config.algo.needs_critic and not engine.has_critic:
            raise ValueError("algo.advantage 'gae' needs an engine built with the critic (PolicyEngine(config))")
        self.critic_only = False  # value warm-up: this step trains the critic alone

    # -- the step ---------------------------------------------------------------------------------

    def train_step(self, batch: Batch, policy_version: int) -> StepResult:
        """Trains on `batch`; `policy_version` is the version being trained from (for staleness), i.e.
        the number of steps done, which also decides the critic's warm-up."""
        result = StepResult()
        self.critic_only = self.algo.needs_critic and policy_version < self.algo.value.warmup_steps
        filtered = self.filter_groups(batch, result)
        if filtered is None:
            result.metrics.update(self.batch_stats(batch, policy_version))
            return result
        padded = pad_batch(filtered, self.engine.pad_id, self.engine.max_len)
        if self.algo.dapo.overlong_filter:
            padded.mask = overlong_mask(padded.truncated, padded.mask)  # [B, T]
        timings: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        cpu.switch("reference_and_old")
        prepared = self.prepare(padded)
        timings["reference_and_old_seconds"] = time.perf_counter() - start
        advantages = prepared.advantages
        totals: dict[str, float] = defaultdict(float)
        for _epoch in range(self.config.epochs_per_batch):
            for rows in minibatch_rows(padded.num_rows, self.config.minibatches_per_batch, self.shuffle):
                stats = self.update(prepared, rows, timings)
                if stats is None:
                    result.skipped_updates += 1
                    continue
                for key, value in stats.items():
                    totals[key] += value
                result.updates += 1
        result.trained_tokens = int(padded.mask.sum()) if result.updates else 0
        result.metrics.update({k: v / max(result.updates, 1) for k, v in totals.items()})
        result.metrics["skipped_updates"] = float(result.skipped_updates)
        result.metrics.update(timings)
        result.metrics.update(self.batch_stats(filtered, policy_version))
        result.metrics["advantage_mean"], result.metrics["advantage_std"] = _masked_mean_std(advantages, padded.mask)
        result.metrics.update(self.prepared_stats(prepared))
        return result

    # -- named steps ------------------------------------------------------------------------------

    def filter_groups(self, batch: Batch, result: StepResult) -> Batch | None:
        """DAPO dynamic sampling: drops groups whose rewards are all equal (None when none is left)."""
        if not self.algo.dapo.dynamic_sampling:
            return batch
        rewards = torch.tensor([s.reward for g in batch.groups for s in g.samples])  # [B]
        group_ids = torch.tensor([i for i, g in enumerate(batch.groups) for _ in g.samples])  # [B]
        keep = filter_uniform_groups(rewards, group_ids)  # [B]
        kept = [g for i, g in enumerate(batch.groups) if bool(keep[group_ids == i].all())]
        result.dropped_groups = len(batch.groups) - len(kept)
        return Batch(batch.batch_id, kept, batch.producer) if kept else None

    def prepare(self, padded: PaddedBatch) -> Prepared:
        """Reference log-probs, advantages and old log-probs of a padded batch."""
        self.reference_logprobs(padded)
        values = self.critic_values(padded)
        estimate = self.advantages(padded, values)
        return Prepared(padded, estimate.advantages, self.old_logprobs(padded), self.sft_mask(padded), values,
                        estimate.returns)

    def reference_logprobs(self, padded: PaddedBatch) -> None:
        """Fills padded.ref_logprobs when the KL needs them: the adapter-disabled model, or an error in service mode."""
        if not self.algo.needs_reference or padded.ref_logprobs is not None:
            return
        if self.config.reference == "service":
            raise InvalidRequest("groups.samples.ref_logprobs",
                                 "required when algo.kl.coef > 0 and reference = 'service'")
        with self.engine.reference_mode():
            padded.ref_logprobs = self._no_grad_logprobs(padded)

    def critic_values(self, padded: PaddedBatch) -> Tensor | None:
        """The critic's values [B, T] before this step's updates (None without a critic)."""
        if not self.algo.needs_critic:
            return None
        return self._no_grad_tokens(padded, lambda part, valid: self.engine.values(
            part.input_ids, part.attention_mask, part.positions, valid))

    def advantages(self, padded: PaddedBatch, values: Tensor | None = None) -> AdvantageOutput:
        """Per-token advantages [B, T] (and GAE's value targets): the producer's advantages when every
        sample has them, else the estimator's; with a critic, GAE's returns train it either way."""
        if padded.advantages is not None and values is None:
            return AdvantageOutput(padded.advantages * padded.mask)
        token_rewards = None
        if self.algo.kl.mode == "reward" and self.algo.kl.coef > 0:
            kl = kl_penalty(padded.behaviour_logprobs, padded.ref_logprobs, self.algo.kl.estimator)  # [B, T]
            token_rewards = -self.algo.kl.coef * kl * padded.mask  # [B, T]
        inp = AdvantageInput(rewards=padded.rewards, group_ids=padded.group_ids, mask=padded.mask,
                             token_rewards=token_rewards, values=values)
        out = compute_advantages(inp, self.algo)
        if padded.advantages is not None:
            return AdvantageOutput(padded.advantages * padded.mask, out.returns)
        return out

    def sft_mask(self, padded: PaddedBatch) -> Tensor | None:
        """Rejection sampling: the trained tokens of each group's top completions [B, T] (None when off)."""
        rs = self.algo.rejection_sampling
        if rs.coef == 0:
            return None
        return sft_mask(padded.mask, padded.rewards, padded.group_ids, rs.top_fraction, rs.min_reward)  # [B, T]

    def old_logprobs(self, padded: PaddedBatch) -> Tensor | None:
        """Log-probs of the policy before this step's updates; skipped when there is one update (ratio = 1)."""
        if self.config.updates_per_batch == 1:
            return None
        return self._no_grad_logprobs(padded)

    def update(self, prepared: Prepared, rows: Tensor, timings: dict[str, float]) -> dict[str, float] | None:
        """One optimiser update on mini-batch `rows`: accumulate over micro-batches, then step.

        None when the loss or a gradient is not finite: the gradients are dropped before DeepSpeed's
        step sees them (its own overflow check covers fp16 only), so the weights and the optimiser
        state stay as they were.
        """
        start = time.perf_counter()
        cpu.switch("forward_backward")
        sums = self.accumulate(prepared, rows)
        middle = time.perf_counter()
        cpu.switch("optimizer")
        if not math.isfinite(sums["loss"]) or not self.engine.gradients_finite():
            self.engine.discard_gradients()
            timings["forward_backward_seconds"] += middle - start
            return None
        info = self.engine.step()
        timings["forward_backward_seconds"] += middle - start
        timings["optimizer_seconds"] += time.perf_counter() - middle
        sums.update(grad_norm=info.grad_norm, lr=info.lr)
        return sums

    def accumulate(self, prepared: Prepared, rows: Tensor) -> dict[str, float]:
        """Forward/backward of mini-batch `rows` over token-budget micro-batches; summed loss stats."""
        padded = prepared.padded
        mask = padded.mask[rows]  # [R, T]
        num_tokens = float(mask.sum())
        num_sequences = float((mask.sum(-1) > 0).sum())
        totals = Totals(num_tokens, num_sequences,
                        float(prepared.sft_mask[rows].sum()) if prepared.sft_mask is not None else 0.0)
        chunks = micro_batches(rows, padded.input_lengths, self.config.micro_batch_tokens)
        share = self._my_share(chunks)
        sums: dict[str, float] = defaultdict(float)
        for i, (micro, weight) in enumerate(share):
            stats = self._micro_step(prepared, micro, totals, weight, i == len(share) - 1)
            for key, value in stats.items():
                sums[key] += value
        sums = self.engine.all_reduce_sum(sums)
        sums["micro_batches"] = float(len(chunks))
        return sums

    def _my_share(self, chunks: list[Tensor]) -> list[tuple[Tensor, float]]:
        """This rank's micro-batches and their weights (data parallel: round-robin over ranks).

        Every rank runs the same number of forwards, because ZeRO-3's are collective: a rank short
        of work repeats a micro-batch with weight 0. One process gets every chunk with weight 1.
        """
        world, rank = self.engine.world_size, self.engine.rank
        mine = [(chunk, 1.0) for chunk in chunks[rank::world]]
        mine += [(chunks[0], 0.0)] * (-(-len(chunks) // world) - len(mine))
        return mine

    def _micro_step(self, prepared: Prepared, rows: Tensor, totals: Totals, weight: float,
                    last: bool) -> dict[str, float]:
        """Forward/backward of one micro-batch: L = L_policy (+ rs.coef * NLL) + value.coef * L_value."""
        part = prepared.padded.select(rows)
        loss, stats = part.mask.new_zeros((), device=self.engine.device), {}
        if not self.critic_only:
            loss, stats = self._policy_terms(prepared, part, rows, totals, weight)
        if self.algo.needs_critic:
            value, value_stats = self._critic_terms(prepared, part, rows, totals, weight)
            loss = loss + self.algo.value.coef * value
            stats.update(value_stats)
        # DeepSpeed averages gradients over data-parallel ranks; the losses are already normalised by
        # the whole mini-batch, so each rank's share is scaled back up by the number of ranks.
        self.engine.backward(loss * (weight * self.engine.world_size), is_last_micro_batch=last)
        stats["loss"] = weight * float(loss.detach())
        return stats

    def _policy_terms(self, prepared: Prepared, part: PaddedBatch, rows: Tensor, totals: Totals,
                      weight: float) -> tuple[Tensor, dict[str, float]]:
        """The policy loss of a micro-batch (with rejection sampling's NLL) and its weighted stats."""
        width = part.targets.shape[1]
        device = self.engine.device
        logprobs, entropy = self.engine.logprobs(part.input_ids, part.attention_mask, part.positions, part.targets,
                                                 part.mask > 0, return_entropy=True)  # [R, T]
        old = prepared.old_logprobs[rows][:, :width].to(device) if prepared.old_logprobs is not None \
            else logprobs.detach()  # [R, T]
        ref = part.ref_logprobs.to(device) if part.ref_logprobs is not None else None
        out = self.objective(PolicyLossInput(
            logprobs=logprobs, old_logprobs=old, behaviour_logprobs=part.behaviour_logprobs.to(device),
            advantages=prepared.advantages[rows][:, :width].to(device), mask=part.mask.to(device),
            ref_logprobs=ref, num_tokens=totals.num_tokens, num_sequences=totals.num_sequences, entropy=entropy))
        loss, stats = out.loss, {}
        if prepared.sft_mask is not None:
            nll = nll_loss(logprobs, prepared.sft_mask[rows][:, :width].to(device), max(totals.num_sft_tokens, 1.0))
            loss = loss + self.algo.rejection_sampling.coef * nll
            stats["rs_nll_loss"] = weight * float(nll.detach())
        for name in ("pg_loss", "kl", "clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean",
                     "tis_weight_mean", "tis_clip_frac", "entropy"):
            value = getattr(out.stats, name)
            if value is not None:
                stats[name] = weight * float(value)
        return loss, stats

    def _critic_terms(self, prepared: Prepared, part: PaddedBatch, rows: Tensor, totals: Totals,
                      weight: float) -> tuple[Tensor, dict[str, float]]:
        """The clipped value loss of a micro-batch (unweighted by value.coef) and its weighted stats."""
        width = part.targets.shape[1]
        device = self.engine.device
        mask = part.mask.to(device)  # [R, T]
        values = self.engine.values(part.input_ids, part.attention_mask, part.positions, mask > 0)  # [R, T]
        old = prepared.old_values[rows][:, :width].to(device)  # [R, T]
        returns = prepared.returns[rows][:, :width].to(device)  # [R, T]
        clip = self.algo.value.clip
        loss = value_loss(values, old, returns, mask, clip, self.algo.aggregation, totals.num_tokens,
                          totals.num_sequences, self.algo.seq_sum_normaliser)  # []
        clipped = value_clip_frac(values.detach(), old, returns, mask, clip, totals.num_tokens)  # []
        return loss, {"value_loss": weight * float(loss.detach()), "value_clip_frac": weight * float(clipped)}

    def _no_grad_logprobs(self, padded: PaddedBatch) -> Tensor:
        """Log-probs [B, T] of every row under the current forward, in token-budget micro-batches."""
        return self._no_grad_tokens(padded, lambda part, valid: self.engine.logprobs(
            part.input_ids, part.attention_mask, part.positions, part.targets, valid)[0])

    def _no_grad_tokens(self, padded: PaddedBatch, per_token: Callable[[PaddedBatch, Tensor], Tensor]) -> Tensor:
        """per_token(part, valid) [R, T'] of every row without gradients, in token-budget micro-batches.  # [B, T]"""
        out = torch.zeros_like(padded.mask)  # [B, T]
        rows = torch.arange(padded.num_rows)
        chunks = micro_batches(rows, padded.input_lengths, self.config.micro_batch_tokens)
        with torch.no_grad():
            for micro, weight in self._my_share(chunks):
                part = padded.select(micro)
                valid = torch.arange(part.targets.shape[1])[None, :] < part.completion_lengths[:, None]  # [R, T]
                values = per_token(part, valid)
                if weight:
                    out[micro, :values.shape[1]] = values.cpu()
        return self.engine.all_reduce_sum_tensor(out)

    def prepared_stats(self, prepared: Prepared) -> dict[str, float]:
        """Rejection sampling's kept fraction; the critic's values, returns and explained variance (before the updates)."""
        stats: dict[str, float] = {}
        mask = prepared.padded.mask
        if prepared.sft_mask is not None:
            stats["rs_kept_fraction"] = float((prepared.sft_mask.sum(-1) > 0).float().mean())
        if prepared.old_values is not None:
            stats["value_mean"], _ = _masked_mean_std(prepared.old_values, mask)
            stats["return_mean"], _ = _masked_mean_std(prepared.returns, mask)
            stats["value_explained_variance"] = float(explained_variance(prepared.old_values, prepared.returns, mask))
            stats["critic_only"] = float(self.critic_only)
        return stats

    # -- reporting --------------------------------------------------------------------------------

    def batch_stats(self, batch: Batch, policy_version: int) -> dict[str, float]:
        """Reward (total and per component), response length and staleness of the rollouts consumed."""
        samples = [s for g in batch.groups for s in g.samples]
        rewards = torch.tensor([s.reward for s in samples], dtype=torch.float64)
        lengths = torch.tensor([len(s.token_ids) for s in samples], dtype=torch.float64)
        staleness = torch.tensor([policy_version - g.policy_version for g in batch.groups], dtype=torch.float64)
        stats = {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std(correction=0)),
                 "response_length_mean": float(lengths.mean()), "response_length_max": float(lengths.max()),
                 "truncated_fraction": sum(s.truncated for s in samples) / len(samples),
                 "staleness_mean": float(staleness.mean()), "staleness_max": float(staleness.max()),
                 "samples": float(len(samples)), "groups": float(len(batch.groups))}
        components: dict[str, list[float]] = defaultdict(list)
        for sample in samples:
            for name, value in sample.reward_components.items():
                components[name].append(value)
        for name, values in sorted(components.items()):
            stats[f"reward_component_mean/{name}"] = sum(values) / len(values)
        trajectories = [s.trajectory for s in samples if s.trajectory is not None]
        stats.update({f"trajectory/{k}": v for k, v in trajectory_summary(trajectories).items()})
        return stats


def _masked_mean_std(values: Tensor, mask: Tensor) -> tuple[float, float]:
    count = mask.sum().clamp(min=1)
    mean = (values * mask).sum() / count
    var = (((values - mean) * mask) ** 2).sum() / count
    return float(mean), float(var.sqrt())
