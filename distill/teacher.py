"""The embedded teacher: a small class-conditional latent diffusion model that cdx trains on Fashion-MNIST.

Two stages, both through 🤗 Accelerate: an `AutoencoderKL` (1×32×32 image ↔ 4×8×8 latent), then a
class-conditional `UNet2DConditionModel` (ε-prediction, SD's scaled-linear β schedule, 10 % label dropout to a
null class for classifier-free guidance, EMA weights). Saved as a diffusers pipeline folder.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel

from cdx.distill.data import ImageDataset
from cdx.distill.progress import TrainingProgress
from cdx.machine import describe_machine

PIPELINE_FILE = Path(__file__).with_name("pipeline_cdx.py")
CDX_CONFIG = "cdx.json"


@dataclass
class AutoencoderRecipe:
    """The image side and the `AutoencoderKL` of a teacher recipe: sizes and training schedule."""

    image_size: int = 32
    channels: int = 1
    vae_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    vae_steps: int = 500
    vae_batch: int = 64
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TeacherRecipe(AutoencoderRecipe):
    """Sizes and schedule of the embedded teacher (defaults train in ≈ 20–25 min on 2 CPU cores)."""

    unet_channels: tuple[int, ...] = (64, 128)
    unet_layers: int = 1
    unet_steps: int = 2000
    unet_batch: int = 96
    unet_lr: float = 3e-4
    label_dropout: float = 0.1
    ema_decay: float = 0.999


def build_vae(recipe: AutoencoderRecipe) -> AutoencoderKL:
    blocks = len(recipe.vae_channels)
    return AutoencoderKL(
        in_channels=recipe.channels, out_channels=recipe.channels,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=recipe.vae_channels, layers_per_block=1, latent_channels=recipe.latent_channels,
        norm_num_groups=16, sample_size=recipe.image_size,
    )


def build_unet(recipe: TeacherRecipe, num_classes: int) -> UNet2DConditionModel:
    """Class-conditional UNet: self-attention at the low resolution, class embedding + one null class."""
    latent = recipe.image_size // 2 ** (len(recipe.vae_channels) - 1)
    return UNet2DConditionModel(
        sample_size=latent, in_channels=recipe.latent_channels, out_channels=recipe.latent_channels,
        block_out_channels=recipe.unet_channels, layers_per_block=recipe.unet_layers,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D", num_class_embeds=num_classes + 1, norm_num_groups=16,
        attention_head_dim=32,
    )


def teacher_scheduler() -> DDIMScheduler:
    """SD's noise schedule; DDIM is the teacher's own fast sampler."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _batches(n: int, batch: int, generator: torch.Generator):
    while True:
        for idx in torch.randperm(n, generator=generator).split(batch):
            if idx.numel() == batch:
                yield idx


def train_vae(data: ImageDataset, recipe: AutoencoderRecipe, accelerator, show: bool = True) -> AutoencoderKL:
    """L1 + MSE reconstruction with a tiny KL term (SD-style), then set `scaling_factor` to 1/std(latents)."""
    torch.manual_seed(recipe.seed)
    vae = build_vae(recipe)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=recipe.vae_lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, recipe.vae_steps)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    gen = torch.Generator().manual_seed(recipe.seed)
    batches = _batches(len(data), recipe.vae_batch, gen)
    with TrainingProgress("autoencoder", recipe.vae_steps, enabled=show) as bar:
        for step in range(1, recipe.vae_steps + 1):
            x = data.images[next(batches)].to(accelerator.device)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample(generator=None)).sample
            loss = F.l1_loss(recon, x) + F.mse_loss(recon, x) + recipe.kl_weight * posterior.kl().mean()
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == recipe.vae_steps:
                bar.update(step, loss=loss.item())
    vae = accelerator.unwrap_model(vae).eval()
    latents = encode_latents(vae, data.images[:5000]).cpu()
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


@torch.no_grad()
def posterior_moments(vae: AutoencoderKL, images: torch.Tensor, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) of the encoder's diagonal Gaussian posterior for every image (unscaled latents), on the VAE's
    device, `batch` images at a time."""
    device = next(vae.parameters()).device
    means, stds = [], []
    for start in range(0, len(images), batch):
        dist = vae.encode(images[start:start + batch].to(device)).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def encode_latents(vae: AutoencoderKL, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """Posterior means (unscaled) for all images, on the VAE's device."""
    return posterior_moments(vae, images, batch)[0]


def ddpm_batch(latents: torch.Tensor, conditions: torch.Tensor, idx: torch.Tensor, dropout: float, null: Any,
               noise_scheduler: Any, gen: torch.Generator, device: Any) -> tuple[torch.Tensor, ...]:
    """One ε-prediction training batch: rows `idx`, each condition replaced by `null` with probability `dropout`
    (for CFG), noise and timesteps drawn on the CPU generator (reproducible on any device), then moved to `device`;
    returns (noisy latents, conditions, noise, timesteps)."""
    x0, c = latents[idx], conditions[idx].clone()
    c[torch.rand(len(c), generator=gen) < dropout] = null
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (len(x0),), generator=gen)
    x0, c, noise, t = (v.to(device) for v in (x0, c, noise, t))
    return noise_scheduler.add_noise(x0, noise, t), c, noise, t


def train_unet(latents: torch.Tensor, labels: torch.Tensor, num_classes: int, recipe: TeacherRecipe, accelerator,
               show: bool = True, init: UNet2DConditionModel | None = None, work: Path | None = None,
               checkpoint_every: int = 1000, meta: dict[str, Any] | None = None) -> UNet2DConditionModel:
    """ε-prediction DDPM training with label dropout; returns the EMA weights.

    `init`: continue from these weights (the EMA starts from them too) instead of a fresh `build_unet`. `work`:
    checkpoint into `work/checkpoints` every `checkpoint_every` steps (Accelerate state + safetensors EMA and batch
    generator, distill/checkpoint.py) and resume from the newest one there; `meta` is stored in each checkpoint's
    state.json (beside the recipe) for the caller to check before resuming."""
    from cdx.distill.checkpoint import ema_tensors, resume_ema_run, save_checkpoint

    torch.manual_seed(recipe.seed + 1)
    unet = build_unet(recipe, num_classes) if init is None else init.train()
    ema = EMAModel(unet.parameters(), decay=recipe.ema_decay)
    noise_scheduler = teacher_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=recipe.unet_lr, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 200))
    unet, optimizer, lr = accelerator.prepare(unet, optimizer, lr)
    gen = torch.Generator().manual_seed(recipe.seed + 2)
    root = Path(work) / "checkpoints" if work else None
    began = time.perf_counter()
    start, state = resume_ema_run(accelerator, root, gen, ema, show)
    smooth, previous_seconds = state.get("smooth"), float(state.get("seconds", 0.0))
    ema.to(accelerator.device)
    batches = _batches(len(latents), recipe.unet_batch, gen)  # after a resume: a new epoch order from the saved generator
    null = num_classes
    with TrainingProgress("teacher unet", recipe.unet_steps, start=start, enabled=show) as bar:
        for step in range(start + 1, recipe.unet_steps + 1):
            noisy, y, noise, t = ddpm_batch(latents, labels, next(batches), recipe.label_dropout, null,
                                            noise_scheduler, gen, accelerator.device)
            pred = unet(noisy, t, encoder_hidden_states=None, class_labels=y).sample
            loss = F.mse_loss(pred, noise)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            lr.step()
            optimizer.zero_grad(set_to_none=True)
            ema.step(accelerator.unwrap_model(unet).parameters())
            smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
            if step % 10 == 0 or step == recipe.unet_steps:
                bar.update(step, loss=smooth)
            if root and step % checkpoint_every == 0 and step < recipe.unet_steps:
                seconds = round(previous_seconds + time.perf_counter() - began, 1)  # training time over all resumes
                state = {"smooth": smooth, "recipe": recipe.as_dict(), "seconds": seconds, **(meta or {})}
                save_checkpoint(accelerator, root, step, ema_tensors(ema), gen, state)
    unet = accelerator.unwrap_model(unet).eval()
    ema.copy_to(unet.parameters())
    return unet.cpu()


def save_pipeline(folder: Path, unet, vae, scheduler, class_names: list[str], extra: dict[str, Any]) -> None:
    """A diffusers folder that `DiffusionPipeline.from_pretrained` loads via the bundled `pipeline_cdx.py`."""
    folder.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    scheduler.save_pretrained(folder / "scheduler")
    shutil.copyfile(PIPELINE_FILE, folder / "pipeline_cdx.py")
    index = {
        "_class_name": ["pipeline_cdx", "CdxLatentPipeline"],
        "_diffusers_version": "0.39.0",
        "unet": ["diffusers", type(unet).__name__],
        "vae": ["diffusers", type(vae).__name__],
        "scheduler": ["diffusers", type(scheduler).__name__],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", "utf-8")
    (folder / CDX_CONFIG).write_text(json.dumps({"class_names": class_names, **extra}, indent=2) + "\n", "utf-8")


def train_teacher(out: Path, data: ImageDataset, recipe: TeacherRecipe, show: bool = True) -> dict[str, Any]:
    """Train autoencoder then UNet; save the pipeline into `out` (an existing staging folder). Returns timings."""
    from accelerate import Accelerator

    accelerator = Accelerator()
    start = time.perf_counter()
    vae = train_vae(data, recipe, accelerator, show)
    vae_seconds = time.perf_counter() - start
    latents = encode_latents(vae, data.images).cpu() * vae.config.scaling_factor
    unet = train_unet(latents, data.labels, len(data.class_names), recipe, accelerator, show)
    total = time.perf_counter() - start
    info = {"kind": "teacher", "recipe": recipe.as_dict(), "train_images": len(data),
            "train_seconds": {"autoencoder": round(vae_seconds, 1), "total": round(total, 1)},
            "machine": describe_machine(str(accelerator.device))}
    save_pipeline(out, unet, vae, teacher_scheduler(), data.class_names, info)
    return info
