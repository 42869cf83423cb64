"""The PPO critic: a value head on its own LoRA adapter over the policy's frozen base model.

    values = engine.values(input_ids, attention_mask, positions, valid)   # [B, T], the critic adapter active

Why this design. A critic needs a representation of the prompt and the completion so far; the
options are a separate value model or a second adapter on the model the learner already holds.
  - A separate model (the classic RLHF setup, e.g. OpenRLHF's critic) costs a second copy of the base
    weights, its optimiser state if trained in full, and its own engine: for a 7B bf16 base ~14 GiB
    more before any activation.
  - A second LoRA adapter (PEFT multi-adapter: "default" for the policy, "critic" here) plus a
    Linear(hidden, 1) head shares the frozen base. The extra memory is one more adapter and its Adam
    state (rank 16 on every projection of a 7-8B model: ~40 M parameters, ~0.6 GiB with fp32 Adam)
    and H + 1 head parameters; the extra compute is one forward/backward of the base per micro-batch
    with the critic adapter active. Policy and critic share no trainable weights, so the value loss
    cannot disturb the policy's features (the problem of a value head on the policy's own adapter,
    Andrychowicz et al. 2021, "What matters in on-policy RL": separate networks train better).
Both adapters and the head are trained by the one DeepSpeed optimiser (the critic in its own param
group, with `algo.value.lr`), on L = L_policy + value.coef * L_value (Schulman et al. 2017, eq. 9),
one backward per micro-batch; they are all in DeepSpeed's checkpoint, so resume restores the critic.
The head starts at zero: the first values are 0 and the first advantages Monte-Carlo returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

POLICY_ADAPTER = "default"  # PEFT's name for the adapter get_peft_model creates: the one pushed to generators
CRITIC_ADAPTER = "critic"


class ValueHead(nn.Module):
    """Linear(hidden, 1) on the critic's last hidden state; zero-initialised."""

    def __init__(self, hidden_size: int, dtype: torch.dtype):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1, dtype=dtype)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1).float()  # [..., H] -> [...]


def add_critic_adapter(peft_model: nn.Module, lora_config) -> None:
    """Adds the critic's LoRA adapter (same settings as the policy's) and makes it trainable."""
    peft_model.add_adapter(CRITIC_ADAPTER, lora_config)
    _keep_adapters_trainable(peft_model)


def is_critic_parameter(name: str) -> bool:
    """Whether a trainable parameter (named as in Backbone.named_parameters) belongs to the critic."""
    return f".{CRITIC_ADAPTER}." in name or name.startswith("value_head.")


def _keep_adapters_trainable(peft_model: nn.Module) -> None:
    # PEFT's set_adapter/add_adapter freeze every inactive adapter; the optimiser holds both and the
    # set of parameters that require grad must not change under DeepSpeed (its hooks and checkpoints
    # follow it). Which adapter a forward uses is the active adapter alone.
    for name, param in peft_model.named_parameters():
        if ".lora_" in name:
            param.requires_grad_(True)


@contextlib.contextmanager
def critic_adapter(peft_model: nn.Module) -> Iterator[None]:
    """Forwards inside use the critic adapter; the policy adapter is active again afterwards."""
    peft_model.set_adapter(CRITIC_ADAPTER)
    _keep_adapters_trainable(peft_model)
    try:
        yield
    finally:
        peft_model.set_adapter(POLICY_ADAPTER)
        _keep_adapters_trainable(peft_model)
