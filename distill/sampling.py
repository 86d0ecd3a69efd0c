"""Sampling for evaluation and grids: the student's multi-step consistency sampler and the teacher's DDIM + CFG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cdx.distill.consistency import guidance_scale_embedding, predicted_x0, step_constants
from cdx.distill.loading import LatentPipelineParts


def _decode(parts: LatentPipelineParts, latents: torch.Tensor) -> torch.Tensor:
    shift = parts.latent_shift_factor or 0.0
    image = parts.vae.decode(latents / parts.latent_scaling_factor + shift).sample
    return (image / 2 + 0.5).clamp(0, 1)


def _noise(parts: LatentPipelineParts, batch: int, seed: int) -> torch.Tensor:
    size = int(parts.unet.config.sample_size)
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, parts.latent_channels, size, size), generator=gen), gen


@torch.no_grad()
def consistency_sample(unet: torch.nn.Module, parts: LatentPipelineParts, cond, labels: torch.Tensor, steps: int = 1,
                       guidance: float = 3.0, parameterization: str = "lcm", seed: int = 0,
                       embedding_dim: int | None = None) -> torch.Tensor:
    """Multistep consistency sampling (LCMScheduler's timesteps) → images in [0, 1]."""
    latents, gen = _noise(parts, len(labels), seed)
    kwargs = dict(cond.kwargs(labels))
    dim = embedding_dim or getattr(unet.config, "time_cond_proj_dim", None)
    if dim:
        kwargs["timestep_cond"] = guidance_scale_embedding(torch.full((len(labels),), guidance - 1.0), dim)
    denoised = latents
    for i, step in enumerate(step_constants(parts.scheduler_config, steps, parameterization)):  # type: ignore[arg-type]
        if i > 0:
            a = step.alpha_cumprod
            latents = a**0.5 * denoised + (1 - a) ** 0.5 * torch.randn(denoised.shape, generator=gen)
        t = torch.full((len(labels),), step.timestep, dtype=torch.int64)
        out = unet(latents, t, **kwargs).sample
        denoised = step.c_skip * latents + step.c_out * predicted_x0(out, latents, step.alpha_cumprod, "epsilon")
    return _decode(parts, denoised)


@torch.no_grad()
def teacher_sample(parts: LatentPipelineParts, cond, labels: torch.Tensor, steps: int = 50, guidance: float = 3.0,
                   seed: int = 0) -> torch.Tensor:
    """The teacher's own DDIM sampler (η = 0) with classifier-free guidance → images in [0, 1]."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(parts.scheduler_config, clip_sample=False, set_alpha_to_one=False,
                                          steps_offset=1, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    latents, _ = _noise(parts, len(labels), seed)
    c, u = cond.kwargs(labels), cond.kwargs(labels, null=True)
    for t in scheduler.timesteps:
        tt = torch.full((len(labels),), int(t), dtype=torch.int64)
        e_c = parts.unet(latents, tt, **c).sample
        eps = e_c if not cond.guided else (lambda e_u: e_u + guidance * (e_c - e_u))(parts.unet(latents, tt, **u).sample)
        latents = scheduler.step(eps, t, latents).prev_sample
    return _decode(parts, latents)


def save_image_grid(images: torch.Tensor, path: Path, columns: int = 8) -> Path:
    """NCHW images in [0, 1] (1 or 3 channels) → one PNG grid."""
    from PIL import Image

    arr = images.detach().cpu().float().numpy()
    n, c, h, w = arr.shape
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    grid = np.ones((rows * h, cols * w, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = arr[i].transpose(1, 2, 0)
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[..., 0] if c == 1 else pixels).save(path)
    return path


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
    if student:
        images = consistency_sample(parts.unet, parts, cond, labels, steps=steps, guidance=guidance,
                                    parameterization=info.get("parameterization", "lcm"), seed=seed)
    else:
        images = teacher_sample(parts, cond, labels, steps=steps, guidance=guidance, seed=seed)
    return save_image_grid(images, Path(out), columns=per_class)
