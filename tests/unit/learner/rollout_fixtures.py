"""Fixed rollout batches for the learner's tests: rewarded completions over the tiny model's byte vocabulary."""

from __future__ import annotations

import random

from rlfleet.rollouts import Batch, FinishReason, Group, Sample


def fixed_batch(batch_id: str = "b0", groups: int = 2, group_size: int = 4, seed: int = 0,
                policy_version: int = 0, with_ref: bool = False) -> Batch:
    """Groups of completions whose reward is 1 when the completion starts with byte 'a' (id 65), else 0.

    Lengths vary (3..9 tokens) so padding and token-budget micro-batching are exercised; behaviour
    log-probs are a plausible constant (-5.6 ~ log(1/262)) so the TIS weight is near 1.
    """
    rng = random.Random(seed)
    out = []
    for g in range(groups):
        prompt = [rng.randrange(0, 256) for _ in range(rng.randrange(2, 6))]
        samples = []
        for s in range(group_size):
            length = rng.randrange(3, 10)
            first = 65 if s % 2 == 0 else 66
            tokens = [first] + [rng.randrange(0, 256) for _ in range(length - 1)]
            samples.append(Sample(
                token_ids=tokens, logprobs=[-5.6] * length,
                finish_reason=FinishReason.STOP if s != 3 else FinishReason.LENGTH,
                reward=1.0 if first == 65 else 0.0, reward_components={"correct": 1.0 if first == 65 else 0.0},
                ref_logprobs=[-5.5] * length if with_ref else None))
        out.append(Group(prompt_id=f"p{g}", prompt_ids=prompt, samples=samples, policy_version=policy_version))
    return Batch(batch_id=batch_id, groups=out, producer="test")
