"""Latent consistency distillation (Song et al. 2023; LCM, Luo et al. 2023) of any diffusers latent teacher.

Per step: x₀ latents from real images → x_{t_{n+k}} = add_noise → the teacher's ODE solver (DDIM/Euler/Heun, with
classifier-free guidance w) gives x_{t_n} → loss between the student's f(x_{t_{n+k}}, t_{n+k}, w) and the target
network's f(x_{t_n}, t_n, w), where f = c_skip·x + c_out·x̂₀ and the target is an EMA of the student.
For conditional teachers w is distilled into the student through LCM's `timestep_cond` embedding (the student
UNet gets `time_cond_proj_dim`, its new projection zero-initialised so the student starts as the teacher).
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import LCMScheduler, UNet2DConditionModel

from cdx.defaults import portable_path
from cdx.distill.batches import BatchStream, DataOptions
from cdx.distill.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from cdx.distill.conditioning import TeacherConditioning
from cdx.distill.consistency import alphas_cumprod, boundary_scalings, guidance_scale_embedding, predicted_x0
from cdx.distill.consistency_training import make_method
from cdx.distill.data import ImageDataset
from cdx.distill.latent_cache import encode_latents
from cdx.distill.loading import LatentPipelineParts
from cdx.distill.losses import consistency_loss
from cdx.distill.progress import TrainingProgress
from cdx.distill.solvers import skipping_timesteps, solver_step
from cdx.distill.sources import DataSource, as_source
from cdx.errors import CdxError, InputError


@dataclass
class DistillConfig:
    """Every knob of a distillation run (saved into the student's cdx.json)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-4
    lr_warmup_steps: int = 0  # linear warm-up; Adam's first full-size step perturbs a converged teacher copy
    ema_decay: float = 0.95
    solver: str = "ddim"
    num_solver_steps: int = 50  # N; skipping step k = T / N
    parameterization: str = "lcm"
    loss: str = "huber"
    huber_c: float = 0.001
    guidance_range: tuple[float, float] = (1.0, 4.0)  # CFG scale g sampled uniformly; w-embedding of g - 1
    guidance_embedding_dim: int = 256
    gradient_accumulation: int = 1
    mixed_precision: str = "no"
    checkpoint_every: int = 250
    sample_every: int = 250
    seed: int = 0
    caption_dropout: float = 0.0  # text teachers: a caption becomes "" with this probability (LCM scripts)
    resolution: int | None = None  # training image side; None = the teacher's (UNet sample_size × VAE factor)
    method: str = "cd"  # cd (teacher) | ct | ect | bootstrap (teacher-free: distill/consistency_training.py)
    variance_reduction: bool = False  # teacher-free methods: batch posterior-weighted x̂₀ in the target
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_student(teacher_unet: torch.nn.Module, guided: bool, embedding_dim: int) -> torch.nn.Module:
    """Student = teacher copy; guided students get `time_cond_proj_dim` with a zero-initialised projection."""
    if not guided or getattr(teacher_unet.config, "time_cond_proj_dim", None):
        return copy.deepcopy(teacher_unet).train().requires_grad_(True)
    if not isinstance(teacher_unet, UNet2DConditionModel):
        raise InputError("guidance distillation needs a UNet2DConditionModel teacher")
    student = UNet2DConditionModel.from_config(teacher_unet.config, time_cond_proj_dim=embedding_dim)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.train().requires_grad_(True)


def teacher_resolution(parts: LatentPipelineParts) -> int:
    """The image side the teacher was made for: its UNet's latent sample_size times the VAE's spatial factor."""
    return int(parts.unet.config.sample_size) * parts.vae_scale_factor


class ConsistencyDistiller:
    """Holds teacher, student and target, and runs/resumes the loop."""

    def __init__(self, parts: LatentPipelineParts, data: ImageDataset | DataSource, config: DistillConfig, work_dir: Path,
                 data_options: DataOptions | None = None):
        from accelerate import Accelerator

        if parts.scheduler_config.get("prediction_type", "epsilon") != "epsilon":
            raise InputError(f"{parts.path}: scheduler prediction_type "
                             f"{parts.scheduler_config.get('prediction_type')!r} is not supported (need 'epsilon')")
        self.parts, self.config, self.work_dir = parts, config, Path(work_dir)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=config.gradient_accumulation)
        torch.manual_seed(config.seed)
        self.batches = self._open_data(data, data_options or DataOptions())
        source = self.batches.source  # grid rows: example captions for text teachers, else the class names
        self.grid_prompts = source.example_prompts() if parts.conditioning == "text_embedding" else list(source.class_names)
        self.cond = TeacherConditioning(parts, self.grid_prompts or ["an image"])
        self.teacher = parts.unet.eval().requires_grad_(False)
        self.student = make_student(self.teacher, self.cond.guided, config.guidance_embedding_dim)
        self.target = copy.deepcopy(self.student).eval().requires_grad_(False)
        self.w_dim = getattr(self.student.config, "time_cond_proj_dim", None) if self.cond.guided else None
        self.optimizer = torch.optim.AdamW(self.student.parameters(), lr=config.lr, weight_decay=0.0)
        self.student, self.optimizer = self.accelerator.prepare(self.student, self.optimizer)
        self.rng = torch.Generator().manual_seed(config.seed)
        sched = parts.scheduler_config
        self.acp = alphas_cumprod(sched).to(torch.float32)
        self.grid = skipping_timesteps(int(sched.get("num_train_timesteps", 1000)), config.num_solver_steps)
        self.skip = int(self.grid[0]) + 1
        scalings = [boundary_scalings(t, sched, config.parameterization) for t in range(len(self.acp))]  # type: ignore[arg-type]
        self.c_skip = torch.tensor([s[0] for s in scalings], dtype=torch.float32)
        self.c_out = torch.tensor([s[1] for s in scalings], dtype=torch.float32)
        self.solve = solver_step(config.solver)
        self.method = make_method(config)  # None = CD with the teacher
        self.step = 0
        self.history: list[float] = []

    def _open_data(self, data: ImageDataset | DataSource, options: DataOptions) -> BatchStream:
        """This process's batches: the data at the run's resolution and the VAE's channels, via the latent cache."""
        from cdx.distill.latent_cache import LatentCacheSource, build_latent_cache, expected_index

        parts, cfg, acc = self.parts, self.config, self.accelerator
        size = cfg.resolution or teacher_resolution(parts)
        if size <= 0 or size % parts.vae_scale_factor:
            raise InputError(f"--resolution {size}: must be a positive multiple of the VAE factor {parts.vae_scale_factor}")
        source = as_source(data, size, int(parts.vae.config.in_channels))
        if parts.conditioning == "class_label":
            known = int(parts.unet.config.num_class_embeds) - 1  # the last class embedding is the CFG null class
            if source.captioned and not source.class_names:
                raise InputError("a class-conditional teacher needs class labels: pass class subfolders (this data has "
                                 "captions, no classes)")
            if len(source.class_names) > known:
                raise InputError(f"the data has {len(source.class_names)} classes; the teacher knows {known}")
        if cfg.caption_dropout and parts.conditioning != "text_embedding":
            raise InputError("--caption-dropout applies to text-conditioned teachers only")
        if options.cache_latents:
            expected = expected_index(source, parts, size)
            if acc.is_main_process:
                build_latent_cache(Path(options.cache_latents), source, parts, expected, strict=options.strict)
            acc.wait_for_everyone()
            source = LatentCacheSource(Path(options.cache_latents), expected)
        return BatchStream(source, cfg.batch_size, cfg.seed, acc.process_index, acc.num_processes, cfg.caption_dropout,
                           options.strict)

    # ---- one optimisation step ----------------------------------------------------------------------------
    def _w(self, batch: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        low, high = self.config.guidance_range
        g = low + (high - low) * torch.rand(batch, generator=self.rng)
        emb = guidance_scale_embedding(g - 1.0, self.w_dim) if self.w_dim else None
        return g, emb

    def _f(self, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, cond: dict, w_emb: torch.Tensor | None) -> torch.Tensor:
        kwargs = dict(cond)
        if w_emb is not None:
            kwargs["timestep_cond"] = w_emb
        out = unet(x, t, **kwargs).sample
        a = self.acp[t].reshape(-1, 1, 1, 1)
        x0 = predicted_x0(out, x, a, "epsilon")
        return self.c_skip[t].reshape(-1, 1, 1, 1) * x + self.c_out[t].reshape(-1, 1, 1, 1) * x0

    def _teacher_eps(self, cond: dict, uncond: dict, g: torch.Tensor):
        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            e_c = self.teacher(x, t, **cond).sample
            if not self.cond.guided:
                return e_c
            e_u = self.teacher(x, t, **uncond).sample
            return e_u + g.reshape(-1, 1, 1, 1) * (e_c - e_u)
        return eps

    def sample_batch(self) -> dict[str, Any]:
        """Batch `self.step` of the data (a pure function of seed, step and rank), with t_{n+k}, t_n, noise and w from the
        run's generator (checkpointed, so resume is exact); text teachers get the embeddings of the batch's captions."""
        cfg = self.config
        data = self.batches.batch(self.step)
        x0 = data["latents"] if "latents" in data else encode_latents(self.parts, data["images"])
        n = torch.randint(0, len(self.grid), (cfg.batch_size,), generator=self.rng)
        t = self.grid[n]
        noise = torch.randn(x0.shape, generator=self.rng)
        g, w_emb = self._w(cfg.batch_size)
        b = {"x0": x0, "labels": data["labels"], "captions": data["captions"], "t": t, "s": (t - self.skip).clamp(min=0),
             "noise": noise, "g": g, "w_emb": w_emb}
        if self.cond.kind == "text_embedding":
            b["prompt_embeds"] = self.cond.encode(data["captions"])
        return b

    def draw_batch(self) -> dict[str, Any]:
        """`sample_batch`, with (t, s, weight) redrawn by a teacher-free method's schedule when one is configured."""
        b = self.sample_batch()
        if self.method is not None:
            b.update(self.method.pairs(self.acp, len(b["t"]), self.step, self.config.steps, self.rng))
        return b

    def train_step(self, batch: dict[str, Any] | None = None) -> float:
        """One optimisation step (on `batch` when given, else a fresh draw); returns the loss."""
        cfg = self.config
        self._set_lr()
        b = batch or self.draw_batch()
        t = b["t"]
        a_t = self.acp[t].reshape(-1, 1, 1, 1)
        x_t = a_t.sqrt() * b["x0"] + (1 - a_t).sqrt() * b["noise"]
        cond = self.cond.batch_kwargs(b)
        with self.accelerator.accumulate(self.student):
            prediction = self._f(self.student, x_t, t, cond, b["w_emb"])
            target = self.consistency_target(b)
            loss = (consistency_loss(prediction, target, cfg.loss, cfg.huber_c) if self.method is None
                    else self.method.loss(prediction, target, b))
            self.accelerator.backward(loss)
            if self.accelerator.sync_gradients:
                self.accelerator.clip_grad_norm_(self.student.parameters(), 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self._update_target()
        return float(loss.detach())

    @torch.no_grad()
    def consistency_target(self, b: dict[str, Any]) -> torch.Tensor:
        """The stop-gradient target of batch `b` (pinned by tests/test_cd_target.py): the EMA target network at s
        applied to the teacher's CFG solver step x_t → x_s (or to the x_s a rollout cache stored with the batch)."""
        cond = self.cond.batch_kwargs(b)
        if self.method is not None:  # teacher-free: the online network, gradients stopped
            return self.method.target(lambda x, s: self._f(self.student, x, s, cond, b["w_emb"]), self.acp, b)
        t, s = b["t"], b["s"]
        a_t = self.acp[t].reshape(-1, 1, 1, 1)
        x_s = b.get("x_s")
        if x_s is None:
            x_t = a_t.sqrt() * b["x0"] + (1 - a_t).sqrt() * b["noise"]
            x_s = self.solve(self._teacher_eps(cond, self.cond.batch_kwargs(b, null=True), b["g"]), x_t, t, s, self.acp)
        return self._f(self.target, x_s, s, cond, b["w_emb"])

    def _set_lr(self) -> None:
        """Linear warm-up over `lr_warmup_steps`, a pure function of the step (so resume needs no scheduler state)."""
        warmup = self.config.lr_warmup_steps
        lr = self.config.lr * min(1.0, (self.step + 1) / warmup) if warmup > 0 else self.config.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    @torch.no_grad()
    def _update_target(self) -> None:
        decay = self.config.ema_decay
        student = self.accelerator.unwrap_model(self.student)
        for p_t, p_s in zip(self.target.parameters(), student.parameters(), strict=True):
            p_t.mul_(decay).add_(p_s.detach(), alpha=1 - decay)

    # ---- checkpoints ------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def save(self) -> Path:
        modules = {"student": self.accelerator.unwrap_model(self.student), "target": self.target}
        return save_checkpoint(self.checkpoint_dir, self.step, modules, self.optimizer, self.rng,
                               {"history": self.history, "config": self.config.as_dict()})

    def resume(self) -> int:
        """Load the newest checkpoint in the work dir, if any; returns the step reached."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return 0
        modules = {"student": self.accelerator.unwrap_model(self.student), "target": self.target}
        state = load_checkpoint(path, modules, self.optimizer, self.rng)
        self.step, self.history = int(state["step"]), list(state["history"])
        return self.step

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self, show: bool = True, stop_at: int | None = None) -> None:
        """Train to `config.steps` (or `stop_at`), checkpointing and sampling on the way; stop on a NaN loss."""
        end = min(self.config.steps, stop_at or self.config.steps)
        with TrainingProgress("distill", self.config.steps, start=self.step, enabled=show) as bar:
            started, first = time.perf_counter(), self.step
            smooth = self.history[-1] if self.history else None
            while self.step < end:
                loss = self.train_step()
                if not math.isfinite(loss):
                    last = latest_checkpoint(self.checkpoint_dir)
                    raise CdxError(f"NaN/inf loss at step {self.step + 1}; stopped. Last good checkpoint: "
                                   f"{last or 'none'} (lower --lr or use --loss huber)")
                self.step += 1
                smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                self.history.append(loss)
                rate = (self.step - first) * self.config.batch_size / max(time.perf_counter() - started, 1e-9)
                bar.update(self.step, loss=loss, ema_loss=smooth, img_per_s=rate)
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                    self.save()
                if self.config.sample_every and self.step % self.config.sample_every == 0:
                    self.sample_grid(self.work_dir / "samples" / f"step-{self.step:07d}.png")

    # ---- outputs ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, path: Path, per_class: int = 4, guidance: float | None = None) -> Path:
        """One-step samples of the target network, one row per class (up to 10 classes)."""
        from cdx.distill.sampling import consistency_sample, save_image_grid

        classes = min(10, len(self.grid_prompts) or 1)
        labels = torch.arange(classes).repeat_interleave(per_class)
        images = consistency_sample(self.target, self.parts, self.cond, labels, steps=1,
                                    guidance=guidance or sum(self.config.guidance_range) / 2,
                                    parameterization=self.config.parameterization, seed=0,
                                    embedding_dim=self.w_dim)
        return save_image_grid(images, path, columns=per_class)

    def save_student(self, folder: Path, train_seconds: float, class_names: list[str]) -> None:
        """The target (EMA) network + the teacher's VAE + an LCMScheduler, as a diffusers pipeline folder."""
        from cdx.distill.teacher import save_pipeline

        scheduler = LCMScheduler.from_config(self.parts.scheduler_config, timestep_scaling=10.0,
                                             original_inference_steps=self.config.num_solver_steps)
        info = {"kind": "student", "teacher": portable_path(self.parts.path), "teacher_weights_sha256": self.parts.weights_sha256,
                "parameterization": self.config.parameterization, "guidance_range": list(self.config.guidance_range),
                "distill": self.config.as_dict(), "train_seconds": round(train_seconds, 1), "steps": self.step,
                "final_loss": self.history[-1] if self.history else None}
        if self.parts.conditioning == "text_embedding":
            self._save_text_pipeline(folder, scheduler, class_names, info)
        else:
            save_pipeline(folder, self.target, self.parts.vae, scheduler, class_names, info)

    def _save_text_pipeline(self, folder: Path, scheduler, class_names: list[str], info: dict[str, Any]) -> None:
        from diffusers import LatentConsistencyModelPipeline

        pipe = LatentConsistencyModelPipeline(vae=self.parts.vae, text_encoder=self.parts.text_encoder,
                                              tokenizer=self.parts.tokenizer, unet=self.target, scheduler=scheduler,
                                              safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / "cdx.json").write_text(json.dumps({"class_names": class_names, **info}, indent=2) + "\n", "utf-8")


def distill_student(teacher: str | Path, out: Path, config: DistillConfig, data: str | Path | None = None,
                    work_dir: Path | None = None, resume: bool = True, overwrite: bool = False,
                    limit: int | None = None, show: bool = True, data_options: DataOptions | None = None) -> dict[str, Any]:
    """Distill `teacher` into a student pipeline at `out`; checkpoints and sample grids go to `work_dir`."""
    from cdx.atomic import atomic_directory, refuse_existing
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sources import open_source

    refuse_existing(out, overwrite)
    parts = load_latent_pipeline(teacher)
    if parts.conditioning == "none":
        config.guidance_range = (1.0, 1.0)
    options = data_options or DataOptions()
    work = Path(work_dir) if work_dir else Path(str(out) + ".work")
    if not resume and work.exists():
        import shutil

        shutil.rmtree(work)
    dataset = open_source(data, config.resolution or teacher_resolution(parts), int(parts.vae.config.in_channels),
                          limit, cache_dir=work / "hf-datasets", shuffle_buffer=options.shuffle_buffer)
    distiller = ConsistencyDistiller(parts, dataset, config, work, data_options=options)
    start_step = distiller.resume() if resume else 0
    if start_step and show:
        print(f"resumed from step {start_step} ({latest_checkpoint(distiller.checkpoint_dir)})", flush=True)
    started = time.perf_counter()
    distiller.run(show=show)
    seconds = time.perf_counter() - started
    if distiller.batches.summary():
        print(distiller.batches.summary(), file=sys.stderr, flush=True)
    with atomic_directory(out, overwrite=overwrite) as staging:
        distiller.save_student(staging, seconds, distiller.grid_prompts)
        distiller.sample_grid(staging / "sample_grid.png")
    return {"steps": distiller.step, "resumed_from": start_step, "seconds": seconds,
            "final_loss": distiller.history[-1] if distiller.history else None, "skipped": len(distiller.batches.skipped)}
