"""DMD2's GAN branch (Yin et al. 2024, "Improved Distribution Matching Distillation"): a small classifier head on the
fake denoiser's bottleneck (its UNet's mid-block output) tells noised real latents from noised one-step outputs.

The fake denoiser is a diffusion UNet already trained on the student's outputs at every noise level, so its
bottleneck is a strong, noise-aware feature extractor; the head adds a few convolutions on it. Inputs are noised
(x_t at t drawn in DMD's range) on both sides, which keeps the two distributions overlapping and the critic from
winning outright — the failure of a critic on clean latents (critic.py) in this repository's runs. The target is the
data, not the teacher: the term can move the student past its teacher, where the regression and DMD terms cannot.

`FakeScoreWithCritic` wraps the fake UNet and the head in one module, so Accelerate prepares, checkpoints and (across
processes) synchronises both as one model; called without `logits=True` it is exactly the UNet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cdx.distill.own_rng import built_on_own_rng


class BottleneckHead(nn.Module):
    """conv 3×3 → GroupNorm → SiLU → conv 1×1: one logit per bottleneck location (a patch critic on features)."""

    def __init__(self, channels: int, groups: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(min(groups, channels), channels),
                                 nn.SiLU(), nn.Conv2d(channels, 1, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class FakeScoreWithCritic(nn.Module):
    """The fake denoiser's UNet and a `BottleneckHead` on its mid block: `forward(x_t, t, **kw)` is the UNet's output;
    with `logits=True` it returns (that output, the head's logits on the same pass's bottleneck)."""

    def __init__(self, unet: nn.Module, head: nn.Module):
        super().__init__()
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("the DMD GAN head needs a UNet with a mid block (its bottleneck features)")
        self.unet, self.head = unet, head
        self._features: torch.Tensor | None = None
        unet.mid_block.register_forward_hook(self._keep_features)

    def _keep_features(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self._features = output[0] if isinstance(output, tuple) else output

    @property
    def config(self):
        return self.unet.config

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, logits: bool = False, **kwargs: Any):
        out = self.unet(x_t, t, **kwargs)
        features, self._features = self._features, None  # hold no graph between calls
        return (out, self.head(features)) if logits else out


def make_fake_score_with_critic(unet: nn.Module, seed: int) -> FakeScoreWithCritic:
    """The wrapper with a head sized to the UNet's bottleneck, initialised from its own seed (no global RNG use)."""
    channels = int(unet.config.block_out_channels[-1])
    head = built_on_own_rng(BottleneckHead, channels, int(unet.config.norm_num_groups), seed=seed)
    return FakeScoreWithCritic(unet, head.to(next(unet.parameters()).device))


def critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The head's non-saturating GAN loss: softplus(−D(real)) + softplus(D(fake)) (means)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The student's non-saturating GAN loss on its outputs' logits: softplus(−D(fake)) (mean)."""
    return F.softplus(-fake_logits.float()).mean()
