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
from cdx.distill.checkpoint import (
    EXPORT_EMA_FILE,
    check_resumable,
    latest_checkpoint,
    load_checkpoint,
    load_extra,
    prepare_work_dir,
    read_checkpoint_state,
    resume_and_run,
    save_checkpoint,
)
from cdx.distill.conditioning import TeacherConditioning
from cdx.distill.consistency import (
    alphas_cumprod,
    boundary_scalings,
    guidance_scale_embedding,
    predicted_x0,
    step_constants,
)
from cdx.distill.consistency_training import make_method
from cdx.distill.data import ImageDataset
from cdx.distill.ema import ExportEMA, TargetEMA, trainable_names
from cdx.distill.latent_cache import encode_latents
from cdx.distill.loading import LatentPipelineParts
from cdx.distill.loops import classifier_free_guidance, consistency_loop, ddim_loop
from cdx.distill.losses import consistency_loss
from cdx.distill.progress import TrainingProgress
from cdx.distill.sampling import ddim_schedule, decode_latents, guided_output
from cdx.distill.solvers import skipping_timesteps, solver_step, substep_solver
from cdx.distill.sources import DataSource, as_source, example_prompts
from cdx.errors import CdxError, InputError

CRITIC_INPUTS = ("latent", "decoded")  # what --critic-input's critic judges (DistillConfig.critic_input)
REGRESSION_SPACES = ("latent", "decoded")  # where --ode-regression-space measures the regression


@dataclass
class DistillConfig:
    """Every knob of a distillation run (saved into the student's cdx.json)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 1e-4
    lr_warmup_steps: int = 0  # linear warm-up; Adam's first full-size step perturbs a converged teacher copy
    lr_schedule: str = "constant"  # after the warm-up: constant | linear | cosine (decay to 0 at `steps`)
    ema_decay: float = 0.95
    # > 0: save a slow EMA of the student (diffusers' EMAModel with its warm-up, kept as a separate copy) instead of the
    # consistency target (`ema_decay`, LCM's 0.95, which averages over ≈ 20 steps): averages out the optimizer's noise
    export_ema_decay: float = 0.0
    solver: str = "ddim"
    num_solver_steps: int = 50  # N; skipping step k = T / N
    # > 1: the teacher solves each hop t_{n+k} → t_n in this many sub-steps (a coarse grid with a fine ODE target)
    solver_substeps: int = 1
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
    lora_rank: int = 0  # > 0: LCM-LoRA — train a rank-R LoRA on the frozen teacher UNet, save only the LoRA
    init_student: str | None = None  # start from this student folder's UNet (same architecture), not the teacher
    # > 0: add weight × loss(f(z, T), the teacher's guided DDIM solution of z in `ode_regression_steps` steps) on
    # `ode_regression_batch` fresh noises per update: the one-step output regressed on the teacher's ODE endpoint
    # (Luhman & Luhman 2021; DMD's regression term), where CD's errors accumulate over the grid's hops
    ode_regression_weight: float = 0.0
    ode_regression_steps: int = 4
    ode_regression_batch: int = 16
    # where that loss is measured: "latent" (the clean latents) | "decoded" (both through the frozen VAE decoder, in
    # [0, 1]: an error costs what it changes in the image, so the directions the decoder amplifies weigh more)
    ode_regression_space: str = "latent"
    # > 0: add weight × −critic(f(z, T)) on the same fresh noises, a class/text-projection patch critic on clean latents
    # trained alongside with the hinge loss, the batch's real latents against the one-step outputs (DMD2, LADD): a
    # term against the data itself, where the teacher-matching terms can at best tie the teacher
    adversarial_weight: float = 0.0
    adversarial_start: int = 0  # step the generator term starts at; the critic trains from step 0, so it is no longer
    # random (its first gradients would be noise, and would fill Adam's second moments) when the term arrives
    critic_lr: float = 2e-4  # the critic's Adam learning rate (constant; betas 0.5, 0.9)
    critic_r1: float = 0.0  # > 0: R1 penalty γ on the critic's gradient at real latents (critic.py)
    # what the critic judges: "latent" (the clean latents) | "decoded" (the latents through the frozen VAE decoder,
    # real and one-step alike: the images the metrics see, the generator's gradient passing back through the decoder)
    critic_input: str = "latent"
    critic_depth: int = 2  # the critic's stride-2 convolutions: its score map is its input's side / 2**depth
    # the critic judges the student's 1..K-step samples of the one-step noises: f(z, T), and for each k >= 2 the last
    # step of the k-step sampler run from it (earlier steps gradient-free: DMD2's backward simulation), so the few-step
    # samples users take get the data's term too
    critic_steps: int = 1
    # > 0: add weight × the distribution-matching term (DMD) on those one-step outputs: a fake denoiser, trained here on
    # the student's outputs, against the teacher's guided one (distill/distribution_matching.py); pulls the outputs'
    # distribution toward the teacher's where the regression can only pull each output toward one ODE endpoint
    dmd_weight: float = 0.0
    dmd_start: int = 0  # step the term starts at (the fake denoiser trains from step 0, so it has left the teacher)
    fake_score_lr: float = 1e-4  # the fake denoiser's AdamW learning rate (constant)
    fake_score_updates: int = 1  # fake-denoiser steps per student update (DMD2's two time-scale rule uses 5)
    # > 0 (with the DMD term): DMD2's GAN branch, a head on the fake denoiser's bottleneck that tells noised real
    # latents from noised one-step outputs (bottleneck_critic.py); the student's term is weight × softplus(−D), from
    # dmd_start, and the head trains with the fake denoiser at dmd_critic_weight × its loss (DMD2: 3e-3 and 1e-2)
    dmd_gan_weight: float = 0.0
    dmd_critic_weight: float = 1e-2
    # where the GAN head(s) sit: "mid" (DMD2: the bottleneck) | "mid+up" (also the last up block, the finest map)
    dmd_gan_heads: str = "mid"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self, num_train_timesteps: int | None = None) -> None:
        """One-line InputError for the first bad knob, before any model or data is touched (T-dependent checks
        run when the teacher's `num_train_timesteps` is known)."""
        from cdx.distill.bottleneck_critic import GAN_HEADS
        from cdx.distill.losses import LOSSES
        from cdx.distill.solvers import SOLVERS

        low, high = self.guidance_range
        checks = [
            (self.steps >= 1, f"--steps {self.steps}: must be >= 1"),
            (self.batch_size >= 1, f"--batch-size {self.batch_size}: must be >= 1"),
            (self.lr > 0, f"--lr {self.lr}: must be > 0"),
            (self.lr_warmup_steps >= 0, f"--lr-warmup-steps {self.lr_warmup_steps}: must be >= 0"),
            (self.lr_schedule in LR_SCHEDULES,
             f"unknown --lr-schedule {self.lr_schedule!r}; valid: {', '.join(LR_SCHEDULES)}"),
            (0.0 <= self.ema_decay <= 1.0, f"--ema-decay {self.ema_decay}: must be in [0, 1]"),
            (0.0 <= self.export_ema_decay < 1.0,
             f"--export-ema-decay {self.export_ema_decay}: must be in [0, 1) (0 = save the consistency target)"),
            (self.solver in SOLVERS, f"unknown --solver {self.solver!r}; valid: {', '.join(SOLVERS)}"),
            (self.loss in LOSSES, f"unknown --loss {self.loss!r}; valid: {', '.join(LOSSES)}"),
            (self.parameterization in ("lcm", "edm"),
             f"unknown --parameterization {self.parameterization!r}; valid: lcm, edm"),
            (self.huber_c > 0, f"--huber-c {self.huber_c}: must be > 0"),
            (self.num_solver_steps >= 1, f"--num-solver-steps {self.num_solver_steps}: must be >= 1"),
            (self.solver_substeps >= 1, f"--solver-substeps {self.solver_substeps}: must be >= 1"),
            (low <= high, f"--guidance-min {low} > --guidance-max {high}: the range must be ordered"),
            (low >= 0, f"--guidance-min {low}: must be >= 0"),
            (self.gradient_accumulation >= 1, f"--grad-accum {self.gradient_accumulation}: must be >= 1"),
            (self.mixed_precision in MIXED_PRECISION,
             f"unknown --mixed-precision {self.mixed_precision!r}; valid: {', '.join(MIXED_PRECISION)}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every {self.checkpoint_every}: must be >= 1"),
            (self.sample_every >= 0, f"--sample-every {self.sample_every}: must be >= 0 (0 = never)"),
            (self.lora_rank >= 0, f"--lora-rank {self.lora_rank}: must be >= 0 (0 = full distillation)"),
            (not (self.init_student and self.lora_rank), "--init-student with --lora-rank: a LoRA trains on the "
                                                         "frozen teacher; choose one"),
            (0.0 <= self.caption_dropout <= 1.0, f"--caption-dropout {self.caption_dropout}: must be in [0, 1]"),
            (self.ode_regression_weight >= 0, f"--ode-regression-weight {self.ode_regression_weight}: must be >= 0"),
            (self.ode_regression_steps >= 1, f"--ode-regression-steps {self.ode_regression_steps}: must be >= 1"),
            (self.ode_regression_batch >= 1, f"--ode-regression-batch {self.ode_regression_batch}: must be >= 1"),
            (not (self.ode_regression_weight and self.method != "cd"),
             f"--ode-regression-weight with --method {self.method}: the regression target is the teacher's ODE "
             "solution, and teacher-free methods make no teacher calls; use --method cd"),
            (self.adversarial_weight >= 0, f"--adversarial-weight {self.adversarial_weight}: must be >= 0"),
            (self.adversarial_start >= 0, f"--adversarial-start {self.adversarial_start}: must be >= 0"),
            (self.critic_lr > 0, f"--critic-lr {self.critic_lr}: must be > 0"),
            (self.critic_r1 >= 0, f"--critic-r1 {self.critic_r1}: must be >= 0"),
            (self.ode_regression_space in REGRESSION_SPACES,
             f"--ode-regression-space {self.ode_regression_space!r}: must be one of {' | '.join(REGRESSION_SPACES)}"),
            (not (self.ode_regression_space != "latent" and not self.ode_regression_weight),
             f"--ode-regression-space {self.ode_regression_space} without --ode-regression-weight: there is no "
             "regression term to measure"),
            (self.critic_input in CRITIC_INPUTS,
             f"--critic-input {self.critic_input!r}: must be one of {' | '.join(CRITIC_INPUTS)}"),
            (not (self.critic_input != "latent" and not self.adversarial_weight),
             f"--critic-input {self.critic_input} without --adversarial-weight: the critic judges the one-step "
             "outputs only for that term; set --adversarial-weight > 0"),
            (self.critic_depth >= 1, f"--critic-depth {self.critic_depth}: must be >= 1"),
            (not (self.critic_depth != 2 and not self.adversarial_weight),
             f"--critic-depth {self.critic_depth} without --adversarial-weight: it shapes that term's critic; set "
             "--adversarial-weight > 0"),
            (1 <= self.critic_steps <= self.num_solver_steps,
             f"--critic-steps {self.critic_steps}: must be in 1..{self.num_solver_steps} (--num-solver-steps: the "
             "student samples with at most that many steps)"),
            (not (self.critic_steps != 1 and not self.adversarial_weight),
             f"--critic-steps {self.critic_steps} without --adversarial-weight: it sets what that term's critic "
             "judges; set --adversarial-weight > 0"),
            (not (self.adversarial_weight and self.method != "cd"),
             f"--adversarial-weight with --method {self.method}: the critic judges the one-step output f(z, T) of "
             "the CD student; use --method cd"),
            (self.dmd_weight >= 0, f"--dmd-weight {self.dmd_weight}: must be >= 0"),
            (self.dmd_start >= 0, f"--dmd-start {self.dmd_start}: must be >= 0"),
            (self.fake_score_lr > 0, f"--fake-score-lr {self.fake_score_lr}: must be > 0"),
            (self.fake_score_updates >= 1, f"--fake-score-updates {self.fake_score_updates}: must be >= 1"),
            (not (self.dmd_weight and self.method != "cd"),
             f"--dmd-weight with --method {self.method}: the term compares the teacher's denoiser with the student's "
             "outputs' (teacher-free methods make no teacher calls); use --method cd"),
            (not (self.dmd_weight and self.lora_rank),
             "--dmd-weight with --lora-rank: the fake denoiser is a full UNet copy; use a full student"),
            (self.dmd_gan_weight >= 0, f"--dmd-gan-weight {self.dmd_gan_weight}: must be >= 0"),
            (self.dmd_critic_weight > 0, f"--dmd-critic-weight {self.dmd_critic_weight}: must be > 0"),
            (self.dmd_gan_heads in GAN_HEADS,
             f"--dmd-gan-heads {self.dmd_gan_heads!r}: must be one of {' | '.join(GAN_HEADS)}"),
            (not (self.dmd_gan_weight and not self.dmd_weight),
             f"--dmd-gan-weight {self.dmd_gan_weight} without --dmd-weight: the GAN head sits on the DMD term's fake "
             "denoiser; set --dmd-weight > 0"),
        ]
        if num_train_timesteps is not None:
            checks.append((self.num_solver_steps <= num_train_timesteps,
                           f"--num-solver-steps {self.num_solver_steps}: exceeds the teacher's num_train_timesteps "
                           f"{num_train_timesteps} (the skipping step k = T/N would be 0)"))
            checks.append((self.solver_substeps <= num_train_timesteps // max(self.num_solver_steps, 1),  # N > T: named above
                           f"--solver-substeps {self.solver_substeps}: more than the {num_train_timesteps} // "
                           f"{self.num_solver_steps} timesteps of one hop"))
        for ok, message in checks:
            if not ok:
                raise InputError(message)


def cpu_ranks() -> bool:
    """True when `accelerate launch` started several processes on a machine without CUDA: Accelerate would treat each
    as a lone run (DistributedType.NO, every rank "main"); `cpu=True` makes them gloo CPU ranks (MULTI_CPU)."""
    import os

    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


MIXED_PRECISION = ("no", "fp16", "bf16")
WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LR_SCHEDULES = ("constant", "linear", "cosine")


def learning_rate(config: DistillConfig, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): linear warm-up over `lr_warmup_steps`, then constant or
    a linear / cosine decay to 0 at `steps` (diffusers' schedules' shapes), a pure function of the step so resume
    needs no scheduler state."""
    warmup, base = config.lr_warmup_steps, config.lr
    if warmup > 0 and step < warmup:
        return base * (step + 1) / warmup
    if config.lr_schedule == "constant":
        return base
    progress = min(1.0, max(0.0, (step - warmup) / max(1, config.steps - warmup)))
    if config.lr_schedule == "linear":
        return base * (1.0 - progress)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


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


def student_from_folder(folder: Path, teacher_unet: torch.nn.Module, guided: bool) -> torch.nn.Module:
    """A trainable UNet from an earlier student's `unet/` (e.g. to re-distill it on another solver grid); its
    architecture must be the teacher's, up to the guidance embedding and a deeper `layers_per_block` (one-line
    InputError otherwise)."""
    from cdx.distill.model_source import check_component_weights

    unet_dir = folder / "unet"
    if not (unet_dir / "config.json").is_file():
        raise InputError(f"--init-student {folder}: not found (need {unet_dir}/config.json)")
    check_component_weights(unet_dir)  # pickles refused by name, truncated safetensors named, before diffusers
    try:
        student = type(teacher_unet).from_pretrained(unet_dir, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as err:
        raise InputError(f"--init-student {folder}: cannot load {unet_dir}: {str(err).splitlines()[0]}") from None
    ignored = {"time_cond_proj_dim", "_name_or_path", "_diffusers_version", "_class_name", "_use_default_values"}
    theirs, ours = dict(teacher_unet.config), dict(student.config)
    differs = sorted(k for k in set(theirs) | set(ours) if k not in ignored and theirs.get(k) != ours.get(k))
    if differs == ["layers_per_block"] and _deeper(ours["layers_per_block"], theirs["layers_per_block"]):
        differs = []  # a student deepened past its teacher (`cdx student deepen`): more capacity, same interface
    if differs:
        raise InputError(f"--init-student {folder}: its UNet differs from the teacher's in {', '.join(differs[:5])}")
    if guided and not ours.get("time_cond_proj_dim"):
        raise InputError(f"--init-student {folder}: its UNet has no guidance embedding (time_cond_proj_dim); the "
                         "teacher is conditional, so the student needs one")
    return student.train().requires_grad_(True)


def _deeper(student_layers: Any, teacher_layers: Any) -> bool:
    """Whether a student's `layers_per_block` is at least its teacher's (ints, or per-block lists)."""
    a = student_layers if isinstance(student_layers, (list, tuple)) else [student_layers]
    b = teacher_layers if isinstance(teacher_layers, (list, tuple)) else [teacher_layers]
    return len(a) == len(b) and all(x >= y for x, y in zip(a, b, strict=True))


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
        config.validate(int(parts.scheduler_config.get("num_train_timesteps", 1000)))
        self.config, self.work_dir = config, Path(work_dir)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=cpu_ranks(),
                                       gradient_accumulation_steps=config.gradient_accumulation)
        acc = self.accelerator
        self.device, self.rank, self.world_size = acc.device, acc.process_index, acc.num_processes
        self.weight_dtype = WEIGHT_DTYPES[acc.mixed_precision]
        torch.manual_seed(config.seed)
        # The student starts from the float32 teacher; then every frozen module goes to the device in the
        # mixed-precision dtype (fp32 CPU copies of the VAE/text encoder are kept for the saved pipeline).
        student = self._make_student(parts)
        self.export_parts, self.parts = parts, self._frozen_on_device(parts)
        self.batches = self._open_data(data, data_options or DataOptions())
        source = self.batches.source  # grid rows: example captions for text teachers, else the class names
        self.grid_prompts = example_prompts(parts, source)
        self.cond = TeacherConditioning(self.parts, self.grid_prompts or ["an image"])
        self.teacher = self.parts.unet
        student.to(self.device)
        self.target = copy.deepcopy(student).eval().requires_grad_(False)
        self.trainable = trainable_names(student)
        self.ema = TargetEMA(self.target, self.trainable, config.ema_decay)  # after every .to(): it aliases the tensors
        self.w_dim = getattr(student.config, "time_cond_proj_dim", None) if parts.conditioning != "none" else None
        self.optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=config.lr,
                                           weight_decay=0.0)
        self.student, self.optimizer = acc.prepare(student, self.optimizer)
        by_name = dict(student.named_parameters())
        self._student_trainable = [by_name[n] for n in self.trainable]
        self.export_ema = (ExportEMA(self._student_trainable, self.trainable, config.export_ema_decay)
                           if config.export_ema_decay > 0 else None)
        self.critic = self._make_critic(parts) if config.adversarial_weight > 0 else None  # prepared after the student
        self.terms: dict[str, float] = {}  # the last micro-batch's separate terms (for the progress line)
        self.rng = torch.Generator().manual_seed(config.seed + 1_000_003 * self.rank)  # per-process draws
        sched = parts.scheduler_config
        self.acp = alphas_cumprod(sched).to(self.device, torch.float32)
        self.grid = skipping_timesteps(int(sched.get("num_train_timesteps", 1000)), config.num_solver_steps)
        self.skip = int(self.grid[0]) + 1
        scalings = [boundary_scalings(t, sched, config.parameterization) for t in range(len(self.acp))]  # type: ignore[arg-type]
        self.c_skip = torch.tensor([s[0] for s in scalings], dtype=torch.float32, device=self.device)
        self.c_out = torch.tensor([s[1] for s in scalings], dtype=torch.float32, device=self.device)
        self.solve = substep_solver(solver_step(config.solver), config.solver_substeps)
        self.dmd = self._make_fake_score() if config.dmd_weight > 0 else None  # prepared after the critic
        self.ode_schedule = ddim_schedule(sched, config.ode_regression_steps)  # starts at T - 1, the 1-step timestep
        student_sampler = {**sched, "original_inference_steps": config.num_solver_steps}  # the exported scheduler's
        self.critic_schedules = [[s.as_dict() for s in step_constants(student_sampler, k, config.parameterization)]
                                 for k in range(2, config.critic_steps + 1)]  # type: ignore[arg-type]
        self.method = make_method(config)  # None = CD with the teacher
        self.rollouts = None  # a RolloutStream (distill/rollout_cache.py): cached teacher steps, no teacher calls
        self.step = 0  # optimizer steps (sync points)
        self.micro_step = 0  # micro-batches drawn (= step × grad-accum at every sync point)
        self.history: list[float] = []
        self.seconds_before = 0.0  # training seconds up to the checkpoint this run resumed from (0 for a fresh run)
        self._run_started = time.perf_counter()

    def _make_student(self, parts: LatentPipelineParts) -> torch.nn.Module:
        """Full: a trainable copy of the teacher (+ the w-embedding); LoRA: the frozen teacher + trainable adapters."""
        parts.unet.eval().requires_grad_(False)
        if self.config.lora_rank:
            from cdx.distill.lora import add_lora

            student = add_lora(copy.deepcopy(parts.unet), self.config.lora_rank)
            for p in student.parameters():  # frozen base in the weight dtype, adapters float32 (as LCM-LoRA trains)
                if not p.requires_grad:
                    p.data = p.data.to(self.weight_dtype)
            return student
        if self.config.init_student:
            return student_from_folder(Path(self.config.init_student), parts.unet, parts.conditioning != "none")
        return make_student(parts.unet, parts.conditioning != "none", self.config.guidance_embedding_dim)

    def _make_critic(self, parts: LatentPipelineParts):
        """The critic: a patch critic on the student's latent channels (or the decoder's image channels with
        `--critic-input decoded`), projecting the class label (class teachers) or the mean-pooled prompt embedding
        (text teachers); seeded on its own (see critic.py)."""
        from cdx.distill.critic import AdversarialCritic, seeded_critic

        classes = int(parts.unet.config.num_class_embeds) if parts.conditioning == "class_label" else 0
        embedding = int(parts.text_encoder.config.hidden_size) if parts.conditioning == "text_embedding" else 0
        decoded = self.config.critic_input == "decoded"
        channels = int(parts.vae.config.out_channels) if decoded else parts.latent_channels
        image_side = self.config.resolution or teacher_resolution(parts)
        side = image_side if decoded else image_side // parts.vae_scale_factor
        depth = self.config.critic_depth
        if side < 2 ** depth:
            raise InputError(f"--critic-depth {depth}: the critic halves its {side}-px {self.config.critic_input} "
                             f"input {depth} times; at most {max(side.bit_length() - 1, 1)} here")
        critic = seeded_critic(self.config.seed + 7, channels, 64, num_classes=classes, embedding_dim=embedding,
                               depth=depth).to(self.device)
        return AdversarialCritic(self.accelerator, critic, self.config.critic_lr, r1=self.config.critic_r1)

    def _make_fake_score(self):
        """DMD's fake denoiser: a float32 copy of the teacher with the student's guidance embedding (zero-initialised,
        so it starts as the teacher's conditional denoiser); built without touching the global RNG."""
        from cdx.distill.distribution_matching import DistributionMatching
        from cdx.distill.own_rng import built_on_own_rng

        fake = built_on_own_rng(make_student, self.teacher, self.w_dim is not None,
                                self.w_dim or self.config.guidance_embedding_dim)
        fake = fake.float().to(self.device)
        if self.config.dmd_gan_weight > 0:  # DMD2's GAN head on the fake denoiser's bottleneck, seeded on its own
            from cdx.distill.bottleneck_critic import make_fake_score_with_critic

            fake = make_fake_score_with_critic(fake, self.config.seed + 11,
                                               up_head=self.config.dmd_gan_heads == "mid+up")
        return DistributionMatching(self.accelerator, fake, self.config.fake_score_lr, self.acp,
                                    critic_weight=self.config.dmd_critic_weight)

    def _frozen_on_device(self, parts: LatentPipelineParts) -> LatentPipelineParts:
        """The teacher's frozen modules on the device in the weight dtype; the VAE/text encoder are copied when that
        changes them, so `export_parts` keeps the float32 originals the student pipeline is saved with."""
        import dataclasses

        def frozen(module: torch.nn.Module | None, copy_it: bool) -> torch.nn.Module | None:
            if module is None:
                return None
            moved = (copy.deepcopy(module) if copy_it else module).eval().requires_grad_(False)
            return moved.to(self.device, self.weight_dtype)

        changes = self.weight_dtype != torch.float32 or self.device.type != "cpu"
        return dataclasses.replace(parts, unet=frozen(parts.unet, False), vae=frozen(parts.vae, changes),
                                   text_encoder=frozen(parts.text_encoder, changes))

    def _open_data(self, data: ImageDataset | DataSource, options: DataOptions) -> BatchStream:
        """This process's batches: the data at the run's resolution and the VAE's channels, via the latent cache."""
        from cdx.distill.latent_cache import InMemoryLatents, LatentCacheSource, build_latent_cache, expected_index
        from cdx.distill.sources import TensorSource

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
        elif isinstance(source, TensorSource) and cfg.steps * cfg.batch_size * cfg.gradient_accumulation * acc.num_processes \
                >= len(source):  # already in memory and every image drawn at least once: encode each once, up front
            source = InMemoryLatents(source, parts)
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
            return classifier_free_guidance(e_u, e_c, g)
        return eps

    def sample_batch(self) -> dict[str, Any]:
        """Batch `self.step` of the data (a pure function of seed, step and rank), with t_{n+k}, t_n, noise and w from the
        run's generator (checkpointed, so resume is exact); text teachers get the embeddings of the batch's captions."""
        cfg = self.config
        data = self.batches.batch(self.micro_step)  # micro-batches: k distinct batches per step with --grad-accum k
        x0 = data["latents"] if "latents" in data else encode_latents(self.parts, data["images"])
        n = torch.randint(0, len(self.grid), (cfg.batch_size,), generator=self.rng)
        t = self.grid[n]
        noise = torch.randn(x0.shape, generator=self.rng)
        g, w_emb = self._w(cfg.batch_size)
        b = {"x0": x0, "labels": data["labels"], "captions": data["captions"], "t": t, "s": (t - self.skip).clamp(min=0),
             "noise": noise, "g": g, "w_emb": w_emb}
        if self.cond.kind == "text_embedding":
            b["prompt_embeds"] = self.cond.encode(data["captions"])
        if cfg.ode_regression_weight > 0 or cfg.adversarial_weight > 0 or cfg.dmd_weight > 0:  # drawn only then: runs
            # without these terms keep their exact draws (they share the one-step outputs of these noises)
            n = min(cfg.ode_regression_batch, cfg.batch_size)
            b["ode_noise"] = torch.randn((n, *x0.shape[1:]), generator=self.rng)
            renoisings = cfg.critic_steps * (cfg.critic_steps - 1) // 2  # k − 1 for each k-step sampler, k >= 2
            if renoisings:
                b["renoise"] = torch.randn((renoisings, n, *x0.shape[1:]), generator=self.rng)
        return b

    def draw_batch(self) -> dict[str, Any]:
        """`sample_batch`, with (t, s, weight) redrawn by a teacher-free method's schedule when one is configured."""
        if self.rollouts is not None:  # record j = micro-batch j, with the teacher's x_s (no teacher call)
            return self.rollouts.batch(getattr(self, "micro_step", self.step))
        b = self.sample_batch()
        if self.method is not None:
            b.update(self.method.pairs(self.acp.cpu(), len(b["t"]), self.step, self.config.steps, self.rng))
        return b

    def train_step(self, batch: dict[str, Any] | None = None) -> float:
        """One micro-batch (on `batch` when given, else a fresh draw); returns its loss. The optimizer steps and the
        EMA target moves only at a sync point (every `gradient_accumulation` micro-batches), as Accelerate decides."""
        cfg, acc = self.config, self.accelerator
        self._set_lr()
        b = self._on_device(batch or self.draw_batch())
        self.micro_step += 1
        t = b["t"]
        a_t = self.acp[t].reshape(-1, 1, 1, 1)
        x_t = a_t.sqrt() * b["x0"] + (1 - a_t).sqrt() * b["noise"]
        cond = self.cond.batch_kwargs(b)
        generator_on = self.critic is not None and self.step >= cfg.adversarial_start
        models = (self.student, *(m.wrapped for m in (self.critic, self.dmd) if m is not None))
        with acc.accumulate(*models):
            prediction = self._f(self.student, x_t, t, cond, b["w_emb"]).float()
            with acc.autocast():  # the frozen teacher / EMA target run in the mixed-precision dtype
                target = self.consistency_target(b).float()
            loss = (consistency_loss(prediction, target, cfg.loss, cfg.huber_c) if self.method is None
                    else self.method.loss(prediction, target, b))
            one_step = self.one_step(b) if "ode_noise" in b else None  # either term on
            if self.critic is not None:  # the batch's conditions, and those of its first len(one_step) samples
                real_condition = self.critic_condition(b)
                fake_condition = (None if real_condition is None
                                  else torch.cat([real_condition[: len(one_step)]] * cfg.critic_steps))
                with torch.set_grad_enabled(generator_on):  # the graph to the student only when the term uses it
                    fake_view = self.critic_view(self.critic_samples(b, one_step))
            if cfg.ode_regression_weight > 0:
                loss = loss + cfg.ode_regression_weight * self.ode_regression_loss(b, one_step)
            if generator_on:
                generator = self.critic.generator_loss(fake_view, fake_condition)
                loss = loss + cfg.adversarial_weight * generator
                self.terms["generator"] = float(generator.detach())
            if self.dmd is not None:
                first_cond, first_w = self.one_step_conditions(b)
                if self.step >= cfg.dmd_start:
                    matching = self.dmd.generator_loss(one_step, self.teacher_x0(b, len(one_step)), first_cond,
                                                       first_w, self.rng)
                    loss = loss + cfg.dmd_weight * matching
                    self.terms["dmd"] = float(matching.detach())
                    if cfg.dmd_gan_weight > 0:
                        gan = self.dmd.gan_generator_loss(one_step, first_cond, first_w, self.rng)
                        loss = loss + cfg.dmd_gan_weight * gan
                        self.terms["gan"] = float(gan.detach())
            acc.backward(loss)
            if acc.sync_gradients:
                acc.clip_grad_norm_(self._student_trainable, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.critic is not None:  # the batch's real latents against the one-step outputs of this step
                with torch.no_grad():
                    real_view = self.critic_view(b["x0"])
                self.terms["critic"] = self.critic.update(real_view, fake_view, real_condition, fake_condition)
            if self.dmd is not None:  # the fake denoiser learns this step's one-step outputs (fresh t and ε each time)
                real = b["x0"][: len(one_step)] if cfg.dmd_gan_weight > 0 else None  # the same conditions' data
                for _ in range(cfg.fake_score_updates):
                    self.terms["fake"] = self.dmd.update(one_step, first_cond, first_w, self.rng, real=real)
                if self.dmd.last_critic_loss is not None:
                    self.terms["dmd_critic"] = self.dmd.last_critic_loss
        if acc.sync_gradients:
            self.ema.step(self._student_trainable)
            if self.export_ema is not None:
                self.export_ema.step(self._student_trainable)
        return float(loss.detach())

    def _on_device(self, b: dict[str, Any]) -> dict[str, Any]:
        """The batch's tensors on the accelerator's device (draws happen on the CPU generator, so they are exact)."""
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}

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

    def _first(self, kwargs: dict[str, Any], n: int) -> dict[str, Any]:
        return {k: v[:n] if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}

    def one_step_conditions(self, b: dict[str, Any]) -> tuple[dict[str, Any], torch.Tensor | None]:
        """The UNet conditions and guidance embedding of the batch's first len(`ode_noise`) samples: those of the
        one-step outputs f(z, T)."""
        n = len(b["ode_noise"])
        return self._first(self.cond.batch_kwargs(b), n), None if b["w_emb"] is None else b["w_emb"][:n]

    def one_step(self, b: dict[str, Any]) -> torch.Tensor:
        """The student's one-step output f(z, T) on the batch's `ode_noise` (with the first samples' conditioning)."""
        cond, w_emb = self.one_step_conditions(b)
        t = torch.full((len(b["ode_noise"]),), int(self.ode_schedule[0]["timestep"]), dtype=torch.int64,
                       device=self.device)
        return self._f(self.student, b["ode_noise"], t, cond, w_emb).float()

    def critic_samples(self, b: dict[str, Any], one_step: torch.Tensor) -> torch.Tensor:
        """The samples the critic judges: the one-step outputs, then (`--critic-steps K`) for k = 2..K the k-step
        sampler's output from the same noises (the shared consistency loop over the exported scheduler's k-step
        schedule, its first step the one-step output itself, re-noised with the batch's `renoise` draws); only each
        sampler's last step keeps a graph to the student."""
        outputs = [one_step]
        cond, w_emb = self.one_step_conditions(b)
        draws = list(b.get("renoise", ()))
        for steps in self.critic_schedules:
            used, draws = draws[: len(steps) - 1], draws[len(steps) - 1:]
            outputs.append(self._sampler_output(steps, b["ode_noise"], one_step, cond, w_emb, used))
        return torch.cat(outputs)

    def _sampler_output(self, steps: list[dict[str, Any]], noise: torch.Tensor, one_step: torch.Tensor, cond: dict,
                        w_emb: torch.Tensor | None, step_noise: list[torch.Tensor]) -> torch.Tensor:
        grad = torch.is_grad_enabled()

        def denoise(x: torch.Tensor, step: dict[str, Any]) -> torch.Tensor:
            if step is steps[0]:  # f(z, T), computed once for every sampler
                return one_step.detach()
            t = torch.full((len(x),), int(step["timestep"]), dtype=torch.int64, device=self.device)
            with torch.set_grad_enabled(grad and step is steps[-1]):
                return self._f(self.student, x, t, cond, w_emb).float()

        return consistency_loop(denoise, noise, steps, step_noise)

    def critic_view(self, latents: torch.Tensor) -> torch.Tensor:
        """What the critic judges of `latents`: themselves, or (`--critic-input decoded`) their images in [0, 1]
        through the frozen VAE decoder, which passes the gradient back to the latents and takes none itself."""
        return latents if self.config.critic_input == "latent" else self.decoded(latents)

    def decoded(self, latents: torch.Tensor) -> torch.Tensor:
        """`latents` through the frozen VAE decoder, as images in [0, 1] (float32); the decoder passes the gradient back
        to the latents and takes none itself."""
        vae = self.parts.vae
        weight = next(vae.parameters())
        images = decode_latents(vae, latents.to(weight.dtype), self.parts.latent_scaling_factor,
                                self.parts.latent_shift_factor)
        return images.float()

    def critic_condition(self, b: dict[str, Any]) -> torch.Tensor | None:
        """What the critic projects: class labels, a text batch's mean-pooled prompt embeddings, or nothing for
        unconditional teachers."""
        if self.cond.kind == "class_label":
            condition = b["labels"]
        elif self.cond.kind == "text_embedding":
            condition = b["prompt_embeds"].float().mean(1)
        else:
            return None
        return condition

    def ode_regression_loss(self, b: dict[str, Any], prediction: torch.Tensor | None = None) -> torch.Tensor:
        """The student's one-step output f(z, T) on the batch's `ode_noise` (`prediction`, when computed already) vs
        the teacher's ODE solution of z."""
        prediction = self.one_step(b) if prediction is None else prediction
        with self.accelerator.autocast():
            target = self.ode_regression_target(b).float()
        if self.config.ode_regression_space == "decoded":
            with torch.no_grad():
                target = self.decoded(target)
            prediction = self.decoded(prediction)
        return consistency_loss(prediction, target, self.config.loss, self.config.huber_c)

    def _guided_teacher(self, b: dict[str, Any], n: int):
        """The teacher's guided ε-prediction for the batch's first `n` samples, at each one's CFG scale g (one plain
        conditional call when every g is 1: CFG at 1 is the conditional prediction, without the unconditional half)."""
        cond = self._first(self.cond.batch_kwargs(b), n)
        g = b["g"][:n].to(self.device)
        guided = self.cond.guided and bool((g != 1).any())
        null = self._first(self.cond.batch_kwargs(b, null=True), n) if guided else None
        return lambda x, t: guided_output(self.teacher, x, t, cond, null, g)

    def teacher_x0(self, b: dict[str, Any], n: int):
        """The teacher's guided x̂₀ denoiser (x_t, t) → x̂₀ for the batch's first `n` samples (DMD's real score)."""
        eps = self._guided_teacher(b, n)
        return lambda x, t: predicted_x0(eps(x, t), x, self.acp[t].reshape(-1, 1, 1, 1), "epsilon")

    @torch.no_grad()
    def ode_regression_target(self, b: dict[str, Any]) -> torch.Tensor:
        """The teacher's guided DDIM (η = 0) solution of `ode_noise` from T - 1 to 0 in `ode_regression_steps` steps,
        at each sample's CFG scale g (pinned by tests/test_cd_target.py)."""
        n = len(b["ode_noise"])
        eps = self._guided_teacher(b, n)

        def predict(x: torch.Tensor, step: dict[str, Any]) -> torch.Tensor:
            return eps(x, torch.full((n,), int(step["timestep"]), dtype=torch.int64, device=self.device))

        return ddim_loop(predict, b["ode_noise"], self.ode_schedule, "epsilon")

    def _set_lr(self) -> None:
        """This step's learning rate (`learning_rate`)."""
        lr = learning_rate(self.config, self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    # ---- checkpoints ------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.work_dir / "checkpoints"

    def architecture(self) -> dict[str, Any]:
        """What a checkpoint must match besides the config: the teacher's weights, the student's class and config,
        the number of processes (each rank has its own data shard and generator)."""
        import hashlib

        student = self.accelerator.unwrap_model(self.student)
        config = json.dumps({k: v for k, v in dict(student.config).items() if not k.startswith("_")}, sort_keys=True,
                            default=str)
        return {"teacher_weights_sha256": self.parts.weights_sha256, "student_class": type(student).__name__,
                "student_config_sha256": hashlib.sha256(config.encode()).hexdigest(), "processes": self.world_size,
                "trainable_parameters": len(self.trainable)}

    def save(self) -> Path:
        """A checkpoint of this step (collective: every rank calls it; Accelerate + cdx's extras, see checkpoint.py)."""
        main = self.accelerator.is_main_process
        meta = {"history": self.history, "config": self.config.as_dict(), "architecture": self.architecture(),
                "ema": self.ema.scalars(), "micro_step": self.micro_step, "accelerator_step": self.accelerator.step,
                "seconds": round(self.seconds_before + time.perf_counter() - self._run_started, 1)}
        extra = {}
        if self.export_ema is not None:
            meta["export_ema"] = self.export_ema.scalars()
            extra = {EXPORT_EMA_FILE: self.export_ema.state_tensors()} if main else {}
        return save_checkpoint(self.accelerator, self.checkpoint_dir, self.step,
                               self.ema.state_tensors() if main else {}, self.rng, meta, extra=extra)

    def resume(self) -> int:
        """Load the newest checkpoint in the work dir, if any (refusing one made with other options or another
        architecture, naming the field); returns the step reached."""
        path = latest_checkpoint(self.checkpoint_dir)
        if path is None:
            return 0
        saved = read_checkpoint_state(path)
        check_resumable(saved, self.config.as_dict(), self.architecture(), path, defaults=DistillConfig().as_dict())
        saved_steps = saved.get("config", {}).get("steps")
        if self.config.lr_schedule != "constant" and saved_steps != self.config.steps:
            raise InputError(f"{path}: checkpoint was made with steps={saved_steps}, this run has "
                             f"steps={self.config.steps}; with --lr-schedule {self.config.lr_schedule} the decay "
                             "ends at --steps, so keep it to resume")
        state, target = load_checkpoint(self.accelerator, path, self.rng)
        self.ema.load(target, state["ema"])
        if self.export_ema is not None:
            self.export_ema.load(load_extra(path, EXPORT_EMA_FILE), state["export_ema"])
        self.step, self.history = int(state["step"]), list(state["history"])
        self.seconds_before = float(state.get("seconds", 0.0))
        self.micro_step = int(state["micro_step"])
        self.accelerator.step = int(state["accelerator_step"])  # the accumulation phase (a sync point: 0 mod k)
        return self.step

    # ---- the loop ---------------------------------------------------------------------------------------
    def run(self, show: bool = True, stop_at: int | None = None) -> None:
        """Train to `config.steps` (or `stop_at`) optimizer steps, checkpointing and sampling at sync points only;
        stop on a NaN loss (seen by every rank: the loss is averaged over processes)."""
        acc, cfg = self.accelerator, self.config
        end = min(cfg.steps, stop_at or cfg.steps)
        with TrainingProgress("distill", cfg.steps, start=self.step, enabled=show and acc.is_main_process) as bar:
            started, first = time.perf_counter(), self.step
            self._run_started = started
            smooth = self.history[-1] if self.history else None
            micro: list[float] = []
            while self.step < end:
                micro.append(self.train_step())
                if not acc.sync_gradients:
                    continue
                loss = float(acc.reduce(torch.tensor(sum(micro) / len(micro), device=self.device), "mean"))
                micro = []
                if not math.isfinite(loss):
                    last = latest_checkpoint(self.checkpoint_dir)
                    raise CdxError(f"NaN/inf loss at step {self.step + 1}; stopped. Last good checkpoint: "
                                   f"{last or 'none'} (lower --lr or use --loss huber)")
                self.step += 1
                smooth = loss if smooth is None else 0.95 * smooth + 0.05 * loss
                self.history.append(loss)
                images = (self.step - first) * cfg.batch_size * cfg.gradient_accumulation * self.world_size
                bar.update(self.step, loss=loss, ema_loss=smooth, **self.terms,
                           img_per_s=images / max(time.perf_counter() - started, 1e-9))
                if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                    self.save()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and acc.is_main_process:
                    self.sample_grid(self.work_dir / "samples" / f"step-{self.step:07d}.png")

    # ---- outputs ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_grid(self, path: Path, per_class: int | None = None, guidance: float | None = None) -> Path:
        """One-step samples of the network that will be saved, one row per class (up to 10 classes; GRID_PER_CLASS
        each unless given, as `stage_folder.redraw_sample_grid` draws a saved folder's)."""
        from cdx.distill.sampling import GRID_PER_CLASS, consistency_sample, save_image_grid

        per_class = per_class or GRID_PER_CLASS
        classes = min(10, len(self.grid_prompts) or 1)
        labels = torch.arange(classes).repeat_interleave(per_class)
        with self.accelerator.autocast():
            images = consistency_sample(self.exported_network(), self.parts, self.cond, labels, steps=1,
                                        guidance=guidance or sum(self.config.guidance_range) / 2,
                                        parameterization=self.config.parameterization, seed=0,
                                        embedding_dim=self.w_dim)
        return save_image_grid(images.float(), path, columns=per_class)

    def exported_network(self) -> torch.nn.Module:
        """What the student folder gets: the consistency target, or a copy of it with the slow export EMA's weights
        (`--export-ema-decay`)."""
        if self.export_ema is None:
            return self.target
        return self.export_ema.weights_into(copy.deepcopy(self.target))

    def save_student(self, folder: Path, train_seconds: float, class_names: list[str]) -> None:
        """The exported network (the target, or the slow export EMA) + the teacher's VAE + an LCMScheduler, as a
        diffusers pipeline folder; with --lora-rank only its LoRA (diffusers' format) + cdx.json."""
        from cdx.atomic import sha256_file
        from cdx.distill.loading import read_cdx_info
        from cdx.distill.teacher import save_pipeline
        from cdx.machine import describe_machine

        parts = self.export_parts
        info = {"kind": "student", "teacher": portable_path(parts.path), "teacher_weights_sha256": parts.weights_sha256,
                "parameterization": self.config.parameterization, "guidance_range": list(self.config.guidance_range),
                "distill": self.config.as_dict(), "train_seconds": round(train_seconds, 1), "steps": self.step,
                "final_loss": self.history[-1] if self.history else None, "processes": self.world_size,
                "machine": describe_machine(str(self.device))}
        unet_file = Path(parts.path) / "unet" / "diffusion_pytorch_model.safetensors"
        if unet_file.is_file():  # which teacher UNet (a `cdx teacher continue-unet` changes only that) the student learnt
            info["teacher_unet_sha256"] = sha256_file(unet_file)
        if self.config.init_student:  # the student it started from: its record, so model cards list every stage
            earlier = {k: v for k, v in read_cdx_info(Path(self.config.init_student)).items() if k != "class_names"}
            if earlier:
                info["init_from"] = earlier
        if self.config.parameterization == "edm":
            info["diffusers_scheduler"] = ("approximate: LCMScheduler has no EDM boundary condition (c_skip/c_out); "
                                           "cdx sample, cdx convert and the manifest use the exact EDM constants")
        if self.config.lora_rank:
            from cdx.distill.lora import save_lora

            info.update(kind="lora", lora_rank=self.config.lora_rank, guidance_embedded=bool(self.w_dim),
                        class_names=class_names)
            save_lora(folder, self.exported_network(), info)
            return
        scheduler = LCMScheduler.from_config(parts.scheduler_config, timestep_scaling=10.0,
                                             original_inference_steps=self.config.num_solver_steps)
        if parts.conditioning == "text_embedding":
            self._save_text_pipeline(folder, scheduler, class_names, info, self.exported_network())
        else:
            save_pipeline(folder, self.exported_network(), parts.vae, scheduler, class_names, info)

    def _save_text_pipeline(self, folder: Path, scheduler, class_names: list[str], info: dict[str, Any],
                            target: torch.nn.Module) -> None:
        from diffusers import LatentConsistencyModelPipeline

        parts = self.export_parts
        pipe = LatentConsistencyModelPipeline(vae=parts.vae, text_encoder=parts.text_encoder,
                                              tokenizer=parts.tokenizer, unet=target, scheduler=scheduler,
                                              safety_checker=None, feature_extractor=None, requires_safety_checker=False)
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / "cdx.json").write_text(json.dumps({"class_names": class_names, **info}, indent=2) + "\n", "utf-8")


def distill_student(teacher: str | Path, out: Path, config: DistillConfig, data: str | Path | None = None,
                    work_dir: Path | None = None, resume: bool = True, overwrite: bool = False,
                    limit: int | None = None, show: bool = True, data_options: DataOptions | None = None,
                    rollout_cache: str | Path | None = None) -> dict[str, Any]:
    """Distill `teacher` into a student pipeline at `out`; checkpoints and sample grids go to `work_dir`."""
    from accelerate import PartialState

    from cdx.atomic import atomic_directory, refuse_existing
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sources import open_source

    config.validate()
    if rollout_cache is not None:
        from cdx.distill.rollout_cache import fresh_noise_refusal

        if fresh_noise_refusal(config):
            raise InputError(fresh_noise_refusal(config))
    refuse_existing(out, overwrite)
    parts = load_latent_pipeline(teacher)
    if parts.conditioning == "none":
        config.guidance_range = (1.0, 1.0)
    config.validate(int(parts.scheduler_config.get("num_train_timesteps", 1000)))
    options = data_options or DataOptions()
    work = Path(work_dir) if work_dir else Path(str(out) + ".work")
    state = PartialState(cpu=cpu_ranks())  # the processes `accelerate launch` started (one without it); main writes
    if state.is_main_process:
        prepare_work_dir(work, resume)
    state.wait_for_everyone()
    show = show and state.is_main_process
    dataset = open_source(data, config.resolution or teacher_resolution(parts), int(parts.vae.config.in_channels),
                          limit, cache_dir=work / "hf-datasets", shuffle_buffer=options.shuffle_buffer)
    distiller = ConsistencyDistiller(parts, dataset, config, work, data_options=options)
    if rollout_cache is not None:  # write/resume the teacher's solver steps once, then train from them
        from cdx.distill.rollout_cache import attach_rollouts

        cached = attach_rollouts(distiller, rollout_cache, show=show)
        if show:
            print(f"rollout cache {rollout_cache}: {cached['records']} micro-batches ({cached['written']} written now, "
                  f"{cached['teacher_calls']} teacher calls in all); training makes no teacher calls", flush=True)
    start_step, seconds = resume_and_run(distiller, resume, show)
    seconds += distiller.seconds_before  # a resumed run's time includes the runs before its checkpoint
    if distiller.batches.summary() and state.is_main_process:
        print(distiller.batches.summary(), file=sys.stderr, flush=True)
    if state.is_main_process:
        with atomic_directory(out, overwrite=overwrite) as staging:
            distiller.save_student(staging, seconds, distiller.grid_prompts)
            distiller.sample_grid(staging / "sample_grid.png")
    state.wait_for_everyone()
    return {"steps": distiller.step, "resumed_from": start_step, "seconds": seconds,
            "final_loss": distiller.history[-1] if distiller.history else None, "skipped": len(distiller.batches.skipped),
            "main_process": state.is_main_process}
