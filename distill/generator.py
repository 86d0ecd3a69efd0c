"""The one-step generator: noise latent (+ conditioning) → consistency step(s) → VAE decode → image in [0, 1].

This is the module every target exports (convert) and the eager reference runs (runtimes), so the sampler ships
inside the artifact and no app re-implements it; it lives in distill, below both. Its constants (timesteps, ᾱ,
c_skip, c_out, latent scaling) come from the manifest's `schedule` section; the loop is `loops.consistency_loop`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from cdx import rng
from cdx.distill.consistency import guidance_scale_embedding, step_constants
from cdx.distill.loading import LatentPipelineParts, vae_scale_factor
from cdx.distill.loops import consistency_loop
from cdx.distill.sampling import consistency_output, decode_latents


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape, dtype and value range of one graph input or output (the manifest's tensor entry)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    range: tuple[float, float] | None = None
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.range is not None:
            data["range"] = list(self.range)
        if self.description:
            data["description"] = self.description
        return data


class ExportableGraph(Protocol):
    """What every target exporter needs from a graph module (the generator, the step graph, the decoder graph)."""

    role: str

    def __call__(self, *args: torch.Tensor) -> torch.Tensor: ...
    def input_specs(self) -> list[TensorSpec]: ...
    def output_specs(self) -> list[TensorSpec]: ...
    def example_inputs(self, seed: int = 0, class_label: int = 0,
                       guidance_scale: float | None = None) -> dict[str, torch.Tensor]: ...
    def contains(self) -> list[str]: ...


def schedule_section(parts: LatentPipelineParts, num_steps: int = 1, parameterization: str | None = None,
                     latent_hw: tuple[int, int] | None = None, renoise_with: str = "fresh") -> dict[str, Any]:
    """The manifest's `schedule`: every constant a sampler needs, read from the scheduler config (`renoise_with`:
    listed when it is not LCM's fresh noise, see `loops.consistency_loop`)."""
    config = parts.scheduler_config
    parameterization = parameterization or parts.parameterization
    h, w = latent_hw or _default_latent_hw(parts)
    return {
        "scheduler_class": "LCMScheduler",
        "num_train_timesteps": int(config.get("num_train_timesteps", 1000)),
        "prediction_type": str(config.get("prediction_type", "epsilon")),
        "parameterization": parameterization,
        "sigma_data": 0.5,
        "timestep_scaling": float(config.get("timestep_scaling", 10.0)),
        "latent_scaling_factor": parts.latent_scaling_factor,
        "latent_shift_factor": parts.latent_shift_factor,
        "latent_shape": [1, parts.latent_channels, h, w],
        "init_noise_sigma": 1.0,
        **({"renoise_with": renoise_with} if renoise_with != "fresh" else {}),
        "steps": [s.as_dict() for s in step_constants(config, num_steps, parameterization)],  # type: ignore[arg-type]
    }


def _default_latent_hw(parts: LatentPipelineParts) -> tuple[int, int]:
    size = parts.unet.config.sample_size
    if isinstance(size, list | tuple):
        return int(size[0]), int(size[1])
    return int(size), int(size)


def image_spec(vae: nn.Module, latent_shape: tuple[int, ...]) -> TensorSpec:
    """The decoded image's spec for a latent shape (the VAE's channels and upsampling factor)."""
    channels = int(vae.config.out_channels)
    factor = vae_scale_factor(vae)
    shape = (1, channels, latent_shape[2] * factor, latent_shape[3] * factor)
    layout = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels} channels")
    return TensorSpec("image", shape, "float32", (0.0, 1.0), f"{layout}, NCHW")


def conditioning_input_specs(conditioning: str, num_classes: int | None, text_shape: tuple[int, ...] | None,
                             guided: bool) -> list[TensorSpec]:
    """The conditioning inputs every exported graph takes, in order: class label or text embedding, then the guidance w."""
    specs = []
    if conditioning == "class_label":
        specs.append(TensorSpec("class_label", (1,), "int64", (0, (num_classes or 1) - 1)))
    elif conditioning == "text_embedding":
        specs.append(TensorSpec("text_embedding", text_shape, "float32", description="text encoder last hidden state"))
    if guided:
        specs.append(TensorSpec("guidance_scale", (1,), "float32", description="classifier-free guidance w"))
    return specs


def unet_forward(unet: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, cond: dict[str, torch.Tensor],
                 conditioning: str, guidance_dim: int | None) -> torch.Tensor:
    """One student UNet call with the conditioning the manifest declares (class label | text embedding, guidance w)."""
    kwargs: dict[str, Any] = {}
    if guidance_dim:
        # LCM feeds w - 1 (the CFG "extra" scale) to the embedding; see LatentConsistencyModelPipeline.
        kwargs["timestep_cond"] = guidance_scale_embedding(cond["guidance_scale"] - 1.0, guidance_dim)
    if conditioning == "class_label":
        kwargs["class_labels"] = cond["class_label"]
    if type(unet).__name__ == "UNet2DModel":
        return unet(latents, timestep, **kwargs).sample
    return unet(latents, timestep, encoder_hidden_states=cond.get("text_embedding"), **kwargs).sample


class OneStepGenerator(nn.Module):
    """noise (+ class label | text embedding) (+ guidance w) → image in [0, 1], all in one graph.

    With several schedule steps it runs the multi-step consistency sampler, drawing the re-noising
    noise from the extra `step_noise` input so the graph stays deterministic and exportable (with the schedule's
    `renoise_with: "ddim"`, the DDIM hop between steps, there is no such input). Its decoder is the one the
    pipeline uses for that many steps (`LatentPipelineParts.decoder_for`).
    """

    role = "generator"

    def __init__(self, parts: LatentPipelineParts, schedule: dict[str, Any]):
        super().__init__()
        self.unet = parts.unet
        self.vae = parts.decoder_for(len(schedule["steps"]))
        self.conditioning = parts.conditioning
        self.guidance_dim = parts.guidance_embedding_dim
        self.prediction_type = schedule["prediction_type"]
        self.scaling_factor = float(schedule["latent_scaling_factor"])
        self.shift_factor = float(schedule.get("latent_shift_factor") or 0.0)
        self.steps = schedule["steps"]
        self.renoise_with = str(schedule.get("renoise_with", "fresh"))
        self.latent_shape = tuple(schedule["latent_shape"])
        self.text_shape = (1, parts.text_sequence_length, parts.cross_attention_dim) \
            if parts.conditioning == "text_embedding" else None
        self.num_classes = parts.num_classes
        self.default_guidance = parts.default_guidance

    # ---- the I/O contract -------------------------------------------------------------------------------
    def input_specs(self) -> list[TensorSpec]:
        specs = [TensorSpec("noise", self.latent_shape, "float32", description="standard normal latent")]
        if len(self.steps) > 1 and self.renoise_with == "fresh":  # the DDIM hop draws no noise
            shape = (len(self.steps) - 1, *self.latent_shape[1:])
            specs.append(TensorSpec("step_noise", shape, "float32", description="standard normal, one per extra step"))
        return specs + conditioning_input_specs(self.conditioning, self.num_classes, self.text_shape, bool(self.guidance_dim))

    def output_specs(self) -> list[TensorSpec]:
        return [image_spec(self.vae, self.latent_shape)]

    def example_inputs(self, seed: int = 0, class_label: int = 0,
                       guidance_scale: float | None = None) -> dict[str, torch.Tensor]:
        """Seeded inputs matching `input_specs` (random ones from cdx-normal-v1, stream = input index; w defaults to
        the manifest's). A text_embedding drawn here is only a tracing stand-in: convert's golden data, calibration
        and parity gate replace it with encoded prompts (`convert/golden.py`, `conditioning.prompts`)."""
        out: dict[str, torch.Tensor] = {}
        for stream, spec in enumerate(self.input_specs()):
            if spec.name in ("noise", "step_noise", "text_embedding"):
                out[spec.name] = torch.from_numpy(rng.normal(seed, spec.shape, stream))
            elif spec.name == "class_label":
                out[spec.name] = torch.tensor([class_label], dtype=torch.int64)
            elif spec.name == "guidance_scale":
                w = self.default_guidance if guidance_scale is None else guidance_scale
                out[spec.name] = torch.tensor([w], dtype=torch.float32)
        return out

    # ---- the computation --------------------------------------------------------------------------------
    def _unet(self, latents: torch.Tensor, timestep: int, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        t = torch.full((latents.shape[0],), timestep, dtype=torch.int64)
        return unet_forward(self.unet, latents, t, cond, self.conditioning, self.guidance_dim)

    def denoise(self, noise: torch.Tensor, step_noise: torch.Tensor | None = None,
                trace: list[torch.Tensor] | None = None, **cond: torch.Tensor) -> torch.Tensor:
        """Run the consistency sampler in latent space; returns the clean latent.

        `trace`, when given, receives the latents each step's UNet call sees (the on-device step graph's inputs).
        """
        extra = [] if step_noise is None else [step_noise[i : i + 1] for i in range(len(self.steps) - 1)]

        def step(latents: torch.Tensor, constants: dict[str, Any]) -> torch.Tensor:
            out = self._unet(latents, constants["timestep"], cond)
            return consistency_output(out, latents, constants["alpha_cumprod"], constants["c_skip"], constants["c_out"],
                                      self.prediction_type)

        return consistency_loop(step, noise, self.steps, extra, trace, self.renoise_with)

    def contains(self) -> list[str]:
        """The manifest's `contains`: what this graph computes."""
        return ["student_unet", "consistency_scaling", *(["guidance_embedding"] if self.guidance_dim else []), "vae_decoder"]

    def conditioning_specs(self) -> list[TensorSpec]:
        """The conditioning inputs (shared by the generator and the step graph)."""
        return [s for s in self.input_specs() if s.name in ("class_label", "text_embedding", "guidance_scale")]

    def decoder_latents(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """The latents this graph hands to its VAE decoder for these inputs (used by the fp16 overflow check)."""
        tensors = dict(tensors)
        return self.denoise(tensors.pop("noise"), tensors.pop("step_noise", None), **tensors)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_latents(self.vae, latents, self.scaling_factor, self.shift_factor)

    def forward(self, noise: torch.Tensor, *args: torch.Tensor) -> torch.Tensor:
        names = [s.name for s in self.input_specs()][1:]
        named = dict(zip(names, args, strict=True))
        step_noise = named.pop("step_noise", None)
        return self.decode(self.denoise(noise, step_noise, **named))


def build_generator(parts: LatentPipelineParts, num_steps: int = 1, parameterization: str | None = None,
                    latent_hw: tuple[int, int] | None = None,
                    renoise_with: str = "fresh") -> tuple[OneStepGenerator, dict[str, Any]]:
    """A generator and the schedule section it bakes in; the boundary condition defaults to the student's own
    (`parts.parameterization`, from its cdx.json), so an EDM student is never exported with LCM constants."""
    schedule = schedule_section(parts, num_steps, parameterization or parts.parameterization, latent_hw, renoise_with)
    return OneStepGenerator(parts, schedule).eval(), schedule
