"""Consistency parameterisation: f(x, t) = c_skip(t) · x + c_out(t) · x̂₀(x, t).

x̂₀ is the clean-latent estimate the UNet output implies under the scheduler's `prediction_type`.
Two boundary-condition forms are selectable (both satisfy c_skip(t₀) ≈ 1, c_out(t₀) ≈ 0):

- ``lcm``: LCMScheduler's discrete form, with the timestep scaled by ``timestep_scaling`` (LCM uses 10)::

      c_skip = σ_d² / ((s·t)² + σ_d²),  c_out = s·t / sqrt((s·t)² + σ_d²)

- ``edm``: Song et al. (2023)'s form on the VP noise level σ(t) = sqrt((1-ᾱ_t)/ᾱ_t), normalised so that
  c_skip² + c_out² = 1 at every t (the raw EDM c_out = (σ-σ_min)·σ_d/sqrt(σ²+σ_d²) scales a network output
  F of unit variance; here the output is already x̂₀, whose scale is that of the data — the bug diffusers #8547
  describes for LCM's c_out is this unit mismatch)::

      c_skip = σ_d² / ((σ-σ_min)² + σ_d²),  c_out = (σ-σ_min) / sqrt((σ-σ_min)² + σ_d²)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

Parameterization = Literal["lcm", "edm"]


@dataclass(frozen=True)
class StepConstants:
    """Everything a sampler needs for one consistency step at `timestep`."""

    timestep: int
    alpha_cumprod: float
    c_skip: float
    c_out: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lcm_scheduler_from_config(config: dict[str, Any]):
    """An LCMScheduler on the teacher's/student's own beta schedule (any DDPM-family config)."""
    from diffusers import LCMScheduler

    return LCMScheduler.from_config(config)


def alphas_cumprod(config: dict[str, Any]) -> torch.Tensor:
    """ᾱ_t for t = 0..T-1, computed by diffusers from the scheduler config (never re-typed)."""
    return lcm_scheduler_from_config(config).alphas_cumprod.to(torch.float64)


def boundary_scalings(
    timestep: int,
    config: dict[str, Any],
    parameterization: Parameterization = "lcm",
    sigma_data: float = 0.5,
    timestep_scaling: float | None = None,
) -> tuple[float, float]:
    """(c_skip, c_out) at a discrete timestep, for the chosen boundary-condition form."""
    if parameterization == "lcm":
        scale = float(timestep_scaling if timestep_scaling is not None else config.get("timestep_scaling", 10.0))
        scaled = timestep * scale
        c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
        c_out = scaled / math.sqrt(scaled**2 + sigma_data**2)
        return c_skip, c_out
    if parameterization == "edm":
        acp = alphas_cumprod(config)
        sigma = math.sqrt((1 - float(acp[timestep])) / float(acp[timestep]))
        sigma_min = math.sqrt((1 - float(acp[0])) / float(acp[0]))
        delta = max(sigma - sigma_min, 0.0)
        c_skip = sigma_data**2 / (delta**2 + sigma_data**2)
        c_out = delta / math.sqrt(delta**2 + sigma_data**2)
        return c_skip, c_out
    raise ValueError(f"unknown parameterization {parameterization!r} (expected 'lcm' or 'edm')")


def check_sampling_steps(config: dict[str, Any], num_steps: int) -> None:
    """One-line InputError unless 1 <= `num_steps` <= the scheduler's `original_inference_steps` (the distillation
    grid N: LCMScheduler picks its timesteps from that grid, so more steps than N do not exist)."""
    from cdx.errors import InputError

    grid = int(config.get("original_inference_steps", 50))
    if not 1 <= int(num_steps) <= grid:
        raise InputError(f"--steps {num_steps}: a consistency student samples with 1..{grid} steps "
                         f"(its scheduler's original_inference_steps = {grid}, the distillation grid)")


def sampling_timesteps(config: dict[str, Any], num_steps: int) -> list[int]:
    """The timesteps LCMScheduler visits for `num_steps` consistency steps."""
    check_sampling_steps(config, num_steps)
    scheduler = lcm_scheduler_from_config(config)
    scheduler.set_timesteps(num_steps)
    return [int(t) for t in scheduler.timesteps]


def step_constants(
    config: dict[str, Any],
    num_steps: int = 1,
    parameterization: Parameterization = "lcm",
    sigma_data: float = 0.5,
) -> list[StepConstants]:
    """Constants of every step of a `num_steps` consistency sampler, in order."""
    acp = alphas_cumprod(config)
    steps = []
    for t in sampling_timesteps(config, num_steps):
        c_skip, c_out = boundary_scalings(t, config, parameterization, sigma_data)
        steps.append(StepConstants(timestep=t, alpha_cumprod=float(acp[t]), c_skip=c_skip, c_out=c_out))
    return steps


def predicted_x0(model_output: torch.Tensor, sample: torch.Tensor, alpha_cumprod: torch.Tensor | float,
                 prediction_type: str) -> torch.Tensor:
    """x̂₀ implied by the UNet output under the scheduler's prediction type."""
    alpha = torch.as_tensor(alpha_cumprod, dtype=sample.dtype)
    sqrt_a, sqrt_1ma = alpha.sqrt(), (1 - alpha).sqrt()
    if prediction_type == "epsilon":
        return (sample - sqrt_1ma * model_output) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * sample - sqrt_1ma * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """LCM's sinusoidal embedding of the guidance scale w (the UNet's `timestep_cond`).

    Same formula as diffusers' `LatentConsistencyModelPipeline.get_guidance_scale_embedding`, written with
    export-friendly ops so it can live inside an exported graph.
    """
    w = w.reshape(-1).to(torch.float32) * 1000.0
    half = embedding_dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freq[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
