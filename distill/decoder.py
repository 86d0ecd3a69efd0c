"""`cdx distill-decoder`: train a diffusers `AutoencoderTiny` (TAESD's architecture) to reproduce a pipeline's VAE
decoder, so the one-step generator's dominant cost — the decoder — shrinks (issue 13).

Each batch holds latents the decoder will really see: the teacher VAE's latents of training images and the one-step
student's samples (cdx's own generator, `OneStepGenerator.denoise`, guidance w drawn from its distilled range). The
target is the teacher decoder's image of the same latents; the loss is L1 and/or L2 in pixels, plus an optional hinge
adversarial term from a small patch discriminator trained here (no downloaded perceptual network: LPIPS backbones are
not available offline, and the MobileNetV2 weights on PyPI are a pickled torchvision file, which cdx does not load).
The tiny encoder is trained alongside (MSE to the teacher's scaled latents of the images), so the folder is a whole
`AutoencoderTiny` that diffusers pipelines take as `vae=`; generation uses only its decoder.

Latent convention: TAESD's (see `decoder_swap`): `scaling_factor` 1.0, the decoder takes the diffusion latents as the
student produces them and returns [-1, 1] images like the teacher's decoder.

Runs through 🤗 Accelerate like distillation (`distiller.py`): seeded CPU draws, the checkpoints of `checkpoint.py`
(exact resume, refused with other options), the progress bar of `progress.py`, an atomic output folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderTiny
from torch import nn

from cdx.distill.critic import AdversarialCritic, PatchDiscriminator
from cdx.distill.loading import LatentPipelineParts
from cdx.errors import CdxError, InputError

PIXEL_LOSSES = ("l1", "l2", "l1+l2")
INFO_FILE = "cdx.json"


@dataclass
class DecoderDistillConfig:
    """Every knob of a decoder distillation run (saved into the folder's cdx.json)."""

    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3  # peak; cosine decay to 10 % over `steps` (a pure function of the step: resume needs no state)
    width: int = 64  # channels of every block (AutoencoderTiny's blocks need one width); TAESD: 64
    depth: int = 3  # AutoencoderTinyBlocks per level (the last decoder level has one); TAESD: 3
    sample_fraction: float = 0.5  # share of each batch drawn from the one-step student (rest: training images)
    pixel_loss: str = "l1+l2"
    adversarial_weight: float = 0.0  # > 0: hinge GAN term from a patch discriminator trained here
    adversarial_start: int = 0  # step the adversarial term starts at (pixel loss alone before)
    encoder_weight: float = 1.0  # 0: leave the tiny encoder untrained (generation does not use it)
    mixed_precision: str = "no"
    checkpoint_every: int = 500
    seed: int = 0
    resolution: int | None = None  # training image side; None = the teacher's
    validation_size: int = 64  # held-out latents of each kind for the drift on the card
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        from cdx.distill.distiller import MIXED_PRECISION

        checks = [
            (self.steps >= 1, f"--steps {self.steps}: must be >= 1"),
            (self.batch_size >= 2, f"--batch-size {self.batch_size}: must be >= 2"),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (self.width >= 1, f"--width {self.width}: must be >= 1"),
            (self.depth >= 1, f"--depth {self.depth}: must be >= 1"),
            (0.0 <= self.sample_fraction <= 1.0, f"--sample-fraction {self.sample_fraction}: must be in [0, 1]"),
            (self.pixel_loss in PIXEL_LOSSES, f"unknown --pixel-loss {self.pixel_loss!r}; valid: {', '.join(PIXEL_LOSSES)}"),
            (self.adversarial_weight >= 0, f"--adversarial-weight {self.adversarial_weight}: must be >= 0"),
            (self.adversarial_start >= 0, f"--adversarial-start {self.adversarial_start}: must be >= 0"),
            (self.encoder_weight >= 0, f"--encoder-weight {self.encoder_weight}: must be >= 0"),
            (self.mixed_precision in MIXED_PRECISION,
             f"unknown --mixed-precision {self.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every {self.checkpoint_every}: must be >= 1"),
            (self.validation_size >= 2, f"--validation-size {self.validation_size}: must be >= 2"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)

    @property
    def samples_per_batch(self) -> int:
        return round(self.batch_size * self.sample_fraction)


def build_tiny_autoencoder(parts: LatentPipelineParts, width: int, depth: int) -> AutoencoderTiny:
    """An AutoencoderTiny with the teacher VAE's channels and spatial factor, `width` channels and `depth` blocks per
    level, TAESD's latent convention (scaling_factor 1, shift 0)."""
    levels = int(math.log2(parts.vae_scale_factor)) + 1
    config = parts.vae.config
    return AutoencoderTiny(
        in_channels=int(config.in_channels), out_channels=int(config.out_channels),
        encoder_block_out_channels=(width,) * levels, decoder_block_out_channels=(width,) * levels,
        num_encoder_blocks=(1,) + (depth,) * (levels - 1), num_decoder_blocks=(depth,) * (levels - 1) + (1,),
        latent_channels=parts.latent_channels, scaling_factor=1.0, shift_factor=0.0,
    )


def pixel_loss(prediction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    diff = prediction.float() - target.float()
    l1, l2 = diff.abs().mean(), diff.pow(2).mean()
    return {"l1": l1, "l2": l2, "l1+l2": l1 + l2}[kind]


def tiny_decode(tiny: nn.Module, latents: torch.Tensor) -> torch.Tensor:
    """The tiny decoder's [-1, 1] image of diffusion latents, with its own factors (as `decode_latents` does)."""
    shift = float(getattr(tiny.config, "shift_factor", 0.0) or 0.0)
    return tiny.decode(latents / float(tiny.config.scaling_factor) + shift).sample


class TinyAutoencoderStep(nn.Module):
    """What one training step runs through the tiny autoencoder, as one `forward` (so DDP syncs its gradients):
    the decoder's image of the latents and, when images are given, the encoder's scaled latents of them."""

    def __init__(self, tiny: AutoencoderTiny):
        super().__init__()
        self.tiny = tiny

    def forward(self, latents: torch.Tensor, images: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        decoded = tiny_decode(self.tiny, latents)
        if images is None:
            return decoded, None
        config = self.tiny.config
        encoded = self.tiny.encode(images).latents
        return decoded, (encoded.float() - float(getattr(config, "shift_factor", 0.0) or 0.0)) * float(config.scaling_factor)


class DecoderDistiller:
    """Holds the frozen teacher VAE + student generator and the trainable tiny autoencoder; runs/resumes the loop."""

    def __init__(self, parts: LatentPipelineParts, data: Any, config: DecoderDistillConfig, work_dir: Path):
        from accelerate import Accelerator

        from cdx.distill.batches import BatchStream
        from cdx.distill.conditioning import TeacherConditioning
        from cdx.distill.distiller import WEIGHT_DTYPES, cpu_ranks, teacher_resolution
        from cdx.distill.generator import build_generator
        from cdx.distill.sources import as_source, example_prompts

        config.validate()
        self.config, self.work_dir, self.parts = config, Path(work_dir), parts
        self.accelerator = acc = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu_ranks())
        self.device, self.rank = acc.device, acc.process_index
        torch.manual_seed(config.seed)
        size = config.resolution or teacher_resolution(parts)
        if size <= 0 or size % parts.vae_scale_factor:
            raise InputError(f"--resolution {size}: must be a positive multiple of the VAE factor {parts.vae_scale_factor}")
        self.latent_hw = (size // parts.vae_scale_factor,) * 2
        source = as_source(data, size, int(parts.vae.config.in_channels))
        self.images_per_batch = config.batch_size - config.samples_per_batch
        self.batches = BatchStream(source, max(1, self.images_per_batch), config.seed, self.rank, acc.num_processes)
        self.validation = BatchStream(source, config.validation_size, config.seed + 7919, self.rank, acc.num_processes)
        self.class_names = list(source.class_names)
        weight_dtype = WEIGHT_DTYPES[acc.mixed_precision]
        parts.unet.eval().requires_grad_(False).to(self.device, weight_dtype)
        parts.vae.eval().requires_grad_(False).to(self.device, weight_dtype)
        if parts.text_encoder is not None:
            parts.text_encoder.eval().requires_grad_(False).to(self.device, weight_dtype)
        self.cond = TeacherConditioning(parts, example_prompts(parts, source) or ["an image"])
        self.generator, _ = build_generator(parts, 1, latent_hw=self.latent_hw)
        self.tiny = build_tiny_autoencoder(parts, config.width, config.depth).train()
        step_module = TinyAutoencoderStep(self.tiny)
        self.optimizer = torch.optim.Adam(self.tiny.parameters(), lr=config.lr)
        self.adversarial = config.adversarial_weight > 0
        self.step_module, self.optimizer = acc.prepare(step_module, self.optimizer)
        if self.adversarial:  # prepared after the autoencoder: the checkpoint's model_1 / optimizer_1
            self.critic = AdversarialCritic(acc, PatchDiscriminator(int(parts.vae.config.out_channels)), config.lr)
        self.tiny = acc.unwrap_model(self.step_module).tiny  # the same parameters, on the device
        self.rng = torch.Generator().manual_seed(config.seed + 1_000_003 * self.rank)
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ---- the batch ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def student_latents(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` one-step student samples (the latents its generator hands the decoder), conditioning and w drawn
        from `generator`."""
        parts = self.parts
        shape = (count, parts.latent_channels, *self.latent_hw)
        noise = torch.randn(shape, generator=generator)
        cond: dict[str, torch.Tensor] = {}
        if parts.conditioning == "class_label":
            cond["class_label"] = torch.randint(0, max(1, parts.num_classes or 1), (count,), generator=generator)
        elif parts.conditioning == "text_embedding":
            rows = torch.randint(0, len(self.cond.embeddings), (count,), generator=generator)
            cond["text_embedding"] = self.cond.embeddings[rows.to(self.cond.embeddings.device)]
        if parts.guidance_embedding_dim:
            low, high = parts.guidance_range or (1.0, 8.0)
            cond["guidance_scale"] = low + (high - low) * torch.rand(count, generator=generator)
        cond = {k: v.to(self.device) for k, v in cond.items()}
        with self.accelerator.autocast():
            return self.generator.denoise(noise.to(self.device), **cond).float()

    @torch.no_grad()
    def teacher_images(self, latents: torch.Tensor) -> torch.Tensor:
        """The teacher decoder's [-1, 1] image of diffusion latents (clamped to the range the decode maps to [0, 1])."""
        parts = self.parts
        with self.accelerator.autocast():
            image = parts.vae.decode(latents / parts.latent_scaling_factor + (parts.latent_shift_factor or 0.0)).sample
        return image.float().clamp(-1.0, 1.0)

    def draw_batch(self, stream, step: int, images: int, samples: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """`images` image latents (batch `step` of `stream`) then `samples` student samples; the teacher's images of
        them (`target`) and the training images (`images`, for the encoder) when the data has images."""
        from cdx.distill.latent_cache import encode_latents

        out: dict[str, torch.Tensor] = {}
        latents = []
        if images:
            data = stream.batch(step)
            if "latents" in data:  # a latent cache: no images, so no encoder training on this batch
                latents.append(data["latents"].to(self.device))
            else:
                out["images"] = data["images"].to(self.device)
                with self.accelerator.autocast():
                    latents.append(encode_latents(self.parts, data["images"]).to(self.device))
        if samples:
            latents.append(self.student_latents(samples, generator))
        out["latents"] = torch.cat(latents)
        out["target"] = self.teacher_images(out["latents"])
        return out

    # ---- one optimisation step ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, float]:
        """One update of the tiny autoencoder (and of the critic, with the adversarial term); returns its losses."""
        cfg, acc = self.config, self.accelerator
        b = self.draw_batch(self.batches, self.step, self.images_per_batch, cfg.samples_per_batch, self.rng)
        lr = cfg.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(self.step, cfg.steps) / cfg.steps)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        train_encoder = cfg.encoder_weight > 0 and "images" in b
        use_adv = self.adversarial and self.step >= cfg.adversarial_start
        with acc.autocast():
            prediction, encoded = self.step_module(b["latents"], b["images"] if train_encoder else None)
            pixel = pixel_loss(prediction, b["target"], cfg.pixel_loss)
            loss = pixel
            stats = {"pixel": float(pixel.detach())}
            if encoded is not None:
                enc = F.mse_loss(encoded, b["latents"][: len(encoded)])
                loss = loss + cfg.encoder_weight * enc
                stats["encoder"] = float(enc.detach())
            if use_adv:
                adv = self.critic.generator_loss(prediction)
                loss = loss + cfg.adversarial_weight * adv
                stats["adversarial"] = float(adv.detach())
        acc.backward(loss)
        acc.clip_grad_norm_(self.tiny.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if use_adv:  # the teacher decoder's images are real, the tiny decoder's fake
            stats["critic"] = self.critic.update(b["target"], prediction)
        stats["loss"] = float(loss.detach())
        return stats

    # ---- checkpoints --------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def architecture(self) -> dict[str, Any]:
        """What a checkpoint must match besides the config: the teacher, the tiny config, the number of processes."""
        config = {k: v for k, v in dict(self.tiny.config).items() if not k.startswith("_")}
        return {"teacher_weights_sha256": self.parts.weights_sha256, "processes": self.accelerator.num_processes,
                "tiny_config": json.loads(json.dumps(config, sort_keys=True, default=str))}

    def save(self) -> Path:
        from cdx.distill.checkpoint import save_checkpoint

        meta = {"history": self.history, "config": self.config.as_dict(), "architecture": self.architecture()}
        return save_checkpoint(self.accelerator, self.checkpoint_dir, self.step, {}, self.rng, meta)

    def resume(self) -> int:
        from cdx.distill.checkpoint import check_resumable, latest_checkpoint, load_checkpoint, read_checkpoint_state

        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return 0
        check_resumable(read_checkpoint_state(path), self.config.as_dict(), self.architecture(), path)
        state, _ = load_checkpoint(self.accelerator, path, self.rng)
        self.step, self.history = int(state["step"]), list(state["history"])
        return self.step

    # ---- the loop -----------------------------------------------------------------------------------------
    def run(self, show: bool = True, stop_at: int | None = None) -> None:
        from cdx.distill.checkpoint import latest_checkpoint
        from cdx.distill.progress import TrainingProgress

        acc, cfg = self.accelerator, self.config
        end = min(cfg.steps, stop_at or cfg.steps)
        with TrainingProgress("distill-decoder", cfg.steps, start=self.step, enabled=show and acc.is_main_process) as bar:
            started, first = time.perf_counter(), self.step
            smooth = self.history[-1]["pixel"] if self.history else None
            while self.step < end:
                stats = self.train_step()
                stats = {k: float(acc.reduce(torch.tensor(v, device=self.device), "mean")) for k, v in stats.items()}
                if not math.isfinite(stats["loss"]):
                    raise CdxError(f"NaN/inf loss at step {self.step + 1}; stopped. Last good checkpoint: "
                                   f"{latest_checkpoint(self.checkpoint_dir) or 'none'} (lower --lr)")
                self.step += 1
                self.history.append(stats)
                smooth = stats["pixel"] if smooth is None else 0.95 * smooth + 0.05 * stats["pixel"]
                seen = (self.step - first) * cfg.batch_size * acc.num_processes
                bar.update(self.step, pixel=stats["pixel"], ema_pixel=smooth,
                           img_per_s=seen / max(time.perf_counter() - started, 1e-9))
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()

    # ---- outputs ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def drift(self) -> dict[str, Any]:
        """PSNR / SSIM / max |Δ| of the tiny decoder's images vs the teacher decoder's on held-out latents: image latents
        (a seeded draw of the training data) and fresh one-step student samples (a generator the training never used)."""
        from cdx.distill.decoder_swap import image_drift

        model = self.tiny.eval()
        n = self.config.validation_size
        batch = self.draw_batch(self.validation, 0, n, n, torch.Generator().manual_seed(self.config.seed + 424_242))
        with self.accelerator.autocast():
            tiny = tiny_decode(model, batch["latents"]).float()
        full01 = ((batch["target"] + 1) / 2).clamp(0, 1).cpu().numpy()
        tiny01 = ((tiny + 1) / 2).clamp(0, 1).cpu().numpy()
        images = len(batch["latents"]) - n
        out: dict[str, Any] = {"n": {"image_latents": images, "student_samples": n}}
        if images:
            out["image_latents"] = image_drift(full01[:images], tiny01[:images])
        out["student_samples"] = image_drift(full01[images:], tiny01[images:])
        model.train()
        return out

    def save_decoder(self, folder: Path, seconds: float, command: str, final: Path | None = None) -> dict[str, Any]:
        """The tiny autoencoder (diffusers folder, safetensors) + cdx.json (recipe, time, machine, drift) + model card."""
        from cdx.atomic import atomic_write_text
        from cdx.defaults import portable_path
        from cdx.distill.decoder_swap import vae_decoder_sha256
        from cdx.machine import describe_machine

        drift = self.drift()
        model = self.tiny.eval()
        model.save_pretrained(folder, safe_serialization=True)
        first = self.history[: max(1, len(self.history) // 20)]
        last = self.history[-max(1, len(self.history) // 20):]
        info = {
            "kind": "tiny_decoder", "folder": portable_path(str(final or folder)), "teacher": portable_path(self.parts.path),
            "teacher_weights_sha256": self.parts.weights_sha256,
            "teacher_vae_class": type(self.parts.vae).__name__,
            "teacher_decoder_sha256": vae_decoder_sha256(self.parts.vae),
            "teacher_latent_scaling_factor": self.parts.latent_scaling_factor,
            "teacher_latent_shift_factor": self.parts.latent_shift_factor,
            "decoder_parameters": sum(p.numel() for p in model.decoder.parameters()),
            "teacher_decoder_parameters": sum(p.numel() for p in self.parts.vae.decoder.parameters()),
            "encoder_trained": self.config.encoder_weight > 0,
            "recipe": self.config.as_dict(), "command": command, "steps": self.step,
            "train_seconds": round(seconds, 1), "machine": describe_machine(str(self.device)),
            "pixel_loss_first": sum(h["pixel"] for h in first) / len(first),
            "pixel_loss_last": sum(h["pixel"] for h in last) / len(last),
            "drift": drift,
        }
        atomic_write_text(folder / INFO_FILE, json.dumps(info, indent=2) + "\n")
        from cdx.distill.decoder_card import write_decoder_card

        write_decoder_card(folder, info)
        return info


def decoder_command(config: DecoderDistillConfig, model: str, out: str, data: str | None, limit: int | None) -> str:
    """The `cdx distill-decoder` command line that reproduces `config` (non-default flags only)."""
    from cdx.defaults import portable_path

    default = DecoderDistillConfig().as_dict()
    parts = ["cdx distill-decoder", f"--model {portable_path(model)}", f"--out {out}"]
    if data:
        parts.append(f"--data {data}")
    if limit:
        parts.append(f"--limit {limit}")
    for key, value in config.as_dict().items():
        if key != "extra" and value != default[key]:
            parts.append(f"--{key.replace('_', '-')} {value}")
    return " ".join(parts)


def distill_decoder(model: str | Path, out: Path, config: DecoderDistillConfig, data: Any = None,
                    work_dir: Path | None = None, resume: bool = True, overwrite: bool = False, limit: int | None = None,
                    show: bool = True, command: str | None = None) -> dict[str, Any]:
    """Distill the VAE decoder of the pipeline at `model` (a student: its UNet makes the sample latents) into a tiny
    AutoencoderTiny folder at `out`; checkpoints go to `work_dir` (default OUT.work)."""
    from accelerate import PartialState

    from cdx.atomic import atomic_directory, refuse_existing
    from cdx.distill.checkpoint import prepare_work_dir, resume_and_run
    from cdx.distill.distiller import cpu_ranks, teacher_resolution
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sources import open_source

    config.validate()
    refuse_existing(out, overwrite)
    parts = load_latent_pipeline(model)
    work = Path(work_dir) if work_dir else Path(str(out) + ".work")
    state = PartialState(cpu=cpu_ranks())
    if state.is_main_process:
        prepare_work_dir(work, resume)
    state.wait_for_everyone()
    show = show and state.is_main_process
    data_spec = str(data) if isinstance(data, str | Path) else None
    if data is None or isinstance(data, str | Path):
        data = open_source(data, config.resolution or teacher_resolution(parts), int(parts.vae.config.in_channels), limit,
                           cache_dir=work / "hf-datasets")
    distiller = DecoderDistiller(parts, data, config, work)
    start, seconds = resume_and_run(distiller, resume, show)
    info: dict[str, Any] = {}
    if state.is_main_process:
        text = command or decoder_command(config, str(model), str(out), data_spec, limit)
        with atomic_directory(out, overwrite=overwrite) as staging:
            info = distiller.save_decoder(staging, seconds, text, final=Path(out))
    state.wait_for_everyone()
    return {"steps": distiller.step, "resumed_from": start, "seconds": seconds, "history": distiller.history,
            "info": info, "main_process": state.is_main_process}
