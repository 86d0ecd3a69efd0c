"""Consistency losses: L2 and pseudo-Huber (iCT, Song & Dhariwal 2023; LCM uses c = 0.001)."""

from __future__ import annotations

import torch

LOSSES = ("l2", "huber")


def consistency_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str = "huber", huber_c: float = 0.001) -> torch.Tensor:
    """Mean over the batch of L2 or pseudo-Huber √(‖·‖² + c²) - c (elementwise, like diffusers' LCM script)."""
    diff = prediction.float() - target.float()
    if kind == "l2":
        return diff.pow(2).mean()
    if kind == "huber":
        return (torch.sqrt(diff.pow(2) + huber_c**2) - huber_c).mean()
    raise ValueError(f"unknown loss {kind!r}; valid: {', '.join(LOSSES)}")
