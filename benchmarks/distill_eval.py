"""`cdx evaluate`: teacher (full and DDIM 1/2/4/8 steps) vs student (1/2/4 steps) on the same seeds and labels.

Reports Fréchet distance and class accuracy under cdx's Fashion-MNIST classifier (always), FID/KID-free
Inception FID when `inception=True`, and wall time per image on eager PyTorch, so the distillation speed-up is
a ratio taken in one run. Writes quality.json, quality.md and a side-by-side grid PNG.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.atomic import atomic_write_text
from cdx.benchmarks.quality import InceptionFeatures, classifier_features, frechet_distance, load_classifier


@dataclass(frozen=True)
class SamplerSpec:
    """One row of the table."""

    name: str
    model: str  # "teacher" | "student"
    steps: int


def spec_key(spec: SamplerSpec) -> str:
    """Short name for --rows: teacher50, teacher4, student1, …"""
    return f"{spec.model}{spec.steps}"


DEFAULT_SPECS = (
    SamplerSpec("teacher DDIM 50 (full)", "teacher", 50),
    SamplerSpec("teacher DDIM 8", "teacher", 8),
    SamplerSpec("teacher DDIM 4", "teacher", 4),
    SamplerSpec("teacher DDIM 2", "teacher", 2),
    SamplerSpec("teacher DDIM 1", "teacher", 1),
    SamplerSpec("student 4-step", "student", 4),
    SamplerSpec("student 2-step", "student", 2),
    SamplerSpec("student 1-step", "student", 1),
)


def _generate(spec: SamplerSpec, teacher, student, cond, n: int, guidance: float, batch: int,
              parameterization: str) -> tuple[torch.Tensor, float]:
    from cdx.distill.sampling import consistency_sample, teacher_sample

    images, seconds = [], 0.0
    for b, start in enumerate(range(0, n, batch)):
        labels = torch.arange(start, min(n, start + batch)) % 10
        t0 = time.perf_counter()
        if spec.model == "teacher":
            out = teacher_sample(teacher, cond, labels, steps=spec.steps, guidance=guidance, seed=1000 + b)
        else:
            out = consistency_sample(student.unet, student, cond, labels, steps=spec.steps, guidance=guidance,
                                     parameterization=parameterization, seed=1000 + b)
        seconds += time.perf_counter() - t0
        images.append(out)
    return torch.cat(images), seconds / n * 1e3


def _latency_batch1(spec: SamplerSpec, teacher, student, cond, guidance: float, parameterization: str,
                    runs: int = 7) -> float:
    """Median wall time (ms) of one image, batch 1, eager PyTorch."""
    from cdx.distill.sampling import consistency_sample, teacher_sample

    labels = torch.tensor([3])
    timings = []
    for r in range(runs + 1):
        t0 = time.perf_counter()
        if spec.model == "teacher":
            teacher_sample(teacher, cond, labels, steps=spec.steps, guidance=guidance, seed=r)
        else:
            consistency_sample(student.unet, student, cond, labels, steps=spec.steps, guidance=guidance,
                               parameterization=parameterization, seed=r)
        timings.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(timings[1:]))


def evaluate_distillation(teacher_dir: str, student_dir: str, out_dir: Path, n: int = 1000, guidance: float = 3.0,
                          inception: bool = False, specs: tuple[SamplerSpec, ...] = DEFAULT_SPECS,
                          batch: int = 250, progress=None) -> dict[str, Any]:
    """Run every sampler spec on the same seeds/labels and write quality.json / quality.md / grid PNG."""
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.data import load_fashion_mnist
    from cdx.distill.loading import load_latent_pipeline, read_cdx_info
    from cdx.distill.sampling import save_image_grid

    say = progress or (lambda _m: None)
    teacher, student = load_latent_pipeline(teacher_dir), load_latent_pipeline(student_dir)
    info = read_cdx_info(Path(student_dir))
    parameterization = info.get("parameterization", "lcm")
    cond = TeacherConditioning(teacher, teacher.class_names)
    classifier = load_classifier()
    inception_model = InceptionFeatures() if inception else None

    say(f"reference features ({n} Fashion-MNIST test images)")
    test = load_fashion_mnist(split="test")
    real = (test.images[:n] + 1) / 2
    real_feats, real_pred = classifier_features(classifier, real)
    train = load_fashion_mnist(split="train", limit=n)
    train_feats, _ = classifier_features(classifier, (train.images + 1) / 2)
    real_inception = inception_model(real) if inception_model else None
    rows: list[dict[str, Any]] = [{
        "name": "real train images (floor at this n)", "model": "data", "steps": 0,
        "fd_classifier": frechet_distance(train_feats, real_feats),
        "accuracy": float((real_pred == test.labels[:n].numpy()).mean()),
    }]
    if inception_model:
        rows[0]["fid_inception"] = frechet_distance(inception_model((train.images + 1) / 2), real_inception)
    grid_rows = []
    labels = (torch.arange(n) % 10).numpy()
    for spec in specs:
        say(f"{spec.name}: {n} samples")
        images, ms_per_image = _generate(spec, teacher, student, cond, n, guidance, batch, parameterization)
        feats, pred = classifier_features(classifier, images)
        row = {"name": spec.name, "model": spec.model, "steps": spec.steps,
               "fd_classifier": frechet_distance(feats, real_feats), "accuracy": float((pred == labels).mean()),
               "ms_per_image_batched": ms_per_image,
               "ms_batch1": _latency_batch1(spec, teacher, student, cond, guidance, parameterization)}
        if inception_model:
            say(f"{spec.name}: Inception features")
            row["fid_inception"] = frechet_distance(inception_model(images), real_inception)
        rows.append(row)
        grid_rows.append(images[:10])
    full = next(r for r in rows if r["name"].endswith("(full)"))
    for row in rows[1:]:
        row["speedup_vs_teacher_full"] = full["ms_batch1"] / row["ms_batch1"]
    result = {"n": n, "guidance": guidance, "teacher": teacher_dir, "student": student_dir, "rows": rows,
              "feature_space": "cdx Fashion-MNIST classifier (128-d)" + (" + Inception-v3 (2048-d)" if inception else "")}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "quality.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "quality.md", render_quality_markdown(result))
    save_image_grid(torch.cat(grid_rows), out_dir / "teacher_vs_student.png", columns=10)
    return result


def render_quality_markdown(result: dict[str, Any]) -> str:
    fid = any("fid_inception" in r for r in result["rows"])
    head = "| sampler | FD (classifier) | " + ("FID (Inception) | " if fid else "") + \
        "class accuracy | ms/image (batch 250) | ms (batch 1) | speed-up vs teacher full |"
    lines = [f"n = {result['n']} samples per row (labels cycle 0–9, same seeds per row), guidance {result['guidance']}; "
             f"features: {result['feature_space']}.", "", head, "|---|---:|" + ("---:|" if fid else "") + "---:|---:|---:|---:|"]
    for r in result["rows"]:
        cells = [r["name"], f"{r['fd_classifier']:.2f}"]
        if fid:
            cells.append(f"{r['fid_inception']:.1f}" if "fid_inception" in r else "—")
        cells += [f"{r['accuracy']:.3f}", f"{r['ms_per_image_batched']:.2f}" if "ms_per_image_batched" in r else "—",
                  f"{r['ms_batch1']:.1f}" if "ms_batch1" in r else "—",
                  f"{r['speedup_vs_teacher_full']:.1f}×" if "speedup_vs_teacher_full" in r else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_model_cards(teacher_dir: str, student_dir: str, result: dict[str, Any], evaluate_command: str) -> list[Path]:
    """README.md model cards for the teacher and the student: reproduce command, training time, this quality table."""
    from cdx.defaults import portable_path
    from cdx.distill.loading import read_cdx_info
    from cdx.distill.model_card import distill_command, teacher_command, write_model_card

    table = render_quality_markdown(result)
    measured = f"Measured with `{evaluate_command}` (2-core CPU, eager PyTorch):\n\n{table}"
    teacher_info = read_cdx_info(Path(teacher_dir))
    student_info = read_cdx_info(Path(student_dir))
    return [
        write_model_card(Path(teacher_dir), "cdx embedded teacher: class-conditional latent diffusion on Fashion-MNIST",
                         teacher_command(teacher_info.get("recipe", {}), portable_path(teacher_dir)), measured),
        write_model_card(Path(student_dir), "cdx embedded student: one-step consistency model distilled from the teacher",
                         distill_command(student_info.get("distill", {}), portable_path(student_dir)), measured),
    ]
