"""`cdx evaluate`: teacher (DDIM 50/8/4/2/1 steps, CFG) vs student (1/2/4 consistency steps) on the same seeds and labels.

Headline: Inception FID and KID (the field's metrics) against the first n real Fashion-MNIST **test** images, at a
matched n (FID's bias depends on n: compare rows of one table, never across n), with the real-data features read from
the shipped asset (`cdx/assets/reference`, no dataset needed). Secondary: Fréchet distance and class accuracy under
cdx's 128-d Fashion-MNIST classifier (fast; it ranked the samplers differently from Inception once, so it is not the
headline). A "real train images" row gives the floor of each metric at this n. Wall time per image is eager PyTorch,
so the speed-up is a ratio taken in one run. Writes quality.json, quality.md, the grid PNG and every row's features.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.atomic import atomic_write_bytes, atomic_write_text
from cdx.benchmarks.reference_stats import ReferenceFeatures
from cdx.errors import CdxError, InputError
from cdx.metrics import frechet_distance, kid, kid_subset_size, precision_recall

KID_SUBSETS = 100
PR_NEIGHBOURS = 3  # Kynkäänniemi et al. 2019 and torch-fidelity: the k-th neighbour sets each ball's radius


@dataclass(frozen=True)
class SamplerSpec:
    """One row of the table."""

    name: str
    model: str  # "teacher" | "student"
    steps: int
    renoise_with: str = "fresh"  # a student's multi-step re-noising (`loops.consistency_loop`)


DEFAULT_NOISE_SEED = 1000  # batch b of every row draws its noise from this + b: the protocol's sample set
MAX_NOISE_SEED = 2**62  # torch generators take seeds below 2^63; batches add b to it


def spec_key(spec: SamplerSpec) -> str:
    """Short name for --rows: teacher50, teacher4, student1, student2-ddim, …"""
    return f"{spec.model}{spec.steps}" + ("" if spec.renoise_with == "fresh" else f"-{spec.renoise_with}")


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
# Rows only --rows asks for: the student's multi-step sampler with the deterministic DDIM hop between steps.
EXTRA_SPECS = (
    SamplerSpec("student 4-step, DDIM re-noising", "student", 4, "ddim"),
    SamplerSpec("student 2-step, DDIM re-noising", "student", 2, "ddim"),
)


def parse_rows(rows: str) -> tuple[SamplerSpec, ...]:
    """`teacher50,student1` → those specs in table order; empty → all; unknown names → one line listing the valid ones."""
    keys = [k.strip() for k in rows.split(",") if k.strip()]
    valid = [spec_key(s) for s in DEFAULT_SPECS + EXTRA_SPECS]
    if unknown := [k for k in keys if k not in valid]:
        raise InputError(f"unknown --rows {', '.join(unknown)}; valid: {', '.join(valid)}")
    return tuple(s for s in DEFAULT_SPECS if not keys or spec_key(s) in keys) + \
        tuple(s for s in EXTRA_SPECS if spec_key(s) in keys)


@dataclass
class RowFeatures:
    """What a row's images look like to the two feature networks."""

    classifier: np.ndarray  # (n, 128)
    predicted: np.ndarray  # (n,) classifier labels
    inception: np.ndarray | None  # (n, 2048)


def generate_images(spec: SamplerSpec, teacher, student, cond, n: int, guidance: float, batch: int,
                    parameterization: str, progress=None, noise_seed: int = DEFAULT_NOISE_SEED) -> tuple[torch.Tensor, float]:
    """n images of one row (labels cycle 0–9, batch b seeded noise_seed + b in every row) and the batched ms per
    image."""
    from cdx.distill.sampling import consistency_sample, teacher_sample

    images, seconds = [], 0.0
    for b, start in enumerate(range(0, n, batch)):
        labels = torch.arange(start, min(n, start + batch)) % 10
        t0 = time.perf_counter()
        if spec.model == "teacher":
            out = teacher_sample(teacher, cond, labels, steps=spec.steps, guidance=guidance, seed=noise_seed + b)
        else:
            out = consistency_sample(student.unet, student, cond, labels, steps=spec.steps, guidance=guidance,
                                     parameterization=parameterization, seed=noise_seed + b,
                                     renoise_with=spec.renoise_with)
        seconds += time.perf_counter() - t0
        images.append(out)
        if progress:
            progress(min(n, start + batch), n)
    return torch.cat(images), seconds / n * 1e3


def _latency_batch1(spec: SamplerSpec, teacher, student, cond, guidance: float, parameterization: str,
                    runs: int = 7) -> float:
    """Median wall time (ms) of one image, batch 1, eager PyTorch (first run discarded as warm-up)."""
    from cdx.distill.sampling import consistency_sample, teacher_sample

    labels = torch.tensor([3])
    timings = []
    for r in range(runs + 1):
        t0 = time.perf_counter()
        if spec.model == "teacher":
            teacher_sample(teacher, cond, labels, steps=spec.steps, guidance=guidance, seed=r)
        else:
            consistency_sample(student.unet, student, cond, labels, steps=spec.steps, guidance=guidance,
                               parameterization=parameterization, seed=r, renoise_with=spec.renoise_with)
        timings.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(timings[1:]))


def row_features(images01: torch.Tensor, classifier, inception=None, progress=None) -> RowFeatures:
    """Classifier features (always) and Inception features (when an extractor is given) of images in [0, 1]."""
    from cdx.benchmarks.quality import classifier_features

    feats, predicted = classifier_features(classifier, images01)
    return RowFeatures(feats, predicted, inception(images01, progress=progress) if inception is not None else None)


def score(features: RowFeatures, labels: np.ndarray | None, reference: ReferenceFeatures,
          kid_subsets: int = KID_SUBSETS) -> dict[str, Any]:
    """The table's distribution numbers for one row against the reference (same n on both sides)."""
    if len(features.classifier) != len(reference):
        raise CdxError(f"unmatched n: {len(features.classifier)} samples vs {len(reference)} reference images")
    out: dict[str, Any] = {"fd_classifier": frechet_distance(features.classifier, reference.classifier)}
    if labels is not None:
        out["accuracy"] = float((features.predicted == labels).mean())
    if features.inception is not None and reference.inception is not None:
        out["fid_inception"] = frechet_distance(features.inception, reference.inception)
        out["kid_inception"] = kid(features.inception, reference.inception, subsets=kid_subsets,
                                   subset_size=kid_subset_size(len(reference)))
        if len(reference) > PR_NEIGHBOURS:  # `--n 2`/`3` still scores FID and KID; the balls need k + 1 points
            out["precision_recall_inception"] = precision_recall(features.inception, reference.inception,
                                                                 k=PR_NEIGHBOURS)
    return out


def _predicted_labels(classifier, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return classifier.head(torch.from_numpy(features).float()).argmax(1).numpy()


def _shipped_reference(split: str, n: int, inception_sha256: str | None) -> tuple[ReferenceFeatures | None, str]:
    """The asset's first n images of `split`, or None and why it cannot serve this run."""
    from cdx.benchmarks.reference_stats import load_reference

    try:
        ref = load_reference(split, inception_sha256=inception_sha256)
    except CdxError as err:
        return None, str(err)
    if len(ref) < n:
        return None, f"the shipped reference has {len(ref)} {split} images, n = {n}"
    if inception_sha256 and ref.inception is None:
        return None, f"the shipped reference has no Inception features for {split}"
    return ref.first(n), ""


def load_references(n: int, inception=None, progress=None) -> tuple[ReferenceFeatures, ReferenceFeatures | None]:
    """(test reference, train floor) for n images: the shipped asset when it holds n, else computed from the dataset.

    Without the dataset, an n above the asset's count is one line (FID needs a matched n); the floor row is optional.
    """
    from cdx.benchmarks.reference_stats import compute_split

    say = progress or (lambda _m: None)
    found: dict[str, ReferenceFeatures | None] = {}
    for split in ("test", "train"):
        ref, reason = _shipped_reference(split, n, inception.sha256 if inception is not None else None)
        if ref is None:
            say(f"reference: {split} features of {n} Fashion-MNIST images ({reason})")
            try:
                arrays = compute_split(split, n, inception=inception)
            except InputError as err:
                if split == "train":
                    found[split] = None
                    continue
                raise InputError(f"{reason}; computing it needs the dataset: {err}") from None
            ref = ReferenceFeatures(split, arrays["classifier"], arrays["labels"], arrays.get("inception"),
                                    {"computed": "from the dataset at evaluation time"})
        found[split] = ref
    test = found["test"]
    if test is None:  # unreachable: the test split either loads, is computed, or raised
        raise CdxError("no reference features")
    return test, found["train"]


def save_features(path: Path, features: RowFeatures) -> None:
    """One row's features (fp32 safetensors) so a table can be rescored, or compared with other runs, without resampling."""
    from safetensors.numpy import save

    tensors = {"classifier": features.classifier.astype(np.float32), "predicted": features.predicted.astype(np.int64)}
    if features.inception is not None:
        tensors["inception"] = features.inception.astype(np.float32)
    atomic_write_bytes(path, save(tensors))


def evaluate_distillation(teacher_dir: str, student_dir: str, out_dir: Path, n: int = 1000, guidance: float = 3.0,
                          inception: bool = True, specs: tuple[SamplerSpec, ...] = DEFAULT_SPECS,
                          batch: int = 250, progress=None, timing: bool = True,
                          noise_seed: int = DEFAULT_NOISE_SEED) -> dict[str, Any]:
    """Run every sampler spec on the same seeds/labels and write quality.json / quality.md / grid PNG / features."""
    from cdx.benchmarks.quality import INCEPTION_PROTOCOL, InceptionFeatures, load_classifier
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline, read_cdx_info
    from cdx.images import save_image_grid

    if n < 2:
        raise InputError(f"--n {n}: need at least 2 samples per row")
    if not 0 <= noise_seed <= MAX_NOISE_SEED:
        raise InputError(f"--noise-seed {noise_seed}: must be in 0..{MAX_NOISE_SEED} (batch b samples from it + b)")
    say = progress or (lambda _m: None)
    inception_model = InceptionFeatures() if inception else None  # missing weights: one line before any sampling
    teacher, student = load_latent_pipeline(teacher_dir), load_latent_pipeline(student_dir)
    parameterization = read_cdx_info(Path(student_dir)).get("parameterization", "lcm")
    cond = TeacherConditioning(teacher, teacher.class_names)
    classifier = load_classifier()
    say("reference features")
    real, floor = load_references(n, inception_model, say)
    out_dir = Path(out_dir)
    rows: list[dict[str, Any]] = []
    if floor is not None:
        floor_feats = RowFeatures(floor.classifier, _predicted_labels(classifier, floor.classifier),
                                  floor.inception if inception_model is not None else None)
        rows.append({"name": "real train images (floor at this n)", "model": "data", "steps": 0,
                     **score(floor_feats, floor.labels, real)})
        rows[0]["accuracy"] = float((_predicted_labels(classifier, real.classifier) == real.labels).mean())  # test images
    grid_rows = []
    labels = (np.arange(n) % 10).astype(np.int64)
    step = max(batch, 250)
    for spec in specs:
        images, ms_per_image = generate_images(
            spec, teacher, student, cond, n, guidance, batch, parameterization,
            progress=lambda d, total, s=spec: say(f"{s.name}: sampled {d}/{total}"), noise_seed=noise_seed)
        feats = row_features(images, classifier, inception_model,
                             progress=lambda d, total, s=spec: say(f"{s.name}: Inception {d}/{total}")
                             if d % step == 0 or d == total else None)
        save_features(out_dir / "features" / f"{spec_key(spec)}_g{guidance:g}.safetensors", feats)
        row = {"name": spec.name, "model": spec.model, "steps": spec.steps,
               **({"renoise_with": spec.renoise_with} if spec.renoise_with != "fresh" else {}),
               **score(feats, labels, real),
               "ms_per_image_batched": ms_per_image}
        if timing:
            say(f"{spec.name}: batch-1 latency")
            row["ms_batch1"] = _latency_batch1(spec, teacher, student, cond, guidance, parameterization)
        rows.append(row)
        grid_rows.append(images[:10])
    full = next((r for r in rows if r["model"] == "teacher" and r["steps"] == 50 and "ms_batch1" in r), None)
    for row in rows:
        if full and "ms_batch1" in row:
            row["speedup_vs_teacher_full"] = full["ms_batch1"] / row["ms_batch1"]
    result = {"n": n, "guidance": guidance, "noise_seed": noise_seed, "teacher": teacher_dir, "student": student_dir,
              "rows": rows,
              "reference": f"first {n} Fashion-MNIST test images (32×32)",
              "kid": {"subsets": KID_SUBSETS, "subset_size": kid_subset_size(n)},
              "feature_space": ("Inception-v3 (2048-d; " + INCEPTION_PROTOCOL + ") + " if inception else "")
              + "cdx Fashion-MNIST classifier (128-d)"}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "quality.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out_dir / "quality.md", render_quality_markdown(result))
    if grid_rows:
        save_image_grid(torch.cat(grid_rows), out_dir / "teacher_vs_student.png", columns=10)
    return result


def _cell(row: dict[str, Any], key: str, fmt: str, suffix: str = "") -> str:
    return f"{row[key]:{fmt}}{suffix}" if key in row else "—"


def render_quality_markdown(result: dict[str, Any]) -> str:
    """The table: Inception FID, KID and precision / recall first (when measured), then the classifier's FD and
    accuracy, then time."""
    rows = result["rows"]
    fid = any("fid_inception" in r for r in rows)
    timed = any("ms_batch1" in r for r in rows)
    pr = any("precision_recall_inception" in r for r in rows)
    head = ["sampler"] + (["FID (Inception)", "KID ×10³ (Inception)"] if fid else [])
    head += ["precision / recall (Inception)"] if pr else []
    head += ["FD (classifier)", "class accuracy"]
    head += ["ms/image (batched)", "ms (batch 1)", "speed-up vs teacher full"] if timed else []
    kid_note = ""
    if fid:
        k = result.get("kid", {})
        kid_note = (f" KID: unbiased MMD², cubic polynomial kernel, mean ± std over {k.get('subsets', KID_SUBSETS)} "
                    f"random subsets of {k.get('subset_size', kid_subset_size(result['n']))} per side.")
    if pr:
        neighbours = next(r["precision_recall_inception"]["k"] for r in rows if "precision_recall_inception" in r)
        kid_note += (f" Precision / recall: improved precision and recall (Kynkäänniemi et al. 2019) with k = "
                     f"{neighbours} neighbours: the share of samples inside the real images' manifold (fidelity) / "
                     "of real images inside the samples' (diversity).")
    seed = result.get("noise_seed", DEFAULT_NOISE_SEED)
    lines = [f"n = {result['n']} samples per row (labels cycle 0–9, same seeds in every row: batch b from seed "
             f"{seed} + b), guidance "
             f"{result['guidance']}, against the {result.get('reference', 'real test images')}; features: "
             f"{result['feature_space']}.{kid_note}", "",
             "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for r in rows:
        cells = [r["name"]]
        if fid:
            k = r.get("kid_inception")
            cells += [_cell(r, "fid_inception", ".1f"), f"{k['mean'] * 1e3:.1f} ± {k['std'] * 1e3:.1f}" if k else "—"]
        if pr:
            p = r.get("precision_recall_inception")
            cells += [f"{p['precision']:.3f} / {p['recall']:.3f}" if p else "—"]
        cells += [_cell(r, "fd_classifier", ".2f"), _cell(r, "accuracy", ".3f")]
        if timed:
            cells += [_cell(r, "ms_per_image_batched", ".2f"), _cell(r, "ms_batch1", ".1f"),
                      _cell(r, "speedup_vs_teacher_full", ".1f", "×")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def teacher_stage_folders(stages: int, teacher_out: str, unet_stages: int = 0) -> list[str]:
    """Where the teacher is before its `stages` decoder fine-tunes (out/teacher_base), after each
    (out/teacher_decoder1, …) and after each of its `unet_stages` UNet continuations that followed them
    (out/teacher_unet1, …); the last folder is `teacher_out`."""
    after = [*(f"out/teacher_decoder{i + 1}" for i in range(stages)), *(f"out/teacher_unet{i + 1}" for i in range(unet_stages))]
    return ["out/teacher_base", *after[:-1], teacher_out]


def teacher_stage_commands(teacher_info: dict[str, Any], train_command: str, teacher_out: str) -> list[str]:
    """The teacher card's lines: `train_command`, then (into out/teacher_base first) the decoder fine-tunes and the
    UNet continuations that wrote `teacher_out`, in the order they were made."""
    from cdx.distill.model_card import (
        decoder_finetune_command,
        decoder_finetune_stages,
        unet_continue_command,
        unet_continue_stages,
    )

    decoders, unets = decoder_finetune_stages(teacher_info), unet_continue_stages(teacher_info)
    if not decoders and not unets:
        return [train_command]
    folders = teacher_stage_folders(len(decoders), teacher_out, len(unets))
    lines = [train_command.replace(f"--out {teacher_out}", "--out out/teacher_base", 1)]
    lines += [decoder_finetune_command(record, folders[i + 1], teacher_in=folders[i]) for i, record in enumerate(decoders)]
    lines += [unet_continue_command(record, folders[len(decoders) + j], folders[len(decoders) + j + 1],
                                    f"out/work_unet{j + 1}") for j, record in enumerate(unets)]
    return lines


def _stage_teacher(stage: dict[str, Any], unets: list[dict[str, Any]], teacher_folders: list[str], used: int,
                   decoder_stages: int) -> str | None:
    """The teacher folder a student stage was distilled from, when the teacher's UNet was later continued: a stage
    without `teacher_unet_sha256` (older than the record) or with the first continuation's input UNet learnt the
    UNet as it was before any continuation (its folder after the `used` decoder fine-tunes so far); one with a later
    continuation's input UNet, the folder before that continuation; None (the default teacher) for the final UNet."""
    sha = stage.get("teacher_unet_sha256")
    if sha is None or sha == unets[0].get("init_unet_sha256"):
        return teacher_folders[used]
    for k, record in enumerate(unets[1:], start=1):
        if sha == record.get("init_unet_sha256"):
            return teacher_folders[decoder_stages + k]
    return None


def student_commands(info: dict[str, Any], out: str, teacher_info: dict[str, Any], teacher_out: str) -> str:
    """The command lines that made the student `info` (its cdx.json) at `out`: a student re-distilled with
    `--init-student` records its starting student under `init_from`, whose own commands come first (into
    out/student_stage1, 2, …); a stage whose decoder was fine-tuned with the teacher's (`decoder_finetune` in its
    record) is followed by those `cdx teacher finetune-decoder` lines, with the teacher's folders of the teacher card.
    When the teacher's UNet was continued (`cdx teacher continue-unet`), a stage distilled from an earlier UNet names
    the teacher folder it learnt from (`_stage_teacher`). A stage deepened by `cdx student deepen` (`deepen` in its
    record) is followed by that line, after its fine-tunes."""
    from cdx.distill.model_card import (
        decoder_finetune_command,
        decoder_finetune_stages,
        deepen_command,
        distill_command,
        is_student_decoder_fit,
        recorded_stages,
        student_decoder_command,
        unet_continue_stages,
    )

    chain = [info]
    while chain[-1].get("init_from"):
        chain.append(chain[-1]["init_from"])
    chain.reverse()  # the first-made student first
    teacher_stages = decoder_finetune_stages(teacher_info)
    unets = unet_continue_stages(teacher_info)
    teacher_folders = teacher_stage_folders(len(teacher_stages), teacher_out, len(unets))
    used = 0  # teacher fine-tunes the stages so far went through
    folders = (f"out/student_stage{i}" for i in itertools.count(1))
    lines, previous = [], ""
    for i, stage in enumerate(chain):
        # a student's own decoder fits always; the teacher's shared ones when it has any
        finetunes = [r for r in decoder_finetune_stages(stage) if teacher_stages or is_student_decoder_fit(r)]
        shared = [r for r in finetunes if not is_student_decoder_fit(r)]
        deepens = recorded_stages(stage, "deepen")  # `cdx student deepen` after this stage (and its fine-tunes)
        last = i == len(chain) - 1
        stage_out = ("out/student_base" if i == 0 and shared else
                     out if last and not finetunes and not deepens else next(folders))
        recipe = dict(stage.get("distill", {}))
        if i:
            recipe["init_student"] = previous
        command = distill_command(recipe, stage_out)
        teacher = "out/teacher_base" if i == 0 and shared else None
        if unets:
            teacher = _stage_teacher(stage, unets, teacher_folders, used, len(teacher_stages))
        if teacher:
            command = command.replace(f"--out {stage_out}", f"--teacher {teacher} --out {stage_out}", 1)
        lines.append(command)
        previous = stage_out
        for j, record in enumerate(finetunes):
            target = out if last and j == len(finetunes) - 1 and not deepens else next(folders)
            if is_student_decoder_fit(record):
                lines.append(student_decoder_command(record, previous, target))
            else:  # a teacher decoder fine-tune the student took along (`--student`)
                lines.append(decoder_finetune_command(teacher_stages[used], teacher_folders[used + 1], target,
                                                      teacher_folders[used], previous))
                used += 1
            previous = target
        for j, record in enumerate(deepens):
            target = out if last and j == len(deepens) - 1 else next(folders)
            lines.append(deepen_command(record, previous, target))
            previous = target
    return "\n".join(lines)


def write_model_cards(teacher_dir: str, student_dir: str, result: dict[str, Any], evaluate_command: str) -> list[Path]:
    """README.md model cards for the teacher and the student: reproduce command, training time, this quality table."""
    from cdx.defaults import portable_path
    from cdx.distill.loading import read_cdx_info
    from cdx.distill.model_card import teacher_command, write_model_card

    table = render_quality_markdown(result)
    measured = f"Measured with `{evaluate_command}` (2-core CPU, eager PyTorch):\n\n{table}"
    teacher_info = read_cdx_info(Path(teacher_dir))
    student_info = read_cdx_info(Path(student_dir))
    teacher_out, student_out = portable_path(teacher_dir), portable_path(student_dir)
    teacher_cmd = teacher_command(teacher_info.get("recipe", {}), teacher_out)
    teacher_cmd = "\n".join(teacher_stage_commands(teacher_info, teacher_cmd, teacher_out))
    student_cmd = student_commands(student_info, student_out, teacher_info, teacher_out)
    return [
        write_model_card(Path(teacher_dir), "cdx embedded teacher: class-conditional latent diffusion on Fashion-MNIST",
                         teacher_cmd, measured),
        write_model_card(Path(student_dir), "cdx embedded student: one-step consistency model distilled from the teacher",
                         student_cmd, measured),
    ]
