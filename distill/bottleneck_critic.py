"""DMD2's GAN branch (Yin et al. 2024, "Improved Distribution Matching Distillation"): a small classifier head on the
fake denoiser's bottleneck (its UNet's mid-block output) tells noised real latents from noised one-step outputs.

The fake denoiser is a diffusion UNet already trained on the student's outputs at every noise level, so its
bottleneck is a strong, noise-aware feature extractor; the head adds a few convolutions on it. Inputs are noised
(x_t at t drawn in DMD's range) on both sides, which keeps the two distributions overlapping and the critic from
winning outright — the failure of a critic on clean latents (critic.py) in this repository's runs. The target is the
data, not the teacher: the term can move the student past its teacher, where the regression and DMD terms cannot.

With `heads="mid+up"` a second head sits on the last up block's output (the UNet's finest feature map, at the latent's
resolution): at small latents the bottleneck is a few locations wide (4×4 at 32 px), too coarse to see texture; the
logits are then both heads' patches, flattened and concatenated, each patch weighing the same in the loss.

`FakeScoreWithCritic` wraps the fake UNet and the head(s) in one module, so Accelerate prepares, checkpoints and (across
processes) synchronises both as one model; called without `logits=True` it is exactly the UNet.
"""

from __future__ import annotations

from collections.abc import Callable
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


GAN_HEADS = ("mid", "mid+up")  # `--dmd-gan-heads` (checked by DistillConfig.validate)


class FakeScoreWithCritic(nn.Module):
    """The fake denoiser's UNet and a `BottleneckHead` on its mid block (and optionally `up_head` on its last up
    block): `forward(x_t, t, **kw)` is the UNet's output; with `logits=True` it returns (that output, the head's logits
    on the same pass: (B, 1, h, w) with the mid head alone, (B, patches of both heads) with `up_head`)."""

    def __init__(self, unet: nn.Module, head: nn.Module, up_head: nn.Module | None = None):
        super().__init__()
        if getattr(unet, "mid_block", None) is None:
            raise ValueError("the DMD GAN head needs a UNet with a mid block (its bottleneck features)")
        if up_head is not None and not getattr(unet, "up_blocks", None):
            raise ValueError("the DMD GAN up head needs a UNet with up blocks (its finest feature map)")
        self.unet, self.head, self.up_head = unet, head, up_head
        self._features: dict[str, torch.Tensor] = {}
        unet.mid_block.register_forward_hook(self._keeper("mid"))
        if up_head is not None:
            unet.up_blocks[-1].register_forward_hook(self._keeper("up"))

    def _keeper(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        """A forward hook that keeps its module's output under `name` for the next `forward`."""
        def keep(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._features[name] = output[0] if isinstance(output, tuple) else output
        return keep

    @property
    def config(self):
        return self.unet.config

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, logits: bool = False, **kwargs: Any):
        out = self.unet(x_t, t, **kwargs)
        features, self._features = self._features, {}  # hold no graph between calls
        if not logits:
            return out
        mid = self.head(features["mid"])
        if self.up_head is None:
            return out, mid
        return out, torch.cat([mid.flatten(1), self.up_head(features["up"]).flatten(1)], dim=1)


def make_fake_score_with_critic(unet: nn.Module, seed: int, up_head: bool = False) -> FakeScoreWithCritic:
    """The wrapper with a head sized to the UNet's bottleneck (and, with `up_head`, one sized to its last up block,
    `--dmd-gan-heads mid+up`), initialised from its own seed (no global RNG use)."""
    widths, groups = unet.config.block_out_channels, int(unet.config.norm_num_groups)
    device = next(unet.parameters()).device
    head = built_on_own_rng(BottleneckHead, int(widths[-1]), groups, seed=seed).to(device)
    up = built_on_own_rng(BottleneckHead, int(widths[0]), groups, seed=seed + 1).to(device) if up_head else None
    return FakeScoreWithCritic(unet, head, up)


def critic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The head's non-saturating GAN loss: softplus(−D(real)) + softplus(D(fake)) (means)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def generator_gan_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The student's non-saturating GAN loss on its outputs' logits: softplus(−D(fake)) (mean)."""
    return F.softplus(-fake_logits.float()).mean()
