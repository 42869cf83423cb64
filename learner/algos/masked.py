"""Statistics over the masked tokens of a padded [B, T] batch."""

from __future__ import annotations

import torch
from torch import Tensor


def masked(values: Tensor, mask: Tensor) -> Tensor:
    """values * mask, and exactly 0 where mask == 0 even if values holds inf or NaN there.  # [B, T]

    A product alone gives 0 * NaN = NaN: padded positions may hold any number (the fused kernel
    ignores them the same way, fused/policy_loss_torch.py).
    """
    return torch.where(mask != 0, values * mask, 0.0)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over tokens where mask == 1; 0 when nothing is masked in.  # []"""
    return masked(values, mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, eps: float) -> Tensor:
    """(values - mean) / (std + eps) over the masked tokens, population std; 0 outside the mask.  # [B, T]"""
    mean = masked_mean(values, mask)  # []
    std = masked_mean((values - mean) ** 2, mask).sqrt()  # []
    return masked((values - mean) / (std + eps), mask)  # [B, T]
