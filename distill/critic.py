"""The adversarial term shared by `cdx distill` (a critic on clean latents: the one-step student's outputs vs the real
data's, DMD2 / LADD style) and `cdx distill-decoder` (a critic on decoded images): a small patch critic, its hinge
update and the generator's −critic(fake) term, written once.

The critic and its optimizer go through `accelerator.prepare` after the trainer's own model and optimizer, so
Accelerate's `save_state` / `load_state` checkpoint and resume them with everything else (see checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from cdx.distill.own_rng import built_on_own_rng


class PatchDiscriminator(nn.Module):
    """A small fully convolutional critic, one score per patch. With `num_classes` (class labels) or `embedding_dim`
    (pooled prompt embeddings) it adds a projection term ⟨embed(c), h⟩ per patch (Miyato & Koyama 2018), so the critic
    judges whether a sample fits its condition, not only whether it looks real."""

    def __init__(self, channels: int, width: int = 32, num_classes: int = 0, embedding_dim: int = 0, depth: int = 2):
        """`depth` stride-2 convolutions (each after the first doubles the width): the score map is the input's side
        / 2**depth, each score seeing a patch of 5 · 2**depth − 2 pixels (18 at depth 2, 38 at 3)."""
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        for level in range(1, depth):
            inner, outer = width * 2 ** (level - 1), width * 2 ** level
            layers += [nn.Conv2d(inner, outer, 4, 2, 1), nn.GroupNorm(8, outer), nn.LeakyReLU(0.2)]
        features = width * 2 ** (depth - 1)
        self.net = nn.Sequential(*layers, nn.Conv2d(features, 1, 3, 1, 1))
        self.project: nn.Module | None = None
        if num_classes:
            self.project = nn.Embedding(num_classes, features)
        elif embedding_dim:
            self.project = nn.Linear(embedding_dim, features, bias=False)
        if self.project is not None:  # starts unconditional: N(0, 1) rows would put scores of ±√width on random labels
            nn.init.zeros_(self.project.weight)

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        features = self.net[:-1](x)
        score = self.net[-1](features)
        if self.project is not None and condition is not None:
            score = score + (features * self.project(condition)[:, :, None, None]).sum(1, keepdim=True)
        return score


def seeded_critic(seed: int, *args, **kwargs) -> PatchDiscriminator:
    """A critic initialised from its own seed, leaving the global RNG as it was (runs without the term, and the
    student's initialisation, keep their exact draws)."""
    return built_on_own_rng(PatchDiscriminator, *args, seed=seed, **kwargs)


def hinge_critic_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss (Lim & Ye 2017): 0 once real scores ≥ 1 and fake scores ≤ −1."""
    return F.relu(1 - real.float()).mean() + F.relu(1 + fake.float()).mean()


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """`module`'s parameters take no gradient in the graphs built inside (the inputs still do), so a generator's
    term can pass through a critic without leaving gradients for the critic's own step; flags restored after."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags, strict=True):
            p.requires_grad_(flag)


class AdversarialCritic:
    """A critic trained alongside a generator: `generator_loss` (−critic(fake), the critic frozen so its gradients reach
    the generator only) and `update` (one hinge step on real vs detached fake)."""

    def __init__(self, accelerator, critic: nn.Module, lr: float, betas: tuple[float, float] = (0.5, 0.9),
                 r1: float = 0.0):
        self.accelerator, self.critic, self.r1 = accelerator, critic, r1
        optimizer = torch.optim.Adam(critic.parameters(), lr=lr, betas=betas)
        self.wrapped, self.optimizer = accelerator.prepare(critic, optimizer)  # DDP-wrapped for the critic's own step

    def generator_loss(self, fake: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        with frozen(self.critic):
            return -self.critic(fake, condition).float().mean()

    def update(self, real: torch.Tensor, fake: torch.Tensor, real_condition: torch.Tensor | None = None,
               fake_condition: torch.Tensor | None = None) -> float:
        """One hinge step, plus r1/2 · E‖∇ critic(real)‖² when `r1` > 0 (Mescheder et al. 2018: a critic kept smooth
        on the data cannot win by a sharp boundary, so its gradient to the generator stays informative). The
        optimizer steps at sync points only (Accelerate skips it while accumulating)."""
        acc = self.accelerator
        both = None if real_condition is None else torch.cat([real_condition, fake_condition])
        real = real.detach().requires_grad_(self.r1 > 0)
        with acc.autocast():
            scores = self.wrapped(torch.cat([real, fake.detach()]), both).float()
            loss = hinge_critic_loss(scores[: len(real)], scores[len(real):])
            if self.r1 > 0:
                (grad,) = torch.autograd.grad(scores[: len(real)].sum(), real, create_graph=True)
                loss = loss + self.r1 / 2 * grad.float().pow(2).flatten(1).sum(1).mean()
        acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())
