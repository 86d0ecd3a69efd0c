"""How far a student's one-step latents land from its teacher's ODE endpoints: the σ a one-step decoder should train at.

From the same initial noise, condition and guidance, the student's one step and the teacher's DDIM (η = 0, the
probability-flow ODE it was distilled from) should reach the same latent. The RMS of the difference, in the diffusion
latent space, is the miss `cdx student finetune-decoder --latent-noise auto` trains the decoder to absorb: on the
embedded student it is 0.11 (latent std 1.0; the encoder's posterior spreads 0.036), and iid noise of that size costs
the teacher's own samples 8.5 FID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdx.distill.progress import TrainingProgress
from cdx.errors import InputError

MISS_SEED_OFFSET = 2_000_003  # never `cdx evaluate`'s seeds (1000 + batch) nor the decoder fit's student samples


@torch.no_grad()
def measure_one_step_miss(student: str | Path, teacher: str | Path | None = None, samples: int = 256,
                          teacher_steps: int = 50, seed: int = 0, batch: int = 64, show: bool = True) -> dict[str, Any]:
    """RMS (over every latent element of `samples` samples) between the student's one-step latents and the teacher's
    `teacher_steps`-step DDIM latents from the same noise, conditions cycling over the classes / prompts, at the
    student's default guidance. `teacher`: the student's recorded one when None. Returns the measurement's record."""
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline, recorded_teacher
    from cdx.distill.sampling import consistency_latents, initial_noise, teacher_latents

    if samples < 1:
        raise InputError(f"--miss-samples {samples}: must be >= 1")
    teacher = teacher or recorded_teacher(student)
    if teacher is None:
        raise InputError(f"--student {student}: its cdx.json names no teacher on disk; pass --teacher (the pipeline "
                         f"it was distilled from) to measure its one-step miss")
    parts, teacher_parts = load_latent_pipeline(student), load_latent_pipeline(teacher)
    if teacher_parts.latent_channels != parts.latent_channels or teacher_parts.unet.config.sample_size != \
            parts.unet.config.sample_size:
        raise InputError(f"--teacher {teacher}: its latents are not the student's ({student}) shape")
    cond, teacher_cond = TeacherConditioning(parts, parts.class_names), \
        TeacherConditioning(teacher_parts, teacher_parts.class_names)
    conditions = max(1, len(parts.class_names or []))
    guidance = parts.default_guidance
    squared, count = 0.0, 0
    with TrainingProgress("one-step miss", samples, enabled=show) as bar:
        for start in range(0, samples, batch):
            labels = torch.arange(start, min(samples, start + batch)) % conditions
            noise = initial_noise(parts, len(labels), MISS_SEED_OFFSET + seed + start)[0]
            one_step = consistency_latents(parts.unet, parts, cond, labels, steps=1, guidance=guidance,
                                           parameterization=parts.parameterization, noise=noise)
            endpoint = teacher_latents(teacher_parts, teacher_cond, labels, steps=teacher_steps, guidance=guidance,
                                       noise=noise)
            squared += float(((one_step.float() - endpoint.float()) ** 2).sum())
            count += one_step.numel()
            bar.update(start + len(labels))
    return {"rms": round((squared / count) ** 0.5, 4), "samples": samples, "teacher_steps": teacher_steps,
            "guidance": guidance, "teacher": str(teacher)}
