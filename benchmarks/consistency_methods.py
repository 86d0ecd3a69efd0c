"""Benchmark: CD (online) | CD (cached rollouts) | CT | CT + variance reduction | ECT (| the t-2 bootstrap), one table.

Every method starts from the embedded Fashion-MNIST teacher (cdx/assets/fashion_teacher) with the same seed, data,
batch, learning rate and number of updates; each student (its EMA weights, what cdx saves) is then sampled at 1/2/4
consistency steps on the same labels and seeds, and scored with cdx's classifier Fréchet distance and class accuracy
against the Fashion-MNIST test split (Inception FID with --inception, slow on a CPU). Reported per method: training
time, teacher UNet calls per update (counted with a forward hook, not assumed), and for the cached run the one-off
write pass. Anchors: real train images (the floor at this n), the teacher's DDIM 50, and the untrained starting point
(the teacher's weights under the same consistency sampler).

    nice -n 10 python -m cdx.benchmarks.consistency_methods --steps 200 --batch 32 --n 500 --out out/consistency_methods

A short budget (hundreds of updates) says how each method moves away from its starting point and what a teacher call
costs; it does not rank the methods at convergence.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from cdx.atomic import atomic_write_text
from cdx.benchmarks.quality import classifier_features, frechet_distance, load_classifier

METHODS: tuple[tuple[str, dict[str, Any], bool], ...] = (
    ("CD (online)", {"method": "cd"}, False),
    ("CD (cached rollouts)", {"method": "cd"}, True),
    ("CT", {"method": "ct"}, False),
    ("CT + variance reduction", {"method": "ct", "variance_reduction": True}, False),
    ("ECT", {"method": "ect"}, False),
    ("bootstrap (t-2)", {"method": "bootstrap"}, False),
)
SAMPLE_STEPS = (1, 2, 4)


class CallCounter:
    """Forward calls of one module (the teacher UNet)."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_args: Any) -> None:
        self.n += 1


def train_one(label: str, options: dict[str, Any], cached: bool, args: argparse.Namespace, data, out: Path):
    """Train one method; returns (distiller, timing row)."""
    from cdx.defaults import default_teacher
    from cdx.distill.distiller import ConsistencyDistiller, DistillConfig
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.rollout_cache import attach_rollouts

    config = DistillConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, sample_every=0,
                           checkpoint_every=args.steps, seed=args.seed, **options)
    slug = label.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("+", "plus")
    work = out / "work" / slug
    d = ConsistencyDistiller(load_latent_pipeline(default_teacher()), data, config, work)
    calls = CallCounter(d.teacher)
    row: dict[str, Any] = {"method": label, **options, "cached": cached, "steps": args.steps, "batch": args.batch}
    if cached:
        started = time.perf_counter()
        info = attach_rollouts(d, out / "rollouts", show=False)
        row.update(cache_write_s=round(time.perf_counter() - started, 1), cache_records=info["records"],
                   cache_written_now=info["written"], cache_teacher_calls=info["teacher_calls"],
                   cache_teacher_calls_this_run=calls.n)
        calls.n = 0
    started = time.perf_counter()
    d.run(show=False)
    row.update(train_s=round(time.perf_counter() - started, 1), teacher_calls_per_update=calls.n / args.steps,
               final_loss=d.history[-1], loss_first10=sum(d.history[:10]) / 10, loss_last10=sum(d.history[-10:]) / 10)
    calls.handle.remove()
    return d, row


@torch.no_grad()
def sample_images(unet, parts, cond, n: int, steps: int, guidance: float, parameterization: str,
                  teacher_ddim: bool = False, batch: int = 250) -> torch.Tensor:
    from cdx.distill.sampling import consistency_sample, teacher_sample

    images = []
    for b, start in enumerate(range(0, n, batch)):
        labels = torch.arange(start, min(n, start + batch)) % 10
        if teacher_ddim:
            images.append(teacher_sample(parts, cond, labels, steps=steps, guidance=guidance, seed=1000 + b))
        else:
            images.append(consistency_sample(unet, parts, cond, labels, steps=steps, guidance=guidance,
                                             parameterization=parameterization, seed=1000 + b))
    return torch.cat(images)


def score(images: torch.Tensor, classifier, real_feats, labels, inception=None, real_inception=None) -> dict[str, float]:
    feats, pred = classifier_features(classifier, images)
    out = {"fd_classifier": frechet_distance(feats, real_feats), "accuracy": float((pred == labels).mean())}
    if inception is not None:
        out["fid_inception"] = frechet_distance(inception(images), real_inception)
    return out


def render(result: dict[str, Any]) -> str:
    """The markdown table: one row per method × sampling steps."""
    fid = any("fid_inception" in r for r in result["rows"])
    head = "| method | sampling steps | classifier FD ↓ | accuracy | " + ("Inception FID ↓ | " if fid else "") + \
           "train s | teacher calls / update | notes |"
    lines = [f"n = {result['n']} samples per row (labels cycling 0–9, guidance {result['guidance']}), "
             f"{result['steps']} updates × batch {result['batch']} per method, seed {result['seed']}, "
             f"{result['train_images']} training images; machine: {result['machine']}.", "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        cells = [r["name"], str(r.get("sampling_steps", "")), f"{r['fd_classifier']:.1f}", f"{r['accuracy']:.3f}"]
        if fid:
            cells.append(f"{r['fid_inception']:.1f}" if "fid_inception" in r else "")
        cells += [str(r.get("train_s", "")), str(r.get("teacher_calls_per_update", "")), r.get("notes", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n", type=int, default=500, help="samples per table row")
    parser.add_argument("--limit", type=int, default=10000, help="training images (Fashion-MNIST train)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", default="", help="comma-separated labels (default: the first five; the bootstrap "
                        "variant runs when named)")
    parser.add_argument("--inception", action="store_true", help="also Inception FID (≈ 0.2 s/image on 2 cores)")
    parser.add_argument("--out", type=Path, default=Path("out/consistency_methods"))
    args = parser.parse_args(argv)

    import platform

    from cdx.defaults import default_teacher
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.data import load_dataset, load_fashion_mnist
    from cdx.distill.loading import load_latent_pipeline

    args.out.mkdir(parents=True, exist_ok=True)
    data = load_dataset(limit=args.limit)
    test = load_fashion_mnist(split="test")
    classifier = load_classifier()
    labels = (torch.arange(args.n) % 10).numpy()
    real_feats, _ = classifier_features(classifier, (test.images[: args.n] + 1) / 2)
    inception = real_inception = None
    if args.inception:
        from cdx.benchmarks.quality import InceptionFeatures

        inception = InceptionFeatures()
        real_inception = inception((test.images[: args.n] + 1) / 2)
    teacher = load_latent_pipeline(default_teacher())
    cond = TeacherConditioning(teacher, teacher.class_names)
    rows: list[dict[str, Any]] = []
    train = load_fashion_mnist(split="train", limit=args.n)
    rows.append({"name": "real train images (floor at this n)", **score((train.images + 1) / 2, classifier, real_feats,
                                                                         train.labels.numpy())})
    rows.append({"name": "teacher DDIM 50", "sampling_steps": 50, **score(
        sample_images(None, teacher, cond, args.n, 50, args.guidance, "lcm", teacher_ddim=True), classifier, real_feats,
        labels, inception, real_inception), "teacher_calls_per_update": "", "notes": "CFG: 2 UNet calls per step"})
    for steps in SAMPLE_STEPS:
        rows.append({"name": "start (teacher weights, no training)", "sampling_steps": steps, **score(
            sample_images(teacher.unet, teacher, cond, args.n, steps, args.guidance, "lcm"), classifier, real_feats,
            labels, inception, real_inception), "notes": "the point every method starts from"})
    print(render({"rows": rows, "n": args.n, "guidance": args.guidance, "steps": args.steps, "batch": args.batch,
                  "seed": args.seed, "train_images": len(data), "machine": "?"}), flush=True)
    wanted = {m.strip() for m in args.methods.split(",") if m.strip()} or {label for label, _, _ in METHODS[:5]}
    timings = []
    for label, options, cached in METHODS:
        if wanted and label not in wanted:
            continue
        try:
            d, timing = train_one(label, options, cached, args, data, args.out)
        except Exception as exc:  # one method failing must not lose the others' rows
            rows.append({"name": label, "fd_classifier": float("nan"), "accuracy": float("nan"),
                         "notes": f"FAILED: {type(exc).__name__}: {exc}"[:200]})
            print(f"{label}: FAILED {exc!r}", flush=True)
            continue
        timings.append(timing)
        note = (f"cache written once: {timing['cache_write_s']} s, {timing['cache_teacher_calls']} teacher calls"
                if cached else "")
        for steps in SAMPLE_STEPS:
            images = sample_images(d.target, d.parts, d.cond, args.n, steps, args.guidance, d.config.parameterization)
            rows.append({"name": label, "sampling_steps": steps, **score(images, classifier, real_feats, labels, inception,
                                                                         real_inception),
                         "train_s": timing["train_s"], "teacher_calls_per_update": timing["teacher_calls_per_update"],
                         "notes": note})
        print(json.dumps(timing), flush=True)
        print(render({"rows": rows, "n": args.n, "guidance": args.guidance, "steps": args.steps, "batch": args.batch,
                      "seed": args.seed, "train_images": len(data), "machine": "?"}), flush=True)
    result = {"rows": rows, "timings": timings, "n": args.n, "guidance": args.guidance, "steps": args.steps,
              "batch": args.batch, "lr": args.lr, "seed": args.seed, "train_images": len(data),
              "machine": f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, shared (nice 10)",
              "feature_space": "cdx Fashion-MNIST classifier (128-d)" + (" + Inception-v3" if args.inception else "")}
    atomic_write_text(args.out / "consistency_methods.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(args.out / "consistency_methods.md", render(result))
    print(render(result))
    return result


if __name__ == "__main__":
    main()
