"""How well reward models rank the policy's own samples: pairwise accuracy against the task's rule, and the rule's reward of each model's top pick.

    python -m bench.reward_model_ranking --policy RUN/models/warm --reward-model RUN/models/reward [--reward-model DIR ...]

The held-out built-in pairs train-rm reports are corruptions of the answer; what PPO needs is a model
that ranks what the policy samples. This samples `--samples` completions of `--prompts` training
prompts of builtin:reverse from the policy (temperature 1, transformers, seeded), and for each model
prints: the fraction of pairs of distinct samples the rule ranks apart that the model ranks the
same way, and the rule's mean reward of each group's top-scored sample beside the group's mean
and its best (bench/README.md, issue 20).
"""

from __future__ import annotations

import argparse
import statistics


def sample_groups(policy: str, prompts: int, samples: int, seed: int) -> list[tuple[str, str, list[str]]]:
    """(prompt, answer, completions) for the last `prompts` of the built-in pairs' training prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks import builtin_items

    train, _ = builtin_items("reverse", 2000, 0, 1234)  # the prompts tasks.preferences.builtin_pairs draws from
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = AutoModelForCausalLM.from_pretrained(policy).eval()
    torch.manual_seed(seed)
    groups = []
    for prompt, answer in train[-prompts:]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        with torch.no_grad():
            out = model.generate(torch.tensor([ids] * samples), max_new_tokens=12, do_sample=True, temperature=1.0,
                                 top_p=1.0, top_k=0, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.pad_token_id)
        groups.append((prompt, answer, [tokenizer.decode(o[len(ids):], skip_special_tokens=True) for o in out]))
    return groups


def ranking(groups: list[tuple[str, str, list[str]]], scores: list[float]) -> dict[str, float]:
    """Pairwise accuracy on the policy's pairs, and the rule's reward of the top pick / group mean / group best."""
    from tasks.preferences import demo_reward

    right = total = 0
    top, mean, best = [], [], []
    offset = 0
    for prompt, answer, completions in groups:
        s = scores[offset:offset + len(completions)]
        offset += len(completions)
        gold = [demo_reward(prompt, c, answer) for c in completions]
        for i in range(len(completions)):
            for j in range(len(completions)):
                if gold[i] > gold[j] and completions[i].strip() != completions[j].strip():
                    total += 1
                    right += s[i] > s[j]
        top.append(gold[max(range(len(s)), key=s.__getitem__)])
        mean.append(statistics.mean(gold))
        best.append(max(gold))
    return {"policy_pairs": total, "pairwise_accuracy": right / max(total, 1), "top_pick_reward": statistics.mean(top),
            "group_mean_reward": statistics.mean(mean), "group_best_reward": statistics.mean(best)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reward_model_ranking", description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True, help="the policy's Hugging Face folder (e.g. RUN/models/warm)")
    parser.add_argument("--reward-model", action="append", required=True, help="a train-rm folder (repeatable)")
    parser.add_argument("--prompts", type=int, default=150)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    from reward_server.model import RewardModel

    groups = sample_groups(args.policy, args.prompts, args.samples, args.seed)
    items = [(prompt, c) for prompt, _, completions in groups for c in completions]
    for folder in args.reward_model:
        model = RewardModel(folder)
        result = ranking(groups, model.score_items([p for p, _ in items], [c for _, c in items]))
        print(f"{folder} ({model.description}): " + ", ".join(
            f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
