"""Sampling with torch models, written once for every stage: one consistency step from a UNet output, the teacher's
guided UNet call and DDIM schedule, the decode to an image in [0, 1], and the whole samplers used for evaluation,
grids and distillation previews.

The loops themselves (consistency, DDIM, the CFG combination) are in `loops.py`, torch-free, shared with the exported
graphs and the runtime-side samplers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdx.distill.consistency import guidance_scale_embedding, predicted_x0, step_constants
from cdx.distill.loading import LatentPipelineParts
from cdx.distill.loops import Step, classifier_free_guidance, consistency_loop, ddim_loop
from cdx.images import save_image_grid  # the one grid writer (core); callers may import it from here too


# ---- the consistency sampler -------------------------------------------------------------------------------------
def consistency_output(model_output: Any, latents: Any, alpha_cumprod: Any, c_skip: Any, c_out: Any,
                       prediction_type: str) -> Any:
    """f(x, t) = c_skip·x + c_out·x̂₀(x, t): the consistency function's value from one UNet output."""
    return c_skip * latents + c_out * predicted_x0(model_output, latents, alpha_cumprod, prediction_type)


# ---- classifier-free guidance and the teacher's DDIM sampler ----------------------------------------------------------
def guided_output(unet: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor, cond: dict[str, Any],
                  null: dict[str, Any] | None, guidance: Any) -> torch.Tensor:
    """The teacher's CFG prediction from one UNet call on the batch [conditional; unconditional] (as SD pipelines
    do; the exported teacher step graph runs exactly this). `null` None: an unguided teacher, one plain call."""
    if null is None:
        return unet(latents, timestep, **cond).sample
    both = {k: None if v is None else torch.cat([v, null[k]]) for k, v in cond.items()}
    out = unet(torch.cat([latents, latents]), torch.cat([timestep, timestep]), **both).sample
    e_c, e_u = out.chunk(2)
    return classifier_free_guidance(e_u, e_c, guidance)


def ddim_schedule(scheduler_config: dict[str, Any], num_steps: int) -> list[Step]:
    """The teacher's DDIM (η = 0) steps from its scheduler config: timestep, ᾱ_t and the ᾱ it steps to.

    Same settings as distillation's solver (trailing spacing, no clipping, final ᾱ = ᾱ_0); the constants are read
    from diffusers' DDIMScheduler, never re-typed.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(scheduler_config, clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=1, timestep_spacing="trailing")
    scheduler.set_timesteps(num_steps)
    acp = scheduler.alphas_cumprod
    stride = scheduler.config.num_train_timesteps // num_steps  # DDIMScheduler.step's previous timestep
    steps = []
    for t in (int(t) for t in scheduler.timesteps):
        prev = t - stride
        steps.append({"timestep": t, "alpha_cumprod": float(acp[t]),
                      "alpha_cumprod_prev": float(acp[prev] if prev >= 0 else scheduler.final_alpha_cumprod)})
    return steps


# ---- latents → image ---------------------------------------------------------------------------------------------
def decode_latents(vae: torch.nn.Module, latents: torch.Tensor, scaling_factor: float,
                   shift_factor: float | None = None) -> torch.Tensor:
    """Undo the latent scaling (and shift), run the VAE decoder, map [-1, 1] to an image in [0, 1]."""
    image = vae.decode(latents / scaling_factor + (shift_factor or 0.0)).sample
    return (image / 2 + 0.5).clamp(0.0, 1.0)


def _decode(parts: LatentPipelineParts, latents: torch.Tensor, steps: int = 1) -> torch.Tensor:
    """Images in [0, 1] of a `steps`-step sample's latents, with the decoder for that many steps."""
    vae = parts.decoder_for(steps)
    weight = next(vae.parameters())
    latents = latents.to(weight.device, weight.dtype)
    return decode_latents(vae, latents, parts.latent_scaling_factor, parts.latent_shift_factor).float().cpu()


def initial_noise(parts: LatentPipelineParts, batch: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
    """A batch's initial latents from a generator seeded with `seed`, and that generator (it then draws the
    multi-step sampler's re-noising)."""
    size = int(parts.unet.config.sample_size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, parts.latent_channels, size, size), generator=gen), gen


# ---- whole samplers on a loaded pipeline (evaluation, grids, distillation previews) ---------------------------------
@torch.no_grad()
def consistency_sample(unet: torch.nn.Module, parts: LatentPipelineParts, cond, labels: torch.Tensor, steps: int = 1,
                       guidance: float = 3.0, parameterization: str = "lcm", seed: int = 0,
                       embedding_dim: int | None = None, noise: torch.Tensor | None = None,
                       renoise_with: str = "fresh") -> torch.Tensor:
    """Multistep consistency sampling (LCMScheduler's timesteps) → images in [0, 1].

    `noise` gives the initial latents (e.g. cdx-normal-v1, as the artifacts draw them); otherwise they and the
    re-noising draws come from a torch generator seeded with `seed`. `renoise_with`: see `loops.consistency_loop`.
    """
    return _decode(parts, consistency_latents(unet, parts, cond, labels, steps, guidance, parameterization, seed,
                                              embedding_dim, noise, renoise_with), steps)


@torch.no_grad()
def consistency_latents(unet: torch.nn.Module, parts: LatentPipelineParts, cond, labels: torch.Tensor, steps: int = 1,
                        guidance: float = 3.0, parameterization: str = "lcm", seed: int = 0,
                        embedding_dim: int | None = None, noise: torch.Tensor | None = None,
                        renoise_with: str = "fresh") -> torch.Tensor:
    """`consistency_sample`'s clean latents (the diffusion latent space, before the VAE's scaling is undone)."""
    drawn, gen = initial_noise(parts, len(labels), seed)
    latents = drawn if noise is None else noise
    schedule = [s.as_dict() for s in step_constants(parts.scheduler_config, steps, parameterization)]  # type: ignore[arg-type]
    step_noise = [torch.randn(latents.shape, generator=gen) for _ in schedule[1:]]
    kwargs = dict(cond.kwargs(labels))
    dim = embedding_dim or getattr(unet.config, "time_cond_proj_dim", None)
    if dim:
        kwargs["timestep_cond"] = guidance_scale_embedding(torch.full((len(labels),), guidance - 1.0), dim)
    device = next(unet.parameters()).device  # draws stay on the CPU generator; the UNet may be on an accelerator
    latents, step_noise = latents.to(device), [n.to(device) for n in step_noise]
    kwargs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    def denoise(x: torch.Tensor, step: Step) -> torch.Tensor:
        t = torch.full((len(labels),), step["timestep"], dtype=torch.int64, device=device)
        return consistency_output(unet(x, t, **kwargs).sample, x, step["alpha_cumprod"], step["c_skip"], step["c_out"],
                                  "epsilon")

    return consistency_loop(denoise, latents, schedule, step_noise, renoise_with=renoise_with)


@torch.no_grad()
def teacher_sample(parts: LatentPipelineParts, cond, labels: torch.Tensor, steps: int = 50, guidance: float = 3.0,
                   seed: int = 0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The teacher's own DDIM sampler (η = 0) with classifier-free guidance → images in [0, 1].

    `noise` gives the initial latents; otherwise they come from a torch generator seeded with `seed`.
    """
    return _decode(parts, teacher_latents(parts, cond, labels, steps, guidance, seed, noise))


@torch.no_grad()
def teacher_latents(parts: LatentPipelineParts, cond, labels: torch.Tensor, steps: int = 50, guidance: float = 3.0,
                    seed: int = 0, noise: torch.Tensor | None = None) -> torch.Tensor:
    """`teacher_sample`'s clean latents (the diffusion latent space, before the VAE's scaling is undone)."""
    latents = initial_noise(parts, len(labels), seed)[0] if noise is None else noise
    c = cond.kwargs(labels)
    u = cond.kwargs(labels, null=True) if cond.guided else None
    prediction_type = str(parts.scheduler_config.get("prediction_type", "epsilon"))

    def predict(x: torch.Tensor, step: Step) -> torch.Tensor:
        t = torch.full((len(labels),), step["timestep"], dtype=torch.int64)
        return guided_output(parts.unet, x, t, c, u, guidance)

    return ddim_loop(predict, latents, ddim_schedule(parts.scheduler_config, steps), prediction_type)


def check_sample_args(parts: LatentPipelineParts, student: bool, steps: int, per_class: int) -> None:
    """One line before any work: students take 1..N consistency steps (N = the distillation grid), teachers
    1..T DDIM steps."""
    from cdx.distill.consistency import check_sampling_steps
    from cdx.errors import InputError

    if per_class < 1:
        raise InputError(f"--per-class {per_class}: must be >= 1")
    if student:
        check_sampling_steps(parts.scheduler_config, steps)
        return
    total = int(parts.scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= steps <= total:
        raise InputError(f"--steps {steps}: a teacher samples with 1..{total} DDIM steps (num_train_timesteps)")


GRID_PER_CLASS = 4  # a student folder's sample_grid.png: one-step samples, this many per class, seed 0, mid guidance


def sample_grid(model: str | Path, out: Path, steps: int = 1, per_class: int = 8, guidance: float = 3.0,
                seed: int = 0) -> Path:
    """A grid with one row per class: consistency sampling for students, DDIM + CFG for teachers."""
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline, read_cdx_info

    parts = load_latent_pipeline(model)
    info = read_cdx_info(Path(model)) if Path(model).is_dir() else {}
    names = parts.class_names or info.get("class_names", [])
    cond = TeacherConditioning(parts, names or ["an image"])
    classes = min(10, parts.num_classes or len(names) or 1)
    labels = torch.arange(classes).repeat_interleave(per_class)
    student = info.get("kind") == "student" or parts.guidance_embedding_dim is not None
    check_sample_args(parts, student, steps, per_class)
    if student:
        images = consistency_sample(parts.unet, parts, cond, labels, steps=steps, guidance=guidance,
                                    parameterization=parts.parameterization, seed=seed)
    else:
        images = teacher_sample(parts, cond, labels, steps=steps, guidance=guidance, seed=seed)
    return save_image_grid(images, Path(out), columns=per_class)
