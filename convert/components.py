"""`--mode components`: the generator split into a consistency-step graph and a VAE-decoder graph.

For multi-step sampling on device the app runs the step graph once per entry of the manifest's
`schedule.steps` (re-noising between steps with that entry's ᾱ), then the decoder once. The constants
are graph inputs, so one step graph serves every step count; the app reads them from the manifest.
`run_components` below is that loop, written once for the tests, the parity check and the benchmarks.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cdx import rng
from cdx.convert.generator import OneStepGenerator, TensorSpec, unet_forward
from cdx.distill.consistency import predicted_x0

STEP_CONSTANT_INPUTS = ("alpha_cumprod", "c_skip", "c_out")


class ConsistencyStepGraph(nn.Module):
    """latents at timestep t (+ conditioning) → c_skip·latents + c_out·x̂₀ (the denoised latent)."""

    role = "unet_step"

    def __init__(self, generator: OneStepGenerator):
        super().__init__()
        self.unet = generator.unet
        self.conditioning = generator.conditioning
        self.guidance_dim = generator.guidance_dim
        self.prediction_type = generator.prediction_type
        self.latent_shape = generator.latent_shape
        self.steps = generator.steps
        self.default_guidance = generator.default_guidance
        self._conditioning_specs = generator.conditioning_specs()

    def contains(self) -> list[str]:
        return ["student_unet", "consistency_scaling", *(["guidance_embedding"] if self.guidance_dim else [])]

    def input_specs(self) -> list[TensorSpec]:
        scalar = "one entry of the manifest's schedule.steps"
        return [
            TensorSpec("latents", self.latent_shape, "float32", description="noisy latent at this step"),
            TensorSpec("timestep", (1,), "int64", description=scalar),
            *(TensorSpec(name, (1,), "float32", description=scalar) for name in STEP_CONSTANT_INPUTS),
            *self._conditioning_specs,
        ]

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("denoised", self.latent_shape, "float32", description="consistency estimate of the clean latent")]

    def example_inputs(self, seed: int = 0, class_label: int = 0, guidance_scale: float | None = None,
                       step_index: int = 0) -> dict[str, torch.Tensor]:
        """Seeded noise at the first step's timestep (the state every sampler starts from)."""
        step = self.steps[step_index]
        out = {"latents": torch.from_numpy(rng.normal(seed, self.latent_shape, 0)), **step_inputs(step)}
        streams = {spec.name: i for i, spec in enumerate(self.input_specs())}
        for spec in self._conditioning_specs:
            if spec.name == "class_label":
                out[spec.name] = torch.tensor([class_label], dtype=torch.int64)
            elif spec.name == "guidance_scale":
                w = self.default_guidance if guidance_scale is None else guidance_scale
                out[spec.name] = torch.tensor([w], dtype=torch.float32)
            else:
                out[spec.name] = torch.from_numpy(rng.normal(seed, spec.shape, streams[spec.name]))
        return out

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, alpha_cumprod: torch.Tensor, c_skip: torch.Tensor,
                c_out: torch.Tensor, *cond_args: torch.Tensor) -> torch.Tensor:
        cond = dict(zip([s.name for s in self._conditioning_specs], cond_args, strict=True))
        out = unet_forward(self.unet, latents, timestep, cond, self.conditioning, self.guidance_dim)
        x0 = predicted_x0(out, latents, alpha_cumprod, self.prediction_type)
        return c_skip * latents + c_out * x0


class DecoderGraph(nn.Module):
    """denoised latent → image in [0, 1] (latent scaling/shift and the VAE decoder)."""

    role = "vae_decoder"

    def __init__(self, generator: OneStepGenerator):
        super().__init__()
        self.vae = generator.vae
        self.scaling_factor = generator.scaling_factor
        self.shift_factor = generator.shift_factor
        self.latent_shape = generator.latent_shape
        self._output_specs = generator.output_specs()

    def contains(self) -> list[str]:
        return ["vae_decoder"]

    def input_specs(self) -> list[TensorSpec]:
        return [TensorSpec("latents", self.latent_shape, "float32", description="denoised latent (step graph output)")]

    def output_specs(self) -> list[TensorSpec]:
        return self._output_specs

    def example_inputs(self, seed: int = 0, **_: Any) -> dict[str, torch.Tensor]:
        return {"latents": torch.from_numpy(rng.normal(seed, self.latent_shape, 0))}

    def decoder_latents(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        return tensors["latents"]

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.vae.decode(latents / self.scaling_factor + self.shift_factor).sample
        return (image / 2 + 0.5).clamp(0.0, 1.0)


def step_inputs(step: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The step graph's constant inputs for one entry of `schedule.steps`."""
    return {"timestep": torch.tensor([int(step["timestep"])], dtype=torch.int64),
            **{name: torch.tensor([float(step[name])], dtype=torch.float32) for name in STEP_CONSTANT_INPUTS}}


def build_components(generator: OneStepGenerator) -> tuple[ConsistencyStepGraph, DecoderGraph]:
    """The two graphs of `--mode components`, sharing the generator's modules."""
    return ConsistencyStepGraph(generator).eval(), DecoderGraph(generator).eval()


@torch.inference_mode()
def component_batches(generator: OneStepGenerator, batches: list[dict[str, np.ndarray]],
                      ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Real inputs of both graphs along the eager sampler's trajectory: (step inputs for every step, decoder inputs).

    Used for golden data and calibration, so the quantizers and the parity gate see the latents a phone will.
    """
    step_batches, decoder_batches = [], []
    cond_names = [s.name for s in generator.conditioning_specs()]
    for batch in batches:
        tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
        trace: list[torch.Tensor] = []
        denoised = generator.denoise(tensors.pop("noise"), tensors.pop("step_noise", None), trace=trace, **tensors)
        for latents, step in zip(trace, generator.steps, strict=True):
            inputs = {"latents": latents, **step_inputs(step), **{n: tensors[n] for n in cond_names}}
            step_batches.append({k: v.numpy().copy() for k, v in inputs.items()})
        decoder_batches.append({"latents": denoised.numpy().copy()})
    return step_batches, decoder_batches


def run_components(step_runner: Any, decoder_runner: Any, steps: list[dict[str, Any]],
                   inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The multi-step consistency sampler over the two graphs, as an app runs it (constants from the manifest).

    `inputs` are the generator's inputs (noise, step_noise, conditioning); returns the image.
    """
    cond = {k: v for k, v in inputs.items() if k not in ("noise", "step_noise")}
    latents = inputs["noise"]
    denoised = latents
    for i, step in enumerate(steps):
        if i > 0:
            a = np.float32(step["alpha_cumprod"])
            latents = (np.sqrt(a) * denoised + np.sqrt(1 - a) * inputs["step_noise"][i - 1 : i]).astype(np.float32)
        constants = {k: v.numpy() for k, v in step_inputs(step).items()}
        denoised = step_runner.run({"latents": latents, **constants, **cond})["denoised"]
    return decoder_runner.run({"latents": denoised})["image"]


def graph_for_role(generator: OneStepGenerator, role: str) -> nn.Module:
    """The eager module a manifest entry of `role` was exported from."""
    if role == "generator":
        return generator
    step, decoder = build_components(generator)
    graphs = {step.role: step, decoder.role: decoder}
    if role not in graphs:
        raise ValueError(f"unknown graph role {role!r}; valid: generator, {', '.join(graphs)}")
    return graphs[role]
