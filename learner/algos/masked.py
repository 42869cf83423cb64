"""Statistics over the masked tokens of a padded [B, T] batch."""

from __future__ import annotations

from torch import Tensor


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of `values` over tokens where mask == 1; 0 when nothing is masked in.  # []"""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(values: Tensor, mask: Tensor, eps: float) -> Tensor:
    """(values - mean) / (std + eps) over the masked tokens, population std; 0 outside the mask.  # [B, T]"""
    mean = masked_mean(values, mask)  # []
    std = masked_mean((values - mean) ** 2, mask).sqrt()  # []
    return (values - mean) / (std + eps) * mask  # [B, T]
