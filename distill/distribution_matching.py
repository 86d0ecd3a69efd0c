"""Distribution matching (DMD, Yin et al. 2024; DMD2, Yin et al. 2024): a term that pulls the distribution of the
one-step student's outputs toward the teacher's, not each output toward one ODE endpoint.

The gradient of KL(p_student ‖ p_teacher) at a one-step output x is estimated at a random noise level t as the
difference of two denoisers of x_t = √ᾱ_t·x + √(1-ᾱ_t)·ε: a *fake* one, trained here on the student's own outputs
(so it tracks p_student), minus the frozen teacher's guided one (p_teacher). Both are x̂₀ predictions; DMD normalises
their difference by the mean |x - x̂₀_teacher| of each sample, and the term is ½‖x - sg(x - grad)‖², whose gradient
with respect to x is exactly `grad` / numel. The fake denoiser starts as the teacher's conditional denoiser, with the
student's guidance embedding (zero-initialised) so it can learn each CFG scale's outputs apart; unguided (g = 1) the
term is 0 (to rounding) until the fake has learnt something the teacher does not do, guided it starts as the pull
from the conditional toward the guided teacher.

The fake denoiser and its optimizer go through `accelerator.prepare`, so Accelerate's `save_state` / `load_state`
checkpoint and resume them with the student (checkpoint.py). Every draw comes from the trainer's CPU generator, which
is checkpointed too: a resumed run is bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cdx.distill.bottleneck_critic import FakeScoreWithCritic, critic_loss, generator_gan_loss
from cdx.distill.consistency import predicted_x0
from cdx.distill.critic import frozen

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> x̂₀


def noised(x0: torch.Tensor, t: torch.Tensor, acp: torch.Tensor, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t = √ᾱ_t·x₀ + √(1-ᾱ_t)·ε with ε drawn from `rng` (on the CPU, then moved), and that ε."""
    noise = torch.randn(x0.shape, generator=rng).to(x0.device, x0.dtype)
    a = acp[t].reshape(-1, 1, 1, 1).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, noise


def distribution_matching_direction(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """DMD's per-sample-normalised (fake - real) x̂₀ difference: the KL gradient at x, up to a positive scale."""
    scale = (x - real_x0).abs().mean(dim=tuple(range(1, x.ndim)), keepdim=True).clamp_min(1e-6)
    return torch.nan_to_num((fake_x0 - real_x0) / scale)


def distribution_matching_loss(x: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """½‖x - sg(x - direction)‖² (mean): its gradient in x is `direction` / numel, whatever x's graph."""
    return 0.5 * F.mse_loss(x.float(), (x - direction).detach().float())


class DistributionMatching:
    """The fake denoiser trained alongside the student: `generator_loss` (the DMD term on one-step outputs, no
    gradient into either denoiser) and `update` (one ε-prediction step of the fake denoiser on detached outputs)."""

    def __init__(self, accelerator, fake: nn.Module, lr: float, acp: torch.Tensor, t_range: tuple[float, float] = (0.02, 0.98),
                 critic_weight: float = 0.0):
        self.accelerator, self.fake, self.acp = accelerator, fake.train().requires_grad_(True), acp
        self.critic_weight = critic_weight if isinstance(fake, FakeScoreWithCritic) else 0.0  # DMD2's GAN branch
        self.last_critic_loss: float | None = None  # the head's GAN loss in the last update (GAN branch on)
        self.t_low = int(t_range[0] * len(acp))
        self.t_high = max(self.t_low + 1, int(t_range[1] * len(acp)))
        optimizer = torch.optim.AdamW(fake.parameters(), lr=lr, weight_decay=0.0)
        self.wrapped, self.optimizer = accelerator.prepare(fake, optimizer)

    @staticmethod
    def _kwargs(cond: dict, w_emb: torch.Tensor | None) -> dict:
        """The fake denoiser's UNet keyword arguments: the teacher's conditions + the student's guidance embedding."""
        return dict(cond) if w_emb is None else {**cond, "timestep_cond": w_emb}

    def fake_x0(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict, w_emb: torch.Tensor | None) -> torch.Tensor:
        eps = self.fake(x_t, t, **self._kwargs(cond, w_emb)).sample
        return predicted_x0(eps, x_t, self.acp[t].reshape(-1, 1, 1, 1), "epsilon")

    def generator_loss(self, x: torch.Tensor, real_x0: Denoiser, cond: dict, w_emb: torch.Tensor | None,
                       rng: torch.Generator) -> torch.Tensor:
        """The DMD term on the one-step outputs `x` (conditions `cond`, guidance embedding `w_emb`), at noise levels
        drawn uniformly in DMD's [2 %, 98 %] of T; `real_x0` is the teacher's guided denoiser at each sample's g."""
        t = torch.randint(self.t_low, self.t_high, (len(x),), generator=rng).to(x.device)
        with torch.no_grad(), self.accelerator.autocast():
            x_t, _ = noised(x.detach(), t, self.acp, rng)
            real = real_x0(x_t, t).float()
            fake = self.fake_x0(x_t, t, cond, w_emb).float()
        return distribution_matching_loss(x, distribution_matching_direction(x.detach().float(), real, fake))

    def gan_generator_loss(self, x: torch.Tensor, cond: dict, w_emb: torch.Tensor | None,
                           rng: torch.Generator) -> torch.Tensor:
        """DMD2's GAN term on the one-step outputs `x`: softplus(−D(x_t)) at t in DMD's range, the gradient reaching
        `x` through the fake denoiser and its head, neither of which it changes (their weights are frozen here)."""
        t = torch.randint(self.t_low, self.t_high, (len(x),), generator=rng).to(x.device)
        x_t, _ = noised(x, t, self.acp, rng)
        with frozen(self.fake), self.accelerator.autocast():
            _, logits = self.fake(x_t, t, logits=True, **self._kwargs(cond, w_emb))
        return generator_gan_loss(logits)

    def update(self, x: torch.Tensor, cond: dict, w_emb: torch.Tensor | None, rng: torch.Generator,
               real: torch.Tensor | None = None) -> float:
        """One denoising (ε-MSE) step of the fake denoiser on the detached outputs `x` at t uniform in [0, T); the
        optimizer steps at sync points only (Accelerate skips it while accumulating).

        With the GAN branch on and `real` latents (the data of the same conditions), the same forward pass also
        scores noised `x` against noised `real` at t in DMD's range, and critic_weight × the head's loss joins the
        denoising loss (DMD2 trains the fake denoiser and the head together)."""
        acc = self.accelerator
        t = torch.randint(0, len(self.acp), (len(x),), generator=rng).to(x.device)
        x_t, noise = noised(x.detach(), t, self.acp, rng)
        kwargs = self._kwargs(cond, w_emb)
        if not self.critic_weight or real is None:
            with acc.autocast():
                loss = denoise = F.mse_loss(self.wrapped(x_t, t, **kwargs).sample.float(), noise.float())
        else:
            n = len(x)
            t_gan = torch.randint(self.t_low, self.t_high, (2 * n,), generator=rng).to(x.device)
            pair_t, _ = noised(torch.cat([x.detach(), real.to(x.dtype)]), t_gan, self.acp, rng)
            with acc.autocast():  # one pass: [x_t to denoise | noised outputs | noised real latents]
                out, logits = self.wrapped(torch.cat([x_t, pair_t]), torch.cat([t, t_gan]), logits=True,
                                           **_repeat(kwargs, 3))
                denoise = F.mse_loss(out.sample[:n].float(), noise.float())
                gan = critic_loss(logits[2 * n :], logits[n : 2 * n])
            loss = denoise + self.critic_weight * gan
            self.last_critic_loss = float(gan.detach())
        acc.backward(loss)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(denoise.detach())


def _repeat(kwargs: dict, times: int) -> dict:
    """UNet keyword arguments for a batch stacked `times` over (tensors repeated along the batch, None kept)."""
    return {k: torch.cat([v] * times) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

