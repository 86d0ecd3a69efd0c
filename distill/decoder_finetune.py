"""Fine-tune a teacher autoencoder's decoder on real images with the encoder frozen.

The embedded teacher's FID ceiling is its autoencoder: 1,000 train images round-tripped through the VAE score
Inception FID 70.3 against the test reference (the real-vs-real floor is 22.3, the teacher's 50-step samples 80.4).
Training only the decoder (and `post_quant_conv`) on the frozen encoder's posterior samples leaves the latent space,
the `scaling_factor` and therefore every UNet trained on it (teacher and student) valid, so the better decoder can
replace `vae/` in both folders without retraining them. With the adversarial term (`AdversarialDecoderTerm`) the
round trip went on to 38.4 and the teacher's 50 steps to 47.8; `finetune_student_decoder` fits a student's own decoder
to its one-step samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from cdx.distill.loading import MULTISTEP_VAE
from cdx.distill.progress import TrainingProgress
from cdx.distill.teacher import posterior_moments
from cdx.errors import InputError


def decoder_parameters(vae: AutoencoderKL) -> list[torch.nn.Parameter]:
    """What the fine-tune trains: the decoder and the 1×1 conv in front of it; the encoder side stays frozen."""
    return [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]


def _lr_factor(step: int, steps: int, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 0 (the first Adam steps on a converged decoder would otherwise jolt it)."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * step / steps))


@dataclass
class AdversarialDecoderTerm:
    """The GAN term of the decoder fine-tune (VQGAN / SD-VAE style): `weight` × the adaptive balance × −critic(recon),
    from `start` on, with an image patch critic trained here by the hinge loss (learning rate `critic_lr`, R1 `r1`).

    The balance is VQGAN's (Esser et al. 2021): ‖∇ L_rec‖ / ‖∇ L_adv‖ at the decoder's last layer, so `weight` is
    relative to the reconstruction loss and needs no retuning when the critic's scale drifts. A decoder that only
    regresses on the posterior's samples averages the textures an 8×8 latent cannot pin down (a blur Inception
    features punish); the critic asks for a sharp texture instead, and the reconstruction loss keeps its content."""

    weight: float = 0.0
    start: int = 0
    critic_lr: float = 2e-4
    r1: float = 0.0
    width: int = 32

    def __post_init__(self) -> None:
        for ok, message in ((self.weight >= 0, f"--adversarial-weight {self.weight}: must be >= 0"),
                            (self.start >= 0, f"--adversarial-start {self.start}: must be >= 0"),
                            (self.critic_lr > 0, f"--critic-lr {self.critic_lr}: must be > 0"),
                            (self.r1 >= 0, f"--critic-r1 {self.r1}: must be >= 0")):
            if not ok:
                raise InputError(message)

    def record(self) -> dict[str, Any]:
        return {"adversarial_weight": self.weight, "adversarial_start": self.start, "critic_lr": self.critic_lr,
                "critic_r1": self.r1, "critic_width": self.width}


def adaptive_balance(reconstruction: torch.Tensor, adversarial: torch.Tensor, last: torch.nn.Parameter) -> torch.Tensor:
    """VQGAN's weight ‖∇_last reconstruction‖ / ‖∇_last adversarial‖ (clamped to [0, 10⁴], no gradient)."""
    (g_rec,) = torch.autograd.grad(reconstruction, last, retain_graph=True)
    (g_adv,) = torch.autograd.grad(adversarial, last, retain_graph=True)
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0, 1e4).detach()


def finetune_decoder(vae: AutoencoderKL, images: torch.Tensor, steps: int, lr: float = 1e-3, batch: int = 64,
                     seed: int = 0, show: bool = True, adversarial: AdversarialDecoderTerm | None = None,
                     samples: torch.Tensor | None = None, latent_noise: float = 0.0) -> dict[str, Any]:
    """Train `vae`'s decoder in place for `steps` on `images` ([-1, 1], the encoder's input) with L1 + MSE (plus the
    adversarial term when `adversarial.weight` > 0).

    `samples`: latents in the VAE's space with no image to match (a one-step student's outputs): each step also
    decodes a batch of them, and the critic judges those images too (the GAN term is all they get), so the decoder
    learns to turn the latents the student really produces into images like the data.

    `latent_noise` σ (in the diffusion latent space, i.e. after the VAE's scaling factor): each training latent gets
    N(0, σ²) on top of the posterior's own spread, so the decoder learns to draw the clean image from a latent a
    little off the encoder's — what a one-step student hands it (a student's latents miss its teacher's by ≈ 0.1 RMS,
    three times the posterior's spread, and iid noise of that size costs the teacher's samples 8.5 FID).

    Returns what the model card records (steps, images, seconds, final loss). The encoder's weights are untouched
    (checked by tests/test_decoder_finetune.py)."""
    if steps < 1:
        raise InputError(f"--steps {steps}: need at least 1 decoder step")
    if len(images) < batch:
        raise InputError(f"{len(images)} training images: need at least one batch of {batch}")
    adversarial = adversarial or AdversarialDecoderTerm()
    if latent_noise < 0:
        raise InputError(f"--latent-noise {latent_noise}: must be >= 0")
    if samples is not None and adversarial.weight <= 0:
        raise InputError("decoding student samples needs --adversarial-weight > 0: the critic is their only loss")
    start = time.perf_counter()
    vae.requires_grad_(False)
    vae.eval()
    mean, std = posterior_moments(vae, images)
    extra = latent_noise / float(vae.config.scaling_factor)  # σ in the VAE's own (unscaled) units
    std = (std**2 + extra**2).sqrt() if extra > 0 else std
    params = decoder_parameters(vae)
    for param in params:
        param.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps))
    generator = torch.Generator().manual_seed(seed)
    critic = _critic(adversarial, int(images.shape[1]), seed) if adversarial.weight > 0 else None
    last = vae.decoder.conv_out.weight
    smooth: dict[str, float] = {}
    with TrainingProgress("decoder", steps, enabled=show) as bar:
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(images), (batch,), generator=generator)
            latents = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=generator)
            target = images[idx]
            recon = vae.decode(latents).sample
            reconstruction = F.l1_loss(recon, target) + F.mse_loss(recon, target)
            stats = {"loss": reconstruction.item()}
            loss = reconstruction
            fakes = recon
            if samples is not None:  # the student's latents: no target, the critic only
                rows = torch.randint(0, len(samples), (batch,), generator=generator)
                fakes = torch.cat([recon, vae.decode(samples[rows]).sample])
            if critic is not None and step > adversarial.start:
                fake = critic.generator_loss(fakes)
                balance = adaptive_balance(reconstruction, fake, last)
                loss = loss + adversarial.weight * balance * fake
                stats.update(adv=fake.item(), balance=balance.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if critic is not None:
                stats["critic"] = critic.update(target, fakes)
            smooth = {k: v if k not in smooth else 0.98 * smooth[k] + 0.02 * v for k, v in stats.items()}
            if step % 10 == 0 or step == steps:
                bar.update(step, **smooth)
    vae.requires_grad_(False)
    record = {"steps": steps, "lr": lr, "batch": batch, "seed": seed, "images": len(images),
              **({"latent_noise": latent_noise} if latent_noise > 0 else {}),
              "loss": round(smooth.get("loss", 0.0), 5), "seconds": round(time.perf_counter() - start, 1)}
    if critic is not None:
        record.update(adversarial.record(), critic_loss=round(smooth.get("critic", 0.0), 5))
    if samples is not None:
        record["student_samples"] = len(samples)
    return record


def _critic(term: AdversarialDecoderTerm, channels: int, seed: int):
    """The image patch critic (critic.py, written once with the distiller's), seeded on its own; a CPU/GPU
    Accelerator only to run its update (the decoder fine-tune is one process, no checkpoints)."""
    from accelerate import Accelerator

    from cdx.distill.critic import AdversarialCritic, seeded_critic

    return AdversarialCritic(Accelerator(), seeded_critic(seed + 7, channels, term.width), term.critic_lr, r1=term.r1)


@torch.no_grad()
def reconstruction_rmse(vae: AutoencoderKL, images: torch.Tensor, batch: int = 500) -> float:
    """Pixel RMSE ([-1, 1] units) of decode(posterior mean): the autoencoder's own ceiling, before any diffusion."""
    total, count = 0.0, 0
    for start in range(0, len(images), batch):
        x = images[start:start + batch]
        recon = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        total += float(((recon - x) ** 2).sum())
        count += x.numel()
    return math.sqrt(total / count)


def _copy_with_vae(source: Path, out: Path, vae: AutoencoderKL, record: dict[str, Any], overwrite: bool,
                   keep_replaced_as: str | None = None) -> None:
    """`source` copied to `out` (atomically) with `vae/` replaced and the fine-tune recorded in cdx.json."""
    from cdx.distill.stage_folder import copy_with_component

    copy_with_component(source, out, "vae", vae, "decoder_finetune", record, overwrite,
                        keep_replaced_as=keep_replaced_as)


def finetune_pipeline_decoder(teacher: str | Path, out: str | Path, steps: int, data: str | Path | None = None,
                              limit: int | None = 20000, lr: float = 1e-3, batch: int = 64, seed: int = 0,
                              students: tuple[tuple[str | Path, str | Path], ...] = (), overwrite: bool = False,
                              show: bool = True, adversarial: AdversarialDecoderTerm | None = None,
                              latent_noise: float = 0.0) -> dict[str, Any]:
    """Fine-tune the decoder of the teacher folder's `vae/` on its training data; write the teacher (and any
    (student, student_out) pairs that share its VAE) with the new decoder. Returns the record kept in cdx.json."""
    from cdx.atomic import sha256_file

    teacher = Path(teacher)
    if not (teacher / "vae").is_dir():
        raise InputError(f"--teacher {teacher}: no vae/ folder (expected a diffusers pipeline folder)")
    reference = teacher / "vae" / "diffusion_pytorch_model.safetensors"
    for student, _ in students:
        theirs = Path(student) / "vae" / "diffusion_pytorch_model.safetensors"
        if not theirs.is_file() or sha256_file(theirs) != sha256_file(reference):
            raise InputError(f"--student {student}: its vae/ is not the teacher's (sha256 differs); only a student that "
                             f"decodes with the teacher's VAE can take the fine-tuned decoder")
    vae, images = _vae_and_images(teacher, data, limit)
    record = _finetune_with_record(vae, images, data, steps, lr, batch, seed, show, adversarial,
                                   latent_noise=latent_noise)
    _copy_with_vae(teacher, Path(out), vae, record, overwrite)
    for student, student_out in students:
        _copy_with_vae(Path(student), Path(student_out), vae, record, overwrite)
    return record


def _vae_and_images(folder: Path, data: str | Path | None, limit: int | None) -> tuple[AutoencoderKL, torch.Tensor]:
    """The folder's VAE and its training images ([-1, 1], at most `limit`)."""
    from cdx.distill.data import load_dataset, load_image_folder

    vae = AutoencoderKL.from_pretrained(folder / "vae")
    if vae.config.in_channels not in (1, 3):
        raise InputError(f"{folder / 'vae'}: in_channels {vae.config.in_channels}; expected 1 or 3")
    size, channels = int(vae.config.sample_size), int(vae.config.in_channels)
    if channels == 1:
        dataset = load_dataset(data, "train", size, limit)
    elif data is None:
        raise InputError(f"{folder / 'vae'} takes RGB images: pass --data (a folder of images or class subfolders)")
    else:
        dataset = load_image_folder(data, size, channels=channels)
    return vae, dataset.images[:limit] if limit else dataset.images


def _finetune_with_record(vae: AutoencoderKL, images: torch.Tensor, data: str | Path | None, steps: int, lr: float,
                          batch: int, seed: int, show: bool, adversarial: AdversarialDecoderTerm | None,
                          samples: torch.Tensor | None = None, latent_noise: float = 0.0) -> dict[str, Any]:
    from cdx.machine import describe_machine

    before = reconstruction_rmse(vae, images[:1000])
    record = finetune_decoder(vae, images, steps, lr, batch, seed, show, adversarial, samples, latent_noise)
    record.update({"data": str(data) if data else "Fashion-MNIST train (Debian dataset-fashion-mnist)",
                   "rmse_first_1000_before": round(before, 4),
                   "rmse_first_1000_after": round(reconstruction_rmse(vae, images[:1000]), 4),
                   "machine": describe_machine("cpu")})
    return record


SAMPLE_SEED_OFFSET = 1_000_003  # the student's training samples never reuse `cdx evaluate`'s seeds (0, 1, …)


@torch.no_grad()
def student_sample_latents(student: Path, count: int, seed: int = 0, batch: int = 250,
                           show: bool = True) -> torch.Tensor:
    """`count` one-step samples of the student folder as latents in its VAE's space (scaling undone), conditions
    cycling over its classes / prompts, at its default guidance; seeds start at SAMPLE_SEED_OFFSET + seed."""
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline, read_cdx_info
    from cdx.distill.sampling import consistency_latents

    parts = load_latent_pipeline(student)
    cond = TeacherConditioning(parts, parts.class_names)
    parameterization = read_cdx_info(student).get("parameterization", "lcm")
    conditions = max(1, len(parts.class_names or []))
    chunks = []
    with TrainingProgress("student samples", count, enabled=show) as bar:
        for start in range(0, count, batch):
            labels = torch.arange(start, min(count, start + batch)) % conditions
            latents = consistency_latents(parts.unet, parts, cond, labels, steps=1, guidance=parts.default_guidance,
                                          parameterization=parameterization, seed=SAMPLE_SEED_OFFSET + seed + start)
            chunks.append(latents / parts.latent_scaling_factor + (parts.latent_shift_factor or 0.0))
            bar.update(start + len(labels))
    return torch.cat(chunks)


def finetune_student_decoder(student: str | Path, out: str | Path, steps: int, data: str | Path | None = None,
                             limit: int | None = 20000, lr: float = 2e-4, batch: int = 64, seed: int = 0,
                             adversarial: AdversarialDecoderTerm | None = None, samples: int = 10000,
                             overwrite: bool = False, show: bool = True, latent_noise: float | str = 0.0,
                             teacher: str | Path | None = None, miss_samples: int = 256) -> dict[str, Any]:
    """Fine-tune a student folder's decoder for its own one-step samples (encoder frozen): the reconstruction loss on
    real images keeps what the decoder draws, and the critic judges both those reconstructions and the decodes of
    `samples` one-step samples (0: none); `latent_noise` trains it on latents as far off the encoder's as the
    student's are ("auto": σ = the measured RMS miss of its one-step latents from `teacher`'s ODE endpoints over
    `miss_samples` samples, see `one_step_miss`; the record keeps the measurement). Write the student with the new
    decoder to `out` as its one-step decoder (`vae/`); the decoder it had stays as `multistep_vae/` for 2+ steps
    (unless it has one). Returns the cdx.json record (its `student_samples` marks a student's own decoder fit, 0
    included)."""
    student = Path(student)
    if not (student / "vae").is_dir() or not (student / "unet").is_dir():
        raise InputError(f"--student {student}: no vae/ and unet/ folders (expected a cdx student pipeline folder)")
    if samples < 0:
        raise InputError(f"--samples {samples}: must be >= 0")
    if samples and samples < batch:
        raise InputError(f"--samples {samples}: need 0 or at least one batch of {batch}")
    if not samples and not latent_noise:
        raise InputError("--samples 0 without --latent-noise: nothing would fit the decoder to the student (pass "
                         "student samples for the critic, or --latent-noise)")
    adversarial = adversarial or AdversarialDecoderTerm()
    if samples and adversarial.weight <= 0:
        raise InputError("cdx student finetune-decoder needs --adversarial-weight > 0: the critic is what fits the "
                         "decoder to the student's samples")
    measured = None
    if latent_noise == "auto":
        from cdx.distill.one_step_miss import measure_one_step_miss

        measured = measure_one_step_miss(student, teacher, miss_samples, seed=seed, show=show)
        latent_noise = measured["rms"]
    vae, images = _vae_and_images(student, data, limit)
    latents = student_sample_latents(student, samples, seed, show=show) if samples else None
    record = _finetune_with_record(vae, images, data, steps, lr, batch, seed, show, adversarial, latents,
                                   float(latent_noise))
    record["student_samples"] = samples
    if measured:
        record["latent_noise_measured"] = measured
    # The new decoder is for one-step samples; 2+ steps keep decoding with the decoder the student had.
    _copy_with_vae(student, Path(out), vae, record, overwrite, keep_replaced_as=MULTISTEP_VAE)
    return record
