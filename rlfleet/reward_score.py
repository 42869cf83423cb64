"""The score of a likelihood reward model: the mean log-probability of the completion's tokens under a causal LM.

    s(x, y) = (1 / |y|) * sum_t log p(y_t | x, y_<t)

SimPO's implicit reward (Meng et al. 2024, eq. 4; RRHF, Yuan et al. 2023, ranks the same length-normalised
log-likelihood): a Bradley-Terry model over it is trained on preference pairs like a classifier's score
(`rlfleet train-rm --score mean_logprob`), and served by `reward_server.model.RewardModel`. y includes the
chat template's closing tokens (the end of turn), so stopping early or late costs likelihood too.
"""

from __future__ import annotations

from torch import Tensor

# config.json key naming how a reward-model folder scores: absent = a one-output sequence classifier.
SCORE_KEY = "rlfleet_reward_score"
MEAN_LOGPROB = "mean_logprob"


def mean_completion_logprob(logits: Tensor, input_ids: Tensor, starts: Tensor, lengths: Tensor) -> Tensor:
    """s for each row: tokens starts[b] .. lengths[b] - 1 of input_ids[b] are y, the rest is context or padding.

    logits: [B, T, V] (position t predicts token t + 1); input_ids: [B, T]; starts, lengths: [B].  # [B]
    """
    logprobs = logits[:, :-1].float().log_softmax(-1)  # [B, T-1, V]
    targets = input_ids[:, 1:]  # [B, T-1]
    token = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # [B, T-1]
    position = starts.new_tensor(range(1, input_ids.shape[1]))  # [T-1]: the index of each target token
    mask = (position[None, :] >= starts[:, None]) & (position[None, :] < lengths[:, None])  # [B, T-1]
    return (token * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # [B]
