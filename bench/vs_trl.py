"""Head-to-head with TRL's GRPOTrainer on this machine: completion tokens per second and reward per sample.

    python -m bench.vs_trl [--config tiny|compute] [--seeds 0 1 2] [--steps N] [--warmup 3] [--quick]

Two configurations: `tiny` (the demo's 3 M-parameter model, 8 prompts x 8 completions, 12 new
tokens; target >= 1.0x TRL's completion tokens per CPU-second, reward within noise over 3 seeds)
and `compute` (a 78 M-parameter `rlfleet tiny-model --hidden-size 768 --layers 12`, warm-started
on `builtin:reverse_long`, whose answers run from 2 to 100 letters; 4 prompts x 4 completions of
at most 128 new tokens; target >= 1.5x TRL's completion tokens/s).

Both systems train the same warm-started model (built once in WORKDIR) on the configuration's
built-in task, graded by the same reward functions (tasks/rewards.py, accuracy + 0.5 x
similarity), with the same prompts per step, group size, max new tokens, learning rate (constant,
AdamW, grad-clip 1.0), LoRA (rank 16, alpha 32, all seven projections), KL coefficient (k3 in the
loss), fp32, on 2 threads. rlfleet runs as `rlfleet up` (local processes); TRL runs in this process,
after rlfleet, so the two never share the cores at the same time. How TRL's defaults were aligned:

- `loss_type="dapo"`: token mean over the batch, rlfleet's `token_mean` (TRL's default too).
- `epsilon=0.2, epsilon_high=0.28`: rlfleet's clip_low / clip_high (TRL defaults to a symmetric 0.2).
- `beta=kl_coef`, so TRL loads its reference model exactly as rlfleet's reference service scores one
  (with beta=0 TRL skips the reference entirely; rlfleet skips it too at kl_coef 0).
- `bf16=False`, `gradient_checkpointing=False` (TRL's GRPOConfig turns both on by default).
- `use_vllm=False`: TRL's vLLM modes need CUDA (colocate uses vLLM's GPU memory split and
  `torch.distributed` over NCCL; server mode needs `trl vllm-serve` on a GPU); on the CPU TRL's
  supported path is `transformers.generate`. That difference is what the architecture buys.
- `scale_rewards="group"`, `num_iterations=1`, temperature 1.0, top-p 1.0, chat-template prompts.

A step's time is the wall time between consecutive step ends (generation included, whether or not
it overlaps training); the first `--warmup` steps are excluded. Reward is the mean over the last
steps of the same number of samples. Because the machine is shared, tokens per CPU-second is
reported too: CPU seconds of every rlfleet process (sampled from /proc every 0.5 s) or of the TRL
process, over the same measured steps; it does not depend on how much CPU other users left over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import StepRecord, Throughput, UpRun, markdown_table, read_learner_steps, run_up, throughput

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Shared:
    """What both systems get identically."""

    steps: int
    prompts_per_batch: int = 8
    group_size: int = 8
    max_tokens: int = 12
    lr: float = 2e-3
    lora_rank: int = 16
    lora_alpha: float = 32.0      # both sides; `rlfleet up` fixes alpha at 32 whatever the rank
    kl_coef: float = 0.005
    seed: int = 0
    dataset: str = "builtin:reverse"
    hidden_size: int = 256            # the model: `rlfleet tiny-model --hidden-size --layers`, warm-started
    layers: int = 4
    warmstart_steps: int = 130
    warmstart_batch: int = 32
    target: str = ">= 1.0x TRL's completion tokens per CPU-second, reward within noise of TRL's over 3 seeds"


# tiny: the demo's model and settings. compute: a 78 M-parameter model, 128 new tokens on a task whose
# answers run from 2 to 100 letters, so generation and training cost FLOPs rather than per-call overhead.
PRESETS = {
    "tiny": Shared(steps=14),
    "compute": Shared(steps=6, prompts_per_batch=4, group_size=4, max_tokens=128, lr=1e-3,
                      dataset="builtin:reverse_long", hidden_size=768, layers=12, warmstart_steps=40,
                      warmstart_batch=8, target=">= 1.5x TRL's completion tokens/s"),
}


def _content(completions: list) -> list[str]:
    # TRL hands chat-template prompts' completions over as [{"role": "assistant", "content": ...}].
    return [c[0]["content"] if isinstance(c, list) else c for c in completions]


def trl_rewards() -> list:
    """The task's reward functions, unchanged, behind the chat-completion unwrapping TRL needs."""
    from tasks.rewards import accuracy, similarity

    def reverse_accuracy(prompts, completions, answer, **columns):
        return accuracy(prompts, _content(completions), answer)

    def reverse_similarity(prompts, completions, answer, **columns):
        return similarity(prompts, _content(completions), answer)

    return [reverse_accuracy, reverse_similarity]


def trl_dataset(seed: int, dataset: str = "builtin:reverse"):
    """The pipeline's own training split (same loader, same held-out fraction), as chat prompts."""
    from datasets import Dataset

    from learner.pipeline.dataset import load_rows

    rows, _ = load_rows(dataset, "prompt", "answer", 0.1, seed)
    return Dataset.from_list([{"prompt": [{"role": "user", "content": r.prompt}], "answer": r.answer}
                              for r in rows])


def run_trl(model: Path, shared: Shared, out_dir: Path) -> list[StepRecord]:
    """Trains with TRL's GRPOTrainer; returns one record per step from a callback."""
    import torch
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(2)
    batch = shared.prompts_per_batch * shared.group_size
    config = GRPOConfig(
        output_dir=str(out_dir), max_steps=shared.steps, per_device_train_batch_size=batch,
        gradient_accumulation_steps=1, num_generations=shared.group_size,
        max_completion_length=shared.max_tokens, learning_rate=shared.lr, lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, beta=shared.kl_coef, loss_type="dapo",
        epsilon=0.2, epsilon_high=0.28, scale_rewards="group", num_iterations=1, temperature=1.0, top_p=1.0,
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, use_vllm=False,
        reward_weights=[1.0, 0.5], logging_steps=1, save_strategy="no", report_to=[], seed=shared.seed,
        model_init_kwargs={"dtype": torch.float32}, dataloader_num_workers=0, disable_dropout=True)
    lora = LoraConfig(r=shared.lora_rank, lora_alpha=shared.lora_alpha, lora_dropout=0.0,
                      target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    records: list[StepRecord] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            self.end, self.cpu = time.time(), time.process_time()  # TRL is this one process, all its threads

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                tokens = logs["completions/mean_length"] * batch
                records.append(StepRecord(self.end, self.end - self.begin, 0.0, batch, tokens, logs["reward"],
                                          self.cpu))

    trainer = GRPOTrainer(model=str(model), reward_funcs=trl_rewards(), args=config,
                          train_dataset=trl_dataset(shared.seed, shared.dataset), peft_config=lora, callbacks=[StepTimer()])
    trainer.train()
    return records


def run_rlfleet(model: Path, shared: Shared, run_dir: Path, max_staleness: int) -> list[StepRecord]:
    """Trains with `rlfleet up` (local topology: one generator, reward, reference, learner)."""
    run_up(UpRun(model=str(model), run_dir=run_dir, steps=shared.steps, max_staleness=max_staleness,
                 group_size=shared.group_size, prompts_per_batch=shared.prompts_per_batch,
                 max_tokens=shared.max_tokens, lr=shared.lr, lora_rank=shared.lora_rank,
                 lora_alpha=shared.lora_alpha,
                 kl_coef=shared.kl_coef, seed=shared.seed, extra=("--dataset", shared.dataset)))
    return read_learner_steps(run_dir)


def report(results: dict[str, Throughput], shared: Shared, warmup: int) -> str:
    """The markdown section: one row per system and a ratio row per rlfleet configuration."""
    def per_cpu(t: Throughput) -> str:
        return "n/a" if t.tokens_per_cpu_second is None else f"{t.tokens_per_cpu_second:.1f}"

    rows = [[name, f"{t.median_step_seconds:.2f}", f"{t.tokens_per_second:.1f}", per_cpu(t),
             f"{t.samples_per_second:.1f}", f"{t.reward_mean:.3f}", str(t.samples_seen)]
            for name, t in results.items()]
    theirs = results[TRL]
    for name, ours in results.items():
        if name != TRL:
            cpu_ratio = ("n/a" if ours.tokens_per_cpu_second is None or theirs.tokens_per_cpu_second is None
                         else f"**{ours.tokens_per_cpu_second / theirs.tokens_per_cpu_second:.2f}x**")
            rows.append([f"**ratio {name} / TRL**", f"{ours.median_step_seconds / theirs.median_step_seconds:.2f}",
                         f"**{ours.tokens_per_second / theirs.tokens_per_second:.2f}x**", cpu_ratio,
                         f"{ours.samples_per_second / theirs.samples_per_second:.2f}x",
                         f"{ours.reward_mean - theirs.reward_mean:+.3f}", ""])
    table = markdown_table(["system", "median step s", "completion tok/s", "completion tok/CPU-s", "samples/s",
                            "reward (last steps)", "samples"], rows)
    return (f"{shared.steps} steps of {shared.prompts_per_batch} prompts x {shared.group_size} completions, "
            f"max {shared.max_tokens} new tokens, lr {shared.lr}, LoRA r{shared.lora_rank}, KL {shared.kl_coef}; "
            f"{shared.dataset}, model {shared.hidden_size} x {shared.layers} layers; first {warmup} steps excluded. "
            f"Target: {shared.target}.\n\n{table}\n")


TRL = "TRL GRPOTrainer"


def run(workdir: Path, steps: int, warmup: int, max_staleness: int = 1, reuse: Path | None = None,
        also: dict[int, Path] | None = None, config: str = "tiny", seeds: tuple[int, ...] = (0,), lora_rank: int | None = None) -> str:
    """Both systems, one after the other, once per seed. `reuse` is a finished `rlfleet up` run with these exact
    settings at `max_staleness` (`python -m bench` passes overlap.py's run instead of training twice); `also`
    adds more finished runs by their max_staleness, as extra rows against the same TRL run (first seed only)."""
    from bench.common import warm_model

    per_seed = []
    for i, seed in enumerate(seeds):
        shared = dataclasses.replace(PRESETS[config], steps=steps, seed=seed)
        if lora_rank is not None:
            shared = dataclasses.replace(shared, lora_rank=lora_rank)
        model = warm_model(workdir, shared.warmstart_steps, 0, shared.hidden_size, shared.layers,
                           shared.dataset.split(":", 1)[1], shared.warmstart_batch)
        out = workdir / f"vs_trl-{config}" / f"seed-{seed}"
        ours = (read_learner_steps(reuse) if reuse is not None and i == 0
                else run_rlfleet(model, shared, out / "rlfleet", max_staleness))
        results = {f"rlfleet up, max_staleness {max_staleness}": ours}
        if i == 0:
            results.update({f"rlfleet up, max_staleness {k}": read_learner_steps(d) for k, d in (also or {}).items()})
        results[TRL] = run_trl(model, shared, out / "trl")
        out.mkdir(parents=True, exist_ok=True)
        (out / "trl_steps.json").write_text(json.dumps([asdict(r) for r in results[TRL]], indent=1))
        reward_steps = max(1, (steps - warmup) // 2)
        stats = {name: throughput(records, warmup, reward_steps) for name, records in results.items()}
        (out / "results.json").write_text(json.dumps({k: asdict(v) for k, v in stats.items()}, indent=1))
        per_seed.append((seed, shared, stats))
    text = "\n".join(f"Seed {seed}: " + report(stats, shared, warmup) for seed, shared, stats in per_seed)
    return text + (seeds_summary(per_seed, max_staleness) if len(per_seed) > 1 else "") + \
        f"\n_load average {os.getloadavg()[0]:.1f} at the end_\n"


def seeds_summary(per_seed: list, max_staleness: int) -> str:
    """Means over seeds, and whether the reward difference is within noise (2 standard errors)."""
    ours_name = f"rlfleet up, max_staleness {max_staleness}"
    rows = []
    for name in (ours_name, TRL):
        runs = [stats[name] for _, _, stats in per_seed]
        rewards = [t.reward_mean for t in runs]
        per_cpu = [t.tokens_per_cpu_second or 0.0 for t in runs]
        rows.append([name, f"{statistics.mean(t.tokens_per_second for t in runs):.1f}",
                     f"{statistics.mean(per_cpu):.1f}",
                     " / ".join(f"{r:.3f}" for r in rewards),
                     f"{statistics.mean(rewards):.3f} +- {statistics.stdev(rewards):.3f}"])
    ours = [stats[ours_name] for _, _, stats in per_seed]
    theirs = [stats[TRL] for _, _, stats in per_seed]
    diff = statistics.mean(t.reward_mean for t in ours) - statistics.mean(t.reward_mean for t in theirs)
    noise = 2 * math.sqrt((statistics.variance([t.reward_mean for t in ours]) +
                           statistics.variance([t.reward_mean for t in theirs])) / len(ours))
    cpu = statistics.mean(t.tokens_per_cpu_second or 0.0 for t in ours) / max(
        statistics.mean(t.tokens_per_cpu_second or 0.0 for t in theirs), 1e-9)
    rate = statistics.mean(t.tokens_per_second for t in ours) / statistics.mean(t.tokens_per_second for t in theirs)
    table = markdown_table(["system", "completion tok/s (mean)", "completion tok/CPU-s (mean)",
                            "reward per seed", "reward mean +- sd"], rows)
    return (f"\nOver {len(per_seed)} seeds:\n\n{table}\n\n**ratio rlfleet / TRL: {rate:.2f}x tokens/s, "
            f"{cpu:.2f}x tokens per CPU-second; reward difference {diff:+.3f} "
            f"({'within' if abs(diff) <= noise else 'outside'} noise: 2 standard errors = {noise:.3f})**\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vs_trl", description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(PRESETS), default="tiny",
                        help="tiny: the demo's model and settings; compute: 78 M parameters, 128 new tokens")
    parser.add_argument("--steps", type=int, help="training steps per system (default: the config's)")
    parser.add_argument("--warmup", type=int, default=3, help="first steps excluded from the timing")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run of each system per seed")
    parser.add_argument("--max-staleness", type=int, default=1, help="rlfleet's max_staleness")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/rlfleet-bench"))
    parser.add_argument("--lora-rank", type=int, help="LoRA rank of both systems (default 16; `rlfleet up` defaults to 1)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 steps, 1 warm-up step")
    args = parser.parse_args(argv)
    steps, warmup = (5, 1) if args.quick else (args.steps or PRESETS[args.config].steps, args.warmup)
    if args.config == "compute" and not args.quick:
        warmup = min(warmup, 2)
    print(run(args.workdir, steps, warmup, args.max_staleness, config=args.config, seeds=tuple(args.seeds),
              lora_rank=args.lora_rank))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
