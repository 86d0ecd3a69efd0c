"""Quality of the embedded emoji text-to-image models, measured offline: Inception FID/KID against real emoji images
and prompt adherence without CLIP, as the category accuracy (emoji.json's 9 categories) of generated images for
held-out prompts (captions the teacher and the student never trained on), judged by a small classifier cdx trains.

    python -m cdx.benchmarks.emoji_quality classifier   # train + save cdx/assets/emoji_classifier.safetensors
    python -m cdx.benchmarks.emoji_quality reference    # Inception features → cdx/assets/reference/emoji.safetensors
    python -m cdx.benchmarks.emoji_quality run [--seeds 2] [--out out/emoji_quality]

`run` samples every held-out prompt with the same seeds for every row (teacher DDIM 50/8/4/2/1 with CFG, student
1/2/4 consistency steps with its distilled w), through cdx's own samplers (distill/sampling.py), and writes
quality.json, quality.md and a prompt grid. FID at this n is strongly biased upwards: compare rows with each other and
with the floor row (real held-out images vs real training images at the same n); KID is unbiased.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cdx.defaults import ASSETS, EMOJI_STUDENT_DIR, EMOJI_TEACHER_DIR
from cdx.distill.emoji import HELD_OUT_PER_CATEGORY
from cdx.errors import InputError

CLASSIFIER_PATH = ASSETS / "emoji_classifier.safetensors"
REFERENCE_PATH = ASSETS / "reference" / "emoji.safetensors"
TEACHER_PATH = EMOJI_TEACHER_DIR
STUDENT_PATH = EMOJI_STUDENT_DIR
FLOOR_N = 216
GUIDANCE = 3.0
GRID_COLUMNS = ("teacher50", "teacher4", "student1", "student2", "student4")


class EmojiCategoryClassifier(nn.Module):
    """A small CNN on 3×32×32 images in [-1, 1] predicting emoji.json's category (9 classes)."""

    def __init__(self, num_classes: int = 9):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 6, batch: int = 64,
                     seed: int = 0) -> EmojiCategoryClassifier:
    """Class-weighted cross-entropy (skin-tone variants make People & Body 5× the rest), light augmentation
    (shifts of ≤ 2 px, brightness) so generated images that are slightly off are still judged by content."""
    torch.manual_seed(seed)
    model = EmojiCategoryClassifier(num_classes)
    counts = torch.bincount(labels, minlength=num_classes).float().clamp(min=1)
    weight = counts.sum() / (num_classes * counts)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * (len(images) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(batch):
            if len(idx) < batch:
                continue
            x = images[idx]
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=gen))
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            x = (x + 0.1 * torch.randn(len(x), 1, 1, 1, generator=gen)).clamp(-1, 1)
            loss = nn.functional.cross_entropy(model(x), labels[idx], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return model.eval()


def load_classifier(path: Path = CLASSIFIER_PATH) -> tuple[EmojiCategoryClassifier, dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise InputError(f"emoji classifier missing: {path} (python -m cdx.benchmarks.emoji_quality classifier)")
    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata() or {}
    model = EmojiCategoryClassifier(len(json.loads(meta.get("categories", "[]"))) or 9)
    model.load_state_dict(load_file(path))
    return model.eval(), meta


@torch.no_grad()
def predict(model: EmojiCategoryClassifier, images01: torch.Tensor) -> np.ndarray:
    """Predicted category of images in [0, 1] (any size, resized to 32)."""
    x = images01.float()
    if x.shape[-1] != 32:
        x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    return torch.cat([model(b * 2 - 1).argmax(1) for b in x.split(256)]).numpy()


def cmd_classifier(out: Path = CLASSIFIER_PATH) -> dict[str, Any]:
    from safetensors.torch import save

    from cdx.atomic import atomic_write_bytes
    from cdx.distill.emoji import CATEGORIES, load_emoji

    start = time.perf_counter()
    train = load_emoji(size=32, split="train")
    held = load_emoji(size=32, split="held_out")
    model = train_classifier(train.images, train.labels, len(CATEGORIES))
    accuracy = float((predict(model, held.images / 2 + 0.5) == held.labels.numpy()).mean())
    meta = {"categories": json.dumps(CATEGORIES), "held_out_accuracy": f"{accuracy:.4f}", "held_out_images": str(len(held)),
            "train_images": str(len(train)), "command": "python -m cdx.benchmarks.emoji_quality classifier"}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(out, save(state, metadata=meta))
    result = {"held_out_accuracy": accuracy, "held_out_images": len(held), "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    return result


def _inception():
    from cdx.benchmarks.quality import InceptionFeatures

    return InceptionFeatures()


def cmd_reference(out: Path = REFERENCE_PATH, floor_n: int = FLOOR_N) -> dict[str, Any]:
    """Inception features of every held-out image and of `floor_n` training images (seeded pick), fp16."""
    from safetensors.torch import save

    from cdx.atomic import atomic_write_bytes
    from cdx.distill.emoji import EMOJI_PACKAGE, load_emoji

    start = time.perf_counter()
    inception = _inception()
    held = load_emoji(size=32, split="held_out")
    train = load_emoji(size=32, split="train")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:floor_n]
    feats = {"held_out": inception(held.images / 2 + 0.5), "train_floor": inception(train.images[pick] / 2 + 0.5)}
    meta = {"source": EMOJI_PACKAGE, "size": "32", "held_out_n": str(len(held)), "train_floor_n": str(floor_n),
            "train_floor_pick": "torch.randperm(len(train), Generator().manual_seed(0))[:n]",
            "inception_sha256": inception.sha256, "protocol": inception.protocol,
            "command": "python -m cdx.benchmarks.emoji_quality reference"}
    atomic_write_bytes(out, save({k: torch.from_numpy(v).half() for k, v in feats.items()}, metadata=meta))
    result = {k: len(v) for k, v in feats.items()} | {"seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result))
    return result


def load_reference(path: Path = REFERENCE_PATH) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    if not path.is_file():
        raise InputError(f"emoji reference features missing: {path} (python -m cdx.benchmarks.emoji_quality reference)")
    with safe_open(str(path), "pt") as handle:
        return {k: handle.get_tensor(k).double().numpy() for k in handle.keys()}, handle.metadata() or {}  # noqa: SIM118


def generate(teacher: str, student: str, prompts: list[str], seeds: list[int],
             rows: list[str]) -> dict[str, tuple[torch.Tensor, float]]:
    """(images in [0, 1], seconds) per row ('teacher50', ..., 'student1', ...): every prompt × every seed, the same
    initial noise per seed in every row."""
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sampling import consistency_sample, teacher_sample

    use_teacher, use_student = any(r.startswith("teacher") for r in rows), any(r.startswith("student") for r in rows)
    t_parts = load_latent_pipeline(teacher) if use_teacher else None
    s_parts = load_latent_pipeline(student) if use_student else None
    t_cond = TeacherConditioning(t_parts, prompts) if t_parts else None
    s_cond = TeacherConditioning(s_parts, prompts) if s_parts else None
    labels = torch.arange(len(prompts))
    out: dict[str, tuple[torch.Tensor, float]] = {}
    for row in rows:
        start = time.perf_counter()
        steps = int(row.removeprefix("teacher").removeprefix("student"))
        images = []
        for seed in seeds:
            if row.startswith("teacher"):
                images.append(teacher_sample(t_parts, t_cond, labels, steps, GUIDANCE, seed))
            else:
                images.append(consistency_sample(s_parts.unet, s_parts, s_cond, labels, steps, GUIDANCE,
                                                 s_parts.parameterization, seed))
        out[row] = (torch.cat(images), time.perf_counter() - start)
    return out


ROWS = ("teacher50", "teacher8", "teacher4", "teacher2", "teacher1", "student1", "student2", "student4")


def cmd_run(out: Path, seeds: int = 2, teacher: str = str(TEACHER_PATH), student: str = str(STUDENT_PATH),
            rows: tuple[str, ...] = ROWS, inception_rows: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Measure `rows` and merge them into `out/quality.json` (rows measured earlier with the same prompts and seeds
    are kept, so teacher and student rows can be measured in separate runs). Inception features only for
    `inception_rows` (default: all): at ≈ 0.2–4 s per image on a shared 2-core CPU it is the slow part."""
    from cdx.distill.emoji import CATEGORIES, held_out_prompts, load_emoji, read_records
    from cdx.images import save_image_grid
    from cdx.machine import describe_machine
    from cdx.metrics import frechet_distance, kid

    out.mkdir(parents=True, exist_ok=True)
    pairs = held_out_prompts(read_records())
    prompts, categories = [p for p, _ in pairs], np.array([c for _, c in pairs])
    classifier, cmeta = load_classifier()
    reference, rmeta = load_reference()
    inception = _inception()
    if rmeta.get("inception_sha256") != inception.sha256:
        raise InputError(f"{REFERENCE_PATH}: made with other Inception weights; recompute it (emoji_quality reference)")
    held = load_emoji(size=32, split="held_out")
    real_acc = float((predict(classifier, held.images / 2 + 0.5) == held.labels.numpy()).mean())
    ref = reference["held_out"]
    previous = json.loads((out / "quality.json").read_text("utf-8")) if (out / "quality.json").is_file() else {}
    if previous and (previous.get("prompts") != prompts or len(previous.get("seeds", [])) != seeds):
        previous = {}  # other prompts or seeds: not comparable, start a new table
    kept = {r["row"]: r for r in previous.get("rows", [])}
    table = [{"row": "real held-out images (floor)", "n": len(reference["train_floor"]),
              "fid": frechet_distance(reference["train_floor"], ref), "kid": kid(reference["train_floor"], ref),
              "category_accuracy": real_acc, "seconds": None}]
    start_all = time.perf_counter()
    generated = generate(teacher, student, prompts, list(range(seeds)), list(rows))
    for row in rows:
        images, seconds = generated[row]
        acc = float((predict(classifier, images) == np.tile(categories, seeds)).mean())
        entry = {"row": row, "n": len(images), "fid": None, "kid": None, "category_accuracy": acc,
                 "seconds": round(seconds, 1)}
        if inception_rows is None or row in inception_rows:
            feats = inception(images)
            entry.update(fid=frechet_distance(feats, ref), kid=kid(feats, ref))
        kept[row] = entry
        print(f"{row}: n {len(images)}  FID {entry['fid']}  KID {entry['kid'] and entry['kid']['mean']}  "
              f"category acc {acc:.3f}  ({seconds:.0f} s)", flush=True)
    table += [kept[r] for r in ROWS if r in kept]
    first = [prompts.index(next(p for p, c in pairs if c == k)) for k in range(len(CATEGORIES))]
    for row in generated:  # seed 0 of one held-out prompt per category; the README grid puts these side by side
        save_image_grid(generated[row][0][first], out / f"column_{row}.png", columns=1)
    grid_rows = [r for r in GRID_COLUMNS if (out / f"column_{r}.png").is_file()]
    cells = torch.stack([_column(out / f"column_{r}.png", len(first))[i] for i in range(len(first)) for r in grid_rows])
    save_image_grid(nn.functional.interpolate(cells, scale_factor=3, mode="nearest"), out / "grid.png",
                    columns=len(grid_rows))
    result = {"grid": {"columns": grid_rows, "rows": [prompts[i] for i in first], "seed": 0},
              "prompts": prompts, "seeds": list(range(seeds)), "guidance": GUIDANCE, "rows": table,
              "classifier": {"held_out_accuracy_real": real_acc, **cmeta}, "reference": rmeta,
              "machine": describe_machine(), "seconds": round(time.perf_counter() - start_all, 1),
              "chance_accuracy": 1 / len(CATEGORIES)}
    (out / "quality.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    (out / "quality.md").write_text(markdown_table(result), "utf-8")
    print(markdown_table(result))
    return result


def _column(path: Path, count: int) -> torch.Tensor:
    """The images of a one-column grid PNG written by `save_image_grid`, back as (count, 3, H, W) in [0, 1]."""
    from PIL import Image

    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
    side = pixels.shape[-1]
    pad = (pixels.shape[1] - count * side) // max(1, count - 1) if count > 1 else 0
    return torch.stack([pixels[:, i * (side + pad): i * (side + pad) + side] for i in range(count)])


def markdown_table(result: dict[str, Any]) -> str:
    lines = ["| row | n | Inception FID | KID ×10³ (± std) | category accuracy | sampling time |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        kid_v = r["kid"]
        secs = "" if r["seconds"] is None else f"{r['seconds']:.0f} s"
        fid = "not measured" if r["fid"] is None else f"{r['fid']:.1f}"
        kid_s = "not measured" if kid_v is None else f"{1e3 * kid_v['mean']:.1f} ± {1e3 * kid_v['std']:.1f}"
        lines.append(f"| {r['row']} | {r['n']} | {fid} | {kid_s} | {r['category_accuracy']:.3f} | {secs} |")
    return "\n".join(lines) + "\n"


def _folder_params(folder: Path) -> dict[str, int]:
    from safetensors import safe_open

    counts = {}
    for sub in ("text_encoder", "unet", "vae"):
        total = 0
        for file in (folder / sub).glob("*.safetensors"):
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 — safe_open is not iterable
                    total += int(np.prod(handle.get_slice(key).get_shape()))
        counts[sub] = total
    return counts


def write_cards(quality: Path, teacher_command: str, student_command: str, note: str = "",
                teacher: Path = TEACHER_PATH, student: Path = STUDENT_PATH) -> list[Path]:
    """README.md model cards of the committed emoji teacher and student from their cdx.json and quality.json."""
    from cdx.atomic import atomic_write_text
    from cdx.distill.loading import read_cdx_info

    result = json.loads(quality.read_text("utf-8"))
    table = markdown_table(result)
    how = (f"Measured with `python -m cdx.benchmarks.emoji_quality run --seeds {len(result['seeds'])}`: the "
           f"{len(result['prompts'])} held-out prompts (captions of base emoji kept out of training, "
           f"{len(result['prompts']) // 9} per category) × seeds {result['seeds']}, the same initial noise in every "
           f"row, guidance {result['guidance']}; FID/KID vs the Inception features of the held-out real images "
           f"(`cdx/assets/reference/emoji.safetensors`); category accuracy by the cdx classifier "
           f"(`cdx/assets/emoji_classifier.safetensors`; chance {result['chance_accuracy']:.3f}). FID at this n is "
           f"biased far upwards (the floor row shows the real-vs-real value at this n): read the rows relative to each "
           f"other; KID is unbiased. Machine: {result['machine']}.")
    written = []
    for folder, kind, command, cls, steps in ((teacher, "teacher", teacher_command, "StableDiffusionPipeline", 50),
                                               (student, "student", student_command, "LatentConsistencyModelPipeline", 1)):
        info = read_cdx_info(folder)
        params = _folder_params(folder)
        size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and p.name != "README.md") / 1e6
        seconds = info.get("train_seconds")
        total = seconds.get("total") if isinstance(seconds, dict) else seconds
        title = ("cdx embedded text-to-image teacher (Noto emoji, 32×32)" if kind == "teacher"
                 else "cdx embedded text-to-image student: consistency-distilled from the emoji teacher")
        lines = [
            f"# {title}", "",
            f"- a stock diffusers `{cls}` (no remote code): CLIPTextModel {params['text_encoder']:,} parameters, "
            f"UNet2DConditionModel {params['unet']:,}, AutoencoderKL {params['vae']:,}; {size_mb:.1f} MB",
            "- data: npm `emoji-datasource-google@16.0.0` (MIT), Google Noto emoji 64 px RGBA composited on white, "
            "downsampled to 32 px; captions = emoji.json names in lower case (+ skin tone); "
            f"{HELD_OUT_PER_CATEGORY} base emoji per category held out (with their skin tones)",
            f"- training time: {total:.0f} s" if total is not None else "- training time: not recorded",
            f"- machine: {info.get('machine', 'not recorded')}" + (f"; {note}" if note else ""),
            "", "## Reproduce", "", "```bash", command, "```", "",
            "## Use", "", "```python", f"from diffusers import {cls}",
            f'pipe = {cls}.from_pretrained("cdx/assets/emoji_{kind}")',
            f'image = pipe("red apple", num_inference_steps={steps}, guidance_scale=3.0, height=32, width=32).images[0]',
            "```", "", "## Measured quality", "", how, "", table,
            "", "## Recipe (cdx.json)", "", "```json",
            json.dumps({k: v for k, v in info.items() if k not in ("class_names", "loss_history")}, indent=2), "```", ""]
        path = folder / "README.md"
        atomic_write_text(path, "\n".join(lines))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cdx.benchmarks.emoji_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("classifier", "reference", "run", "cards"))
    parser.add_argument("--teacher-command", default="")
    parser.add_argument("--student-command", default="")
    parser.add_argument("--note", default="")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows to measure (merged into quality.json)")
    parser.add_argument("--inception-rows", default=None, help="rows that get Inception FID/KID (default: all)")
    parser.add_argument("--out", type=Path, default=Path("out/emoji_quality"))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--teacher", default=str(TEACHER_PATH))
    parser.add_argument("--student", default=str(STUDENT_PATH))
    args = parser.parse_args(argv)
    if args.command == "classifier":
        cmd_classifier()
    elif args.command == "reference":
        cmd_reference()
    elif args.command == "cards":
        for path in write_cards(args.out / "quality.json", args.teacher_command, args.student_command, args.note):
            print(f"wrote {path}")
    else:
        rows = tuple(r for r in args.rows.split(",") if r)
        unknown = [r for r in rows if r not in ROWS]
        if unknown:
            raise SystemExit(f"unknown row(s) {', '.join(unknown)}; valid: {', '.join(ROWS)}")
        inception_rows = tuple(args.inception_rows.split(",")) if args.inception_rows is not None else None
        cmd_run(args.out, args.seeds, args.teacher, args.student, rows, inception_rows)


if __name__ == "__main__":
    main()
