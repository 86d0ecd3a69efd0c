"""The sampling loops, written once and free of torch: the multistep consistency loop, the teacher's DDIM loop, the
classifier-free guidance combination, and both samplers over runtime runners (as an app runs them).

Pure arithmetic on whatever array type the step function returns (torch tensors or numpy arrays), so the eager
student (`sampling.py`), the exported generator graph (`generator.py`), the app-style loop over a runtime's step
graph and the bench's teacher on ONNX Runtime / ExecuTorch all run this code with the same constants (schedules:
lists of dicts, as the manifest stores them). Importing it loads numpy only, so a bench worker timing ONNX Runtime
or ExecuTorch does not carry torch in its peak memory.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

Array = TypeVar("Array")  # torch.Tensor or np.ndarray
Step = dict[str, Any]
STEP_CONSTANT_INPUTS = ("alpha_cumprod", "c_skip", "c_out")  # the consistency step graph's per-step scalar inputs


def renoise(denoised: Array, noise: Array, alpha_cumprod: float) -> Array:
    """Bring a clean estimate back to the noise level ᾱ of the next step: √ᾱ·x̂₀ + √(1-ᾱ)·ε."""
    return alpha_cumprod**0.5 * denoised + (1 - alpha_cumprod) ** 0.5 * noise


RENOISE_MODES = ("fresh", "ddim")  # how a multi-step sampler re-noises between steps (see consistency_loop)


def implied_noise(latents: Array, denoised: Array, alpha_cumprod: float) -> Array:
    """The noise ε̂ with latents = √ᾱ·x̂₀ + √(1-ᾱ)·ε̂ (DDIM's), for a step's input and its clean estimate."""
    return (latents - alpha_cumprod**0.5 * denoised) / (1 - alpha_cumprod) ** 0.5


def consistency_loop(denoise: Callable[[Array, Step], Array], noise: Array, steps: Sequence[Step],
                     step_noise: Sequence[Array] = (), trace: list[Array] | None = None,
                     renoise_with: str = "fresh") -> Array:
    """Multistep consistency sampling (Song et al. 2023, Alg. 1): denoise, re-noise to the next step's ᾱ, repeat.

    `denoise(latents, step)` is one consistency step (a UNet call, or a runtime running the step graph); `steps` are
    schedule entries (timestep, alpha_cumprod, c_skip, c_out); `step_noise[i - 1]` re-noises before step i. `trace`,
    when given, receives the latents each step sees (the step graph's inputs along the trajectory).
    `renoise_with`: "fresh" (LCMScheduler's: new noise each step) or "ddim" (the deterministic DDIM hop: the noise
    the last step's input implies, TCD's γ = 0 / CTM's deterministic sampler; `step_noise` is not used).
    """
    if renoise_with not in RENOISE_MODES:
        raise ValueError(f"unknown re-noising {renoise_with!r}; valid: {', '.join(RENOISE_MODES)}")
    latents = denoised = noise
    for i, step in enumerate(steps):
        if i > 0:
            ddim = renoise_with == "ddim"
            eps = implied_noise(latents, denoised, steps[i - 1]["alpha_cumprod"]) if ddim else step_noise[i - 1]
            latents = renoise(denoised, eps, step["alpha_cumprod"])
        if trace is not None:
            trace.append(latents)
        denoised = denoise(latents, step)
    return denoised


def classifier_free_guidance(uncond: Any, cond: Any, guidance: Any) -> Any:
    """ε_u + w·(ε_c - ε_u); a per-sample w (shape [batch]) broadcasts over the other dimensions."""
    if getattr(guidance, "ndim", 0):
        guidance = guidance.reshape(-1, *([1] * (cond.ndim - 1)))
    return uncond + guidance * (cond - uncond)


def ddim_loop(predict: Callable[[Array, Step], Array], latents: Array, steps: Sequence[Step],
              prediction_type: str = "epsilon") -> Array:
    """Deterministic DDIM (η = 0): x_prev = √ᾱ_prev·x̂₀ + √(1-ᾱ_prev)·ε̂, with x̂₀ and ε̂ implied by
    `predict(latents, step)` under the scheduler's prediction type (steps from `sampling.ddim_schedule`)."""
    for step in steps:
        out = predict(latents, step)
        a, a_prev = step["alpha_cumprod"], step["alpha_cumprod_prev"]
        if prediction_type == "epsilon":
            x0, eps = (latents - (1 - a) ** 0.5 * out) / a**0.5, out
        elif prediction_type == "v_prediction":
            x0, eps = a**0.5 * latents - (1 - a) ** 0.5 * out, a**0.5 * out + (1 - a) ** 0.5 * latents
        elif prediction_type == "sample":
            x0, eps = out, (latents - a**0.5 * out) / (1 - a) ** 0.5
        else:
            raise ValueError(f"unsupported prediction_type {prediction_type!r}")
        latents = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps
    return latents


# ---- the samplers over runners (anything with `run(named numpy inputs) -> named numpy outputs`) ------------------
def step_constants_np(step: Step) -> dict[str, np.ndarray]:
    """The consistency step graph's constant inputs for one entry of `schedule.steps`."""
    return {"timestep": np.array([int(step["timestep"])], dtype=np.int64),
            **{name: np.array([float(step[name])], dtype=np.float32) for name in STEP_CONSTANT_INPUTS}}


def run_components(step_runner: Any, decoder_runner: Any, steps: list[Step], inputs: dict[str, np.ndarray],
                   renoise_with: str = "fresh") -> np.ndarray:
    """The multi-step consistency sampler over the step and decoder graphs, as an app runs it (constants and
    `renoise_with` from the manifest's schedule). `inputs` are the generator's inputs (noise, step_noise,
    conditioning); returns the image."""
    cond = {k: v for k, v in inputs.items() if k not in ("noise", "step_noise")}
    step_noise = inputs.get("step_noise")
    extra = [] if step_noise is None else [step_noise[i : i + 1] for i in range(len(steps) - 1)]

    def denoise(latents: np.ndarray, step: Step) -> np.ndarray:
        return step_runner.run({"latents": latents.astype(np.float32), **step_constants_np(step), **cond})["denoised"]

    latents = consistency_loop(denoise, inputs["noise"], steps, extra, renoise_with=renoise_with)
    return decoder_runner.run({"latents": latents})["image"]


def run_teacher(step_runner: Any, decoder_runner: Any, steps: list[Step], inputs: dict[str, np.ndarray],
                prediction_type: str = "epsilon") -> np.ndarray:
    """The teacher's DDIM sampler over its guided step graph and decoder graph, on any runtime.

    `inputs`: `latents` (the initial noise) plus the step graph's conditioning inputs; returns the image.
    """
    cond = {k: v for k, v in inputs.items() if k != "latents"}

    def predict(latents: np.ndarray, step: Step) -> np.ndarray:
        timestep = np.array([int(step["timestep"])], dtype=np.int64)
        return step_runner.run({"latents": latents.astype(np.float32), "timestep": timestep, **cond})["model_output"]

    latents = ddim_loop(predict, inputs["latents"], steps, prediction_type)
    return decoder_runner.run({"latents": latents.astype(np.float32)})["image"]
