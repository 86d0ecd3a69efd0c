"""The graphs besides the one-step generator: its consistency-step and VAE-decoder halves (`cdx convert --mode
components`), and the teacher's guided UNet step (what the bench times the teacher with on each runtime).

For multi-step sampling on device the app runs the step graph once per entry of the manifest's
`schedule.steps` (re-noising between steps with that entry's ᾱ), then the decoder once. The constants
are graph inputs, so one step graph serves every step count; the app reads them from the manifest.
`loops.run_components` is that loop over two runners, for the tests, the parity check and the benchmarks.
Like the generator, these live below convert (which exports them) and runtimes (whose eager runner rebuilds them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from cdx import rng
from cdx.distill.generator import OneStepGenerator, TensorSpec, conditioning_input_specs, image_spec, unet_forward
from cdx.distill.loading import LatentPipelineParts
from cdx.distill.loops import STEP_CONSTANT_INPUTS, step_constants_np
from cdx.distill.sampling import consistency_output, decode_latents, guided_output


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
        return consistency_output(out, latents, alpha_cumprod, c_skip, c_out, self.prediction_type)


class DecoderGraph(nn.Module):
    """denoised latent → image in [0, 1] (latent scaling/shift and the VAE decoder), of a student or a teacher."""

    role = "vae_decoder"

    def __init__(self, vae: nn.Module, scaling_factor: float, shift_factor: float | None, latent_shape: tuple[int, ...]):
        super().__init__()
        self.vae = vae
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor or 0.0)
        self.latent_shape = tuple(latent_shape)
        self._output_specs = [image_spec(vae, self.latent_shape)]

    @classmethod
    def of(cls, parts: LatentPipelineParts, latent_shape: tuple[int, ...], steps: int = 1) -> DecoderGraph:
        """The decoder a loaded pipeline's `steps`-step samples take (a teacher's, for the bench)."""
        return cls(parts.decoder_for(steps), parts.latent_scaling_factor, parts.latent_shift_factor, latent_shape)

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
        return decode_latents(self.vae, latents, self.scaling_factor, self.shift_factor)


class TeacherStepGraph(nn.Module):
    """The teacher's guided UNet step: latents at t (+ class label | text embedding, w) → the CFG-combined output.

    One UNet call on the batch [conditional; unconditional] (the null class / empty-prompt embedding is baked in),
    combined with w, exactly as `sampling.guided_output` runs it eagerly; `loops.run_teacher` (a DDIM loop over
    this graph, then a `DecoderGraph`) is the teacher's sampler on any runtime.
    """

    role = "teacher_step"

    def __init__(self, parts: LatentPipelineParts, latent_shape: tuple[int, ...], default_guidance: float = 3.0):
        super().__init__()
        from cdx.distill.conditioning import TeacherConditioning

        self.unet = parts.unet
        self.conditioning = parts.conditioning
        self.latent_shape = tuple(latent_shape)
        self.default_guidance = default_guidance
        self.num_classes = parts.num_classes
        cond = TeacherConditioning(parts, parts.class_names or ["an image"])
        self.guided = cond.guided
        self.null_class = cond.null_class
        if cond.null_embedding is not None:
            self.register_buffer("null_embedding", cond.null_embedding.detach().clone(), persistent=False)
        self.text_shape = (1, parts.text_sequence_length, parts.cross_attention_dim) \
            if parts.conditioning == "text_embedding" else None

    def contains(self) -> list[str]:
        return ["teacher_unet", *(["classifier_free_guidance"] if self.guided else [])]

    def input_specs(self) -> list[TensorSpec]:
        specs = [TensorSpec("latents", self.latent_shape, "float32", description="noisy latent at this step"),
                 TensorSpec("timestep", (1,), "int64", description="one DDIM timestep")]
        return specs + conditioning_input_specs(self.conditioning, self.num_classes, self.text_shape, self.guided)

    def output_specs(self) -> list[TensorSpec]:
        return [TensorSpec("model_output", self.latent_shape, "float32",
                           description="CFG-combined UNet output (the scheduler's prediction_type)")]

    def example_inputs(self, seed: int = 0, class_label: int = 0, guidance_scale: float | None = None,
                       **_: Any) -> dict[str, torch.Tensor]:
        out = {"latents": torch.from_numpy(rng.normal(seed, self.latent_shape, 0)),
               "timestep": torch.tensor([999], dtype=torch.int64)}
        for stream, spec in enumerate(self.input_specs()):
            if spec.name == "class_label":
                out[spec.name] = torch.tensor([class_label], dtype=torch.int64)
            elif spec.name == "text_embedding":
                out[spec.name] = torch.from_numpy(rng.normal(seed, spec.shape, stream))
            elif spec.name == "guidance_scale":
                w = self.default_guidance if guidance_scale is None else guidance_scale
                out[spec.name] = torch.tensor([w], dtype=torch.float32)
        return out

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        named = dict(zip([s.name for s in self.input_specs()][2:], args, strict=True))
        if self.conditioning == "class_label":
            label = named["class_label"]
            cond = {"class_labels": label, "encoder_hidden_states": None}
            null = {"class_labels": torch.full_like(label, self.null_class), "encoder_hidden_states": None}
        elif self.conditioning == "text_embedding":
            cond = {"encoder_hidden_states": named["text_embedding"]}
            null = {"encoder_hidden_states": self.null_embedding}
        else:
            cond, null = {}, {}
        return guided_output(self.unet, latents, timestep, cond, null if self.guided else None,
                             named.get("guidance_scale"))


def step_inputs(step: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The step graph's constant inputs for one entry of `schedule.steps` (as tensors)."""
    return {name: torch.from_numpy(value) for name, value in step_constants_np(step).items()}


def build_components(generator: OneStepGenerator) -> tuple[ConsistencyStepGraph, DecoderGraph]:
    """The two graphs of `--mode components`, sharing the generator's modules."""
    decoder = DecoderGraph(generator.vae, generator.scaling_factor, generator.shift_factor, generator.latent_shape)
    return ConsistencyStepGraph(generator).eval(), decoder.eval()


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


GRAPH_ROLES = ("generator", "unet_step", "vae_decoder", "teacher_step", "text_encoder")


def graph_for_role(parts: LatentPipelineParts, schedule: dict[str, Any], role: str) -> nn.Module:
    """The eager module a manifest entry of `role` was exported from (`schedule`: the manifest's, with the entry's
    latent shape and steps)."""
    if role not in GRAPH_ROLES:
        raise ValueError(f"unknown graph role {role!r}; valid: {', '.join(GRAPH_ROLES)}")
    if role == "text_encoder":
        from cdx.distill.text_encoder_graph import TextEncoderGraph

        return TextEncoderGraph(parts).eval()
    latent_shape = tuple(schedule["latent_shape"])
    if role == "vae_decoder":
        return DecoderGraph.of(parts, latent_shape, len(schedule["steps"])).eval()
    if role == "teacher_step":
        return TeacherStepGraph(parts, latent_shape, parts.default_guidance).eval()
    generator = OneStepGenerator(parts, schedule).eval()
    return generator if role == "generator" else ConsistencyStepGraph(generator).eval()
