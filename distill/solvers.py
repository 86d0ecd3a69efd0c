"""Teacher ODE solvers for consistency distillation: one step of the probability-flow ODE from t to s < t.

All work on the teacher's own ᾱ_t (from its diffusers scheduler config) in the variance-exploding view
x̃ = x/√ᾱ, σ = √((1-ᾱ)/ᾱ), where the PF-ODE is dx̃/dσ = ε(x, t):

- ``ddim``  — DDIM (η = 0): x_s = √ᾱ_s·x̂₀ + √(1-ᾱ_s)·ε. Algebraically the same step as first-order Euler in (σ, x̃).
- ``euler`` — first-order Euler in (σ, x̃), written as such (kept separate because it is Heun's predictor).
- ``heun``  — second order: Euler predictor, then the average of the slopes at both ends (2 teacher calls).

`substep_solver` chains one of them over evenly spaced sub-steps of a hop (`cdx distill --solver-substeps`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
SOLVERS = ("ddim", "euler", "heun")


def _gather(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.to(like.device)[t].to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def ddim_step(eps_fn: EpsFn, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    a_t, a_s = _gather(acp, t, x_t), _gather(acp, s, x_t)
    eps = eps_fn(x_t, t)
    x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps


def _sigma(a: torch.Tensor) -> torch.Tensor:
    return ((1 - a) / a).sqrt()


def euler_step(eps_fn: EpsFn, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    a_t, a_s = _gather(acp, t, x_t), _gather(acp, s, x_t)
    x_ve = x_t / a_t.sqrt()
    x_ve = x_ve + (_sigma(a_s) - _sigma(a_t)) * eps_fn(x_t, t)
    return x_ve * a_s.sqrt()


def heun_step(eps_fn: EpsFn, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
    a_t, a_s = _gather(acp, t, x_t), _gather(acp, s, x_t)
    d_sigma = _sigma(a_s) - _sigma(a_t)
    eps_t = eps_fn(x_t, t)
    x_ve_pred = x_t / a_t.sqrt() + d_sigma * eps_t
    eps_s = eps_fn(x_ve_pred * a_s.sqrt(), s)
    x_ve = x_t / a_t.sqrt() + d_sigma * 0.5 * (eps_t + eps_s)
    return x_ve * a_s.sqrt()


def solver_step(name: str) -> Callable[..., torch.Tensor]:
    """The step function called `name` (ddim, euler or heun)."""
    steps = {"ddim": ddim_step, "euler": euler_step, "heun": heun_step}
    if name not in steps:
        raise ValueError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    return steps[name]


def substep_solver(step: Callable[..., torch.Tensor], substeps: int) -> Callable[..., torch.Tensor]:
    """`step` applied `substeps` times from t to s on integer timesteps evenly spaced between them (per sample), so a
    coarse distillation grid (few hops of k timesteps) keeps an accurate teacher ODE target: the hop's solution is
    that of a `substeps`× finer solver. 1 = `step` itself."""
    if substeps == 1:
        return step

    def solve(eps_fn: EpsFn, x_t: torch.Tensor, t: torch.Tensor, s: torch.Tensor, acp: torch.Tensor) -> torch.Tensor:
        x, span = x_t, t - s
        for j in range(substeps):
            start, end = t - span * j // substeps, t - span * (j + 1) // substeps
            x = step(eps_fn, x, start, end, acp)
        return x

    return solve


def skipping_timesteps(num_train_timesteps: int, num_solver_steps: int) -> torch.Tensor:
    """LCM's grid t_n = (n+1)·k - 1, n = 0..N-1, with skipping step k = T/N (e.g. 19, 39, …, 999)."""
    step = num_train_timesteps // num_solver_steps
    return torch.arange(1, num_solver_steps + 1, dtype=torch.int64) * step - 1
