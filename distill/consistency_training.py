"""Consistency training without a teacher — CT/iCT, ECT, a 2-step bootstrap — and the variance-reduced target.

Everything works on the teacher's own discrete VP timesteps t = 0..T-1 (ᾱ_t from its scheduler config), never on a
continuous EDM time: the noise level of timestep t is σ(t) = √((1-ᾱ_t)/ᾱ_t), the EDM σ of the VE variable x/√ᾱ_t.
A continuous σ (a lognormal draw, ECT's r) is snapped to the discrete timestep with the nearest log σ.

The target of a pair (t, s), s < t, is the online network with gradients stopped (no EMA target, as in improved CT;
the distiller's EMA copy is kept only as the weights it saves) at s, on x_s = one DDIM step from x_t to s with an
x₀ estimate x̂₀:
- single sample (Song et al. 2023 CT): x̂₀ = the x₀ that made x_t, so x_s = √ᾱ_s·x₀ + √(1-ᾱ_s)·ε with the SAME ε;
- variance-reduced (Stable Consistency Tuning / stable target fields): x̂₀ = Σ_j w_j x₀_j over the batch's x₀ of the
  same label, w ∝ N(x_t; √ᾱ_t x₀_j, (1-ᾱ_t) I) (softmax of log-likelihoods) — a Monte-Carlo estimate of the ideal
  denoiser E[x₀ | x_t] in place of one sample of it.
s = -1 means "clean": the target is x̂₀ itself (ECT's r = 0, the denoising loss it starts from).

Methods (``--method``): ``ct`` — iCT: pairs of adjacent points of a Karras (ρ = 7) grid of N(k)+1 timesteps, N(k)
doubling from 10 to 1280 over training (capped by the T timesteps), pair drawn with iCT's discretised lognormal
(P_mean = -1.1, P_std = 2.0) weights, loss weight λ = 1/(σ_t - σ_s), pseudo-Huber with c = 0.00054·√d per sample.
``ect`` — Geng et al. 2024: σ_t lognormal, σ_r = σ_t·(1 - (1 + 8·sigmoid(-σ_t))/q^(stage+1)) with the stage rising
every `steps/ect_stages` updates (dt shrinks by q each stage; stage 0 is mostly denoising), weight
(σ_t² + σ_d²)/(σ_t σ_d)², same pseudo-Huber. ``bootstrap`` — the student's own output two timesteps earlier
(s = t - 2, t uniform), λ = 1/(σ_t - σ_s); its gradient-norm clip at 1.0 is the distiller's, shared by every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

METHODS = ("cd", "ct", "ect", "bootstrap")
P_MEAN, P_STD = -1.1, 2.0


def sigmas(acp: torch.Tensor) -> torch.Tensor:
    """σ(t) = √((1-ᾱ_t)/ᾱ_t) of every discrete timestep (increasing in t)."""
    acp = acp.to(torch.float64)
    return ((1 - acp) / acp).sqrt()


def nearest_timestep(sig: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The discrete timestep whose log σ is nearest to each continuous σ (clamped to the schedule's range)."""
    log_grid, log_sigma = sig.log(), sigma.to(torch.float64).clamp(min=float(sig[0]), max=float(sig[-1])).log()
    idx = torch.searchsorted(log_grid, log_sigma).clamp(1, len(sig) - 1)
    lower_closer = (log_sigma - log_grid[idx - 1]) < (log_grid[idx] - log_sigma)
    return torch.where(lower_closer, idx - 1, idx)


def ict_num_steps(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's N(k) = min(s0·2^⌊k/K'⌋, s1) + 1 with K' = ⌊K / (log2⌊s1/s0⌋ + 1)⌋."""
    k_prime = max(1, math.floor(total / (math.log2(s1 // s0) + 1)))
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def karras_timesteps(sig: torch.Tensor, n: int, rho: float = 7.0) -> torch.Tensor:
    """`n` points of the Karras grid between σ(0) and σ(T-1), snapped to discrete timesteps (increasing, unique)."""
    lo, hi = float(sig[0]) ** (1 / rho), float(sig[-1]) ** (1 / rho)
    grid = (lo + torch.linspace(0, 1, n, dtype=torch.float64) * (hi - lo)) ** rho
    return torch.unique(nearest_timestep(sig, grid))


def lognormal_pair_probs(sig_grid: torch.Tensor, p_mean: float = P_MEAN, p_std: float = P_STD) -> torch.Tensor:
    """iCT's p(σ_i) ∝ erf((log σ_{i+1} - P_mean)/(√2 P_std)) - erf((log σ_i - P_mean)/(√2 P_std)) per adjacent pair."""
    cdf = torch.erf((sig_grid.log() - p_mean) / (math.sqrt(2) * p_std))
    p = (cdf[1:] - cdf[:-1]).clamp(min=0)
    return p / p.sum()


def ect_sigma_r(sigma_t: torch.Tensor, stage: int, q: float = 4.0, k: float = 8.0, b: float = 1.0) -> torch.Tensor:
    """ECT's mapping r = t·(1 - (1 + k·sigmoid(-b t)) / q^(stage+1)), clamped at 0: dt shrinks by q per stage."""
    ratio = 1 - (1 + k * torch.sigmoid(-b * sigma_t)) / q ** (stage + 1)
    return (sigma_t * ratio).clamp(min=0)


def posterior_x0(x_t: torch.Tensor, a_t: torch.Tensor, x0: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Variance-reduced x̂₀_i = Σ_j softmax_j(log N(x_t^i; √ᾱ_i x₀_j, (1-ᾱ_i)I)) x₀_j over the batch (same label only).

    `a_t` is ᾱ per row of x_t; x0 holds the batch's clean samples (x_t^i was made from x0[i], so row i always has a
    candidate). With labels, only x₀_j of x_t^i's label count: the conditional ideal denoiser E[x₀ | x_t, y].
    """
    flat_t, flat_0 = x_t.flatten(1).double(), x0.flatten(1).double()
    a = a_t.reshape(-1, 1).double()
    d2 = ((flat_t[:, None, :] - a.sqrt()[:, :, None] * flat_0[None, :, :]) ** 2).sum(-1)  # (rows, candidates)
    logits = -d2 / (2 * (1 - a))
    if labels is not None:
        logits = logits.masked_fill(labels[:, None] != labels[None, :], float("-inf"))
    weights = torch.softmax(logits, dim=1)
    return (weights @ flat_0).to(x0.dtype).reshape(x0.shape)


def ddim_from_x0(x_t: torch.Tensor, x0_hat: torch.Tensor, a_t: torch.Tensor, a_s: torch.Tensor) -> torch.Tensor:
    """One DDIM (η = 0) step t → s given x̂₀: ε̂ = (x_t - √ᾱ_t x̂₀)/√(1-ᾱ_t), x_s = √ᾱ_s x̂₀ + √(1-ᾱ_s) ε̂."""
    eps = (x_t - a_t.sqrt() * x0_hat) / (1 - a_t).sqrt()
    return a_s.sqrt() * x0_hat + (1 - a_s).sqrt() * eps


def pseudo_huber(prediction: torch.Tensor, target: torch.Tensor, c: float | None = None) -> torch.Tensor:
    """Per-sample √(‖Δ‖² + c²) - c over all dimensions (iCT), with c = 0.00054·√d by default."""
    diff = (prediction.float() - target.float()).flatten(1)
    c = 0.00054 * math.sqrt(diff.shape[1]) if c is None else c
    return torch.sqrt(diff.pow(2).sum(1) + c**2) - c


@dataclass
class TeacherFreeMethod:
    """One of ct | ect | bootstrap: draws (t, s, weight) and builds the stop-gradient target; no teacher calls."""

    name: str
    variance_reduction: bool = False
    ect_q: float = 4.0
    ect_stages: int = 4
    sigma_data: float = 0.5

    def __post_init__(self) -> None:
        if self.name not in METHODS or self.name == "cd":
            raise ValueError(f"unknown teacher-free method {self.name!r}; valid: ct, ect, bootstrap")

    # ---- which pair (t, s) ---------------------------------------------------------------------------------
    def pairs(self, acp: torch.Tensor, batch: int, step: int, total: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """t, s (s = -1: clean) and the loss weight of each row, drawn from `gen`."""
        sig = sigmas(acp)
        if self.name == "ct":
            grid = karras_timesteps(sig, ict_num_steps(step, total))
            i = torch.multinomial(lognormal_pair_probs(sig[grid]), batch, replacement=True, generator=gen)
            t, s = grid[i + 1], grid[i]
            weight = 1 / (sig[t] - sig[s])
        elif self.name == "ect":
            sigma_t = (torch.randn(batch, generator=gen, dtype=torch.float64) * P_STD + P_MEAN).exp()
            t = nearest_timestep(sig, sigma_t).clamp(min=1)
            sigma_r = ect_sigma_r(sig[t], self.ect_stage(step, total), self.ect_q)
            s = torch.minimum(nearest_timestep(sig, sigma_r), t - 1)
            s = torch.where(sigma_r < sig[0], torch.full_like(s, -1), s)
            weight = (sig[t] ** 2 + self.sigma_data**2) / (sig[t] * self.sigma_data) ** 2
        else:  # bootstrap: two discrete timesteps earlier
            t = torch.randint(2, len(acp), (batch,), generator=gen)
            s = t - 2
            weight = 1 / (sig[t] - sig[s])
        return {"t": t.long(), "s": s.long(), "weight": weight.float()}

    def ect_stage(self, step: int, total: int) -> int:
        """ECT's stage: rises every total/ect_stages updates (dt shrinks by q each time)."""
        return min(step * self.ect_stages // max(total, 1), self.ect_stages - 1)

    # ---- the target ------------------------------------------------------------------------------------------
    def x0_estimate(self, b: dict[str, Any], x_t: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        if not self.variance_reduction:
            return b["x0"]
        return posterior_x0(x_t, a_t, b["x0"], b.get("labels"))

    @torch.no_grad()
    def target(self, f, acp: torch.Tensor, b: dict[str, Any]) -> torch.Tensor:
        """Stop-grad target: f(x_s, s) on the DDIM step from x_t with x̂₀ (x̂₀ itself where s = -1).

        `f(x, s)` is the online consistency function (the student, gradients off by the caller's no_grad)."""
        t, s = b["t"], b["s"]
        acp = acp.to(b["x0"].dtype)
        a_t = acp[t].reshape(-1, *([1] * (b["x0"].ndim - 1)))
        x_t = a_t.sqrt() * b["x0"] + (1 - a_t).sqrt() * b["noise"]
        x0_hat = self.x0_estimate(b, x_t, a_t)
        s_safe = s.clamp(min=0)
        a_s = acp[s_safe].reshape_as(a_t)
        x_s = ddim_from_x0(x_t, x0_hat, a_t, a_s)
        clean = (s < 0).reshape_as(a_t)
        if bool(clean.all()):
            return x0_hat
        return torch.where(clean, x0_hat, f(x_s, s_safe))

    def loss(self, prediction: torch.Tensor, target: torch.Tensor, b: dict[str, Any]) -> torch.Tensor:
        """Weighted mean of the per-sample pseudo-Huber loss."""
        per_sample = pseudo_huber(prediction, target)
        weight = b.get("weight")
        return (per_sample if weight is None else weight.to(per_sample.device) * per_sample).mean()


def make_method(config: Any) -> TeacherFreeMethod | None:
    """The teacher-free method a DistillConfig names (None for 'cd', the teacher-distillation default)."""
    name = getattr(config, "method", "cd")
    if name == "cd":
        return None
    extra = getattr(config, "extra", {}) or {}
    return TeacherFreeMethod(name, variance_reduction=bool(getattr(config, "variance_reduction", False)),
                             ect_q=float(extra.get("ect_q", 4.0)), ect_stages=int(extra.get("ect_stages", 4)))
