"""Benchmark: CD (online) | CD (cached rollouts) | CT | CT + variance reduction | ECT (| the t-2 bootstrap), one table.

Every method starts from the embedded Fashion-MNIST teacher (cdx/assets/fashion_teacher) with the same seed, data,
batch, learning rate and number of updates. At each `--snapshots` update count (and at the end) the student — its EMA
weights, what cdx saves — is written as a pipeline folder and scored by `cdx evaluate`'s own code
(`benchmarks/distill_eval.py`: Inception FID/KID against the shipped reference, n samples at 1/2/4 consistency steps,
the same labels and seeds as the README's quality table). Reported per method: training wall time and seconds per
update, teacher UNet calls per update (counted with a forward hook, not assumed), and for the cached run the one-off
write pass. With `--gap-every K` the self-consistency gap along fixed teacher DDIM trajectories (the seed's protocol,
`benchmarks/consistency_eval.py`) is measured every K updates from update 0: its shape over t and its drift over
training, per method.

    python -m cdx.benchmarks.consistency_methods --anchors --out out/consistency_methods     # teacher 50 + start rows
    python -m cdx.benchmarks.consistency_methods --methods ct,ct-vr --steps 10000 --snapshots 3000 --gap-every 1000
    python -m cdx.benchmarks.consistency_methods --methods cd,cd-cached,ect --steps 3000 --gap-every 1000
    python -m cdx.benchmarks.consistency_methods --render --out out/consistency_methods       # table + plots

Each method writes `methods/<key>.json` under --out, so methods can run in separate processes side by side (one
thread each) and `--render` joins whatever has finished.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.atomic import atomic_write_text
from cdx.errors import InputError


@dataclass(frozen=True)
class Method:
    """One row group of the table: its DistillConfig options and whether CD streams a rollout cache."""

    key: str
    label: str
    options: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


METHODS = {m.key: m for m in (
    Method("cd", "CD (online)", {"method": "cd"}),
    Method("cd-cached", "CD (cached rollouts)", {"method": "cd"}, cached=True),
    Method("ct", "CT (improved CT schedule)", {"method": "ct"}),
    Method("ct-vr", "CT + variance-reduced target", {"method": "ct", "variance_reduction": True}),
    Method("ect", "ECT", {"method": "ect"}),
    Method("bootstrap", "bootstrap (t − 2)", {"method": "bootstrap"}),
)}
DEFAULT_METHODS = "cd,cd-cached,ct,ct-vr,ect"
SAMPLE_STEPS = (1, 2, 4)


class CallCounter:
    """Forward calls of one module (the teacher UNet)."""

    def __init__(self, module: torch.nn.Module):
        self.n = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, *_args: Any) -> None:
        self.n += 1


def parse_methods(text: str) -> list[Method]:
    """`ct,ct-vr` → those methods; an unknown key is one line listing the valid ones."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in METHODS]:
        raise InputError(f"unknown --methods {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    return [METHODS[k] for k in keys]


def gap_roughness(rows: list[dict[str, Any]], key: str = "adjacent_mean") -> float:
    """Mean |second difference| of a gap curve over the grid, relative to its mean: 0 for a straight line."""
    values = np.array([r[key] for r in rows], dtype=np.float64)
    if len(values) < 3 or not np.isfinite(values).all() or values.mean() == 0:
        return math.nan
    return float(np.abs(np.diff(values, 2)).mean() / values.mean())


class GapProbe:
    """The self-consistency gaps of a network along fixed teacher DDIM trajectories (computed once)."""

    def __init__(self, teacher, cond, guidance: float, trajectories: int, grid_points: int, seed: int):
        from cdx.benchmarks.consistency_eval import Schedule, distillation_grid, teacher_eps_fn, teacher_trajectories

        self.teacher, self.cond, self.guidance = teacher, cond, guidance
        schedule = Schedule.of(teacher.scheduler_config)
        self.grid = distillation_grid(schedule.num_timesteps, grid_points)
        classes = max(1, teacher.num_classes or len(teacher.class_names) or 1)
        self.labels = torch.arange(trajectories) % classes
        size = int(teacher.unet.config.sample_size)
        noise = torch.randn((trajectories, teacher.latent_channels, size, size),
                            generator=torch.Generator().manual_seed(seed))
        self.path = teacher_trajectories(teacher_eps_fn(teacher.unet.eval(), cond, guidance), noise, self.labels,
                                         schedule, self.grid)

    def measure(self, unet: torch.nn.Module, parameterization: str) -> list[dict[str, Any]]:
        from cdx.benchmarks.consistency_eval import self_consistency_gaps, student_consistency_fn

        was_training = unet.training
        f = student_consistency_fn(unet.eval(), self.teacher.scheduler_config, self.cond, self.guidance, parameterization)
        rows = self_consistency_gaps(f, self.path, self.labels, self.grid)["rows"]
        unet.train(was_training)
        return rows


def student_specs():
    from cdx.benchmarks.distill_eval import parse_rows

    return parse_rows(",".join(f"student{s}" for s in SAMPLE_STEPS))


def quality_rows(student_dir: Path, out_dir: Path, args: argparse.Namespace, specs=None) -> list[dict[str, Any]]:
    """`cdx evaluate`'s rows (no timing) for one saved student folder."""
    from cdx.benchmarks.distill_eval import evaluate_distillation
    from cdx.defaults import default_teacher

    result = evaluate_distillation(str(default_teacher()), str(student_dir), out_dir, n=args.n, guidance=args.guidance,
                                   inception=args.inception, specs=specs or student_specs(), timing=False)
    return [r for r in result["rows"] if r["model"] != "data"]


def validation_mse(student_dir: Path, guidance: float, n_images: int = 200, per_image: int = 32,
                   seed: int = 0) -> dict[str, Any]:
    """Held-out reconstruction error: mean ‖f(z_t, t) − z₀‖² / d over the first test images × random t (seeded)."""
    from cdx.benchmarks.consistency_eval import Schedule, encode_images, reconstruction_errors, student_consistency_fn
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.data import load_fashion_mnist
    from cdx.distill.loading import load_latent_pipeline, read_cdx_info

    student = load_latent_pipeline(student_dir)
    parameterization = read_cdx_info(Path(student_dir)).get("parameterization", "lcm")
    data = load_fashion_mnist(None, split="test", limit=n_images)
    cond = TeacherConditioning(student, student.class_names or ["an image"])
    f = student_consistency_fn(student.unet.eval(), student.scheduler_config, cond, guidance, parameterization)
    with torch.no_grad():
        z0 = encode_images(student, data.images)
        errors = reconstruction_errors(f, z0, data.labels, Schedule.of(student.scheduler_config), per_image, seed)
    mse = errors["latent_l2"] ** 2 / float(errors["latent_dim"])
    return {"mse": float(mse.mean()), "sem": float(mse.std(ddof=1) / math.sqrt(len(mse))), "images": len(data.images),
            "timesteps_per_image": per_image, "seed": seed}


def _machine() -> str:
    from cdx.machine import describe_machine

    return f"{describe_machine('cpu')}; {torch.get_num_threads()} torch thread(s)"


def run_method(method: Method, args: argparse.Namespace, data, out: Path) -> dict[str, Any]:
    """Train one method to --steps, snapshotting (save + evaluate) and probing the gap on the way; returns its record."""
    from cdx.defaults import default_teacher
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.distiller import ConsistencyDistiller, DistillConfig
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.rollout_cache import attach_rollouts

    options = dict(method.options)
    if options["method"] == "cd":
        options["num_solver_steps"] = args.num_solver_steps
    config = DistillConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, sample_every=0,
                           checkpoint_every=args.steps, seed=args.seed, **options)
    teacher = load_latent_pipeline(default_teacher())
    d = ConsistencyDistiller(teacher, data, config, out / "work" / method.key)
    calls = CallCounter(d.teacher)
    record: dict[str, Any] = {"key": method.key, "method": method.label, "options": options, "cached": method.cached,
                              "steps": args.steps, "batch": args.batch, "lr": args.lr, "seed": args.seed,
                              "train_images": len(data), "machine": _machine(), "snapshots": [], "gaps": []}
    if method.cached:
        started = time.perf_counter()
        info = attach_rollouts(d, out / "rollouts" / f"{args.steps}x{args.batch}-seed{args.seed}", show=False)
        record["cache"] = {"write_s": round(time.perf_counter() - started, 1), "records": info["records"],
                           "written_now": info["written"], "teacher_calls": info["teacher_calls"],
                           "teacher_calls_counted": calls.n}
        calls.n = 0
    probe = None
    if args.gap_every:
        probe = GapProbe(teacher, TeacherConditioning(teacher, teacher.class_names), args.guidance,
                         args.gap_trajectories, args.gap_grid, args.seed + 2)
        calls.n = 0
        record["gap_grid"], record["gap_trajectories"] = probe.grid, args.gap_trajectories
    stops = sorted({s for s in args.snapshots if 0 < s < args.steps} | {args.steps}
                   | ({k for k in range(args.gap_every, args.steps, args.gap_every)} if args.gap_every else set()))
    train_s = 0.0
    if probe:
        record["gaps"].append({"updates": 0, "rows": probe.measure(d.target, config.parameterization)})
    for stop in stops:
        started = time.perf_counter()
        d.run(show=args.progress, stop_at=stop)
        train_s += time.perf_counter() - started
        if probe and stop % args.gap_every == 0:
            record["gaps"].append({"updates": stop, "rows": probe.measure(d.target, config.parameterization)})
        if stop in args.snapshots or stop == args.steps:
            folder = out / "students" / f"{method.key}-{stop}"
            d.save_student(folder, train_s, teacher.class_names)
            snapshot = {"updates": stop, "train_s": round(train_s, 1), "s_per_update": round(train_s / stop, 4),
                        "teacher_calls_per_update": calls.n / d.step, "loss_last100": float(np.mean(d.history[-100:])),
                        "student": str(folder)}
            if not args.no_eval:
                snapshot["rows"] = quality_rows(folder, out / "eval" / f"{method.key}-{stop}", args)
                snapshot["validation"] = validation_mse(folder, args.guidance, args.validation_images,
                                                        args.validation_timesteps)
            record["snapshots"].append(snapshot)
            save_record(out, record)
            print(f"{method.label} @ {stop}: " + json.dumps({k: v for k, v in snapshot.items() if k != "rows"}),
                  flush=True)
    calls.handle.remove()
    save_record(out, record)
    return record


def fill_validation(out: Path, args: argparse.Namespace) -> int:
    """Add the validation MSE to every saved snapshot (and the start anchor) that lacks it; returns how many."""
    from cdx.defaults import default_teacher

    records, anchors = load_records(out)
    filled = 0
    for record in records:
        for snap in record["snapshots"]:
            if "validation" not in snap and Path(snap["student"]).is_dir():
                snap["validation"] = validation_mse(Path(snap["student"]), args.guidance, args.validation_images,
                                                    args.validation_timesteps)
                filled += 1
        save_record(out, record)
    if anchors is not None and "validation" not in anchors:
        anchors["validation"] = validation_mse(default_teacher(), args.guidance, args.validation_images,
                                               args.validation_timesteps)
        save_record(out, anchors)
        filled += 1
    return filled


def save_record(out: Path, record: dict[str, Any]) -> None:
    (out / "methods").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "methods" / f"{record['key']}.json", json.dumps(record, indent=2) + "\n")


def run_anchors(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """The teacher's DDIM 50 and the untrained start (the teacher's weights under the consistency sampler)."""
    from cdx.benchmarks.distill_eval import evaluate_distillation, parse_rows
    from cdx.defaults import default_teacher

    teacher = str(default_teacher())
    result = evaluate_distillation(teacher, teacher, out / "eval" / "anchors", n=args.n, guidance=args.guidance,
                                   inception=args.inception, specs=parse_rows("teacher50," + ",".join(
                                       f"student{s}" for s in SAMPLE_STEPS)), timing=False)
    record = {"key": "anchors", "rows": result["rows"], "machine": _machine(), "n": args.n, "guidance": args.guidance,
              "validation": validation_mse(Path(teacher), args.guidance, args.validation_images,
                                           args.validation_timesteps)}
    save_record(out, record)
    return record


# ---- rendering ------------------------------------------------------------------------------------------------------
def _fid(row: dict[str, Any] | None) -> str:
    if row is None:
        return "—"
    if "fid_inception" in row:
        k = row.get("kid_inception")
        return f"{row['fid_inception']:.1f}" + (f" ({k['mean'] * 1e3:.1f})" if k else "")
    return f"FD {row['fd_classifier']:.2f}"


def _validation_draws(records: list[dict[str, Any]]) -> str:
    v = next((s["validation"] for r in records for s in r["snapshots"] if s.get("validation")), None)
    if v is None:
        return "the held-out test images (not measured yet: --validate)"
    return f"the first {v['images']} Fashion-MNIST test images × {v['timesteps_per_image']} seeded random t"


def _mse(validation: dict[str, Any] | None) -> str:
    return "—" if not validation else f"{validation['mse']:.4f} ± {validation['sem']:.4f}"


def _by_steps(rows: list[dict[str, Any]], model: str = "student") -> dict[int, dict[str, Any]]:
    return {r["steps"]: r for r in rows if r["model"] == model}


def render(records: list[dict[str, Any]], anchors: dict[str, Any] | None) -> str:
    """The methods table (one row per method × snapshot) and, where gaps were probed, the gap drift table."""
    lines = []
    if records:
        r0 = records[0]
        lines += [f"Batch {r0['batch']}, lr {r0['lr']}, seed {r0['seed']}, {r0['train_images']} training images, from "
                  "the embedded teacher's weights; cells: Inception FID (KID ×10³) at n samples per row, the README "
                  f"quality table's protocol; validation MSE: held-out reconstruction error ‖f(z_t, t) − z₀‖² / d "
                  f"(latent, mean ± s.e.) over {_validation_draws(records)}, the same draws for every row; "
                  f"machine: {r0['machine']}.", ""]
    lines += ["| method | updates | 1 step | 2 steps | 4 steps | validation MSE | train s (s / update) "
              "| teacher calls / update |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
    if anchors:
        rows = anchors["rows"]
        full = next((r for r in rows if r["model"] == "teacher"), None)
        start = _by_steps(rows)
        lines.append(f"| teacher DDIM 50 (CFG, 100 UNet calls) | — | {_fid(full)} | | | | — | — |")
        lines.append(f"| start: teacher weights, consistency sampler | 0 | {_fid(start.get(1))} | {_fid(start.get(2))} | "
                     f"{_fid(start.get(4))} | {_mse(anchors.get('validation'))} | — | — |")
    for rec in records:
        for snap in rec["snapshots"]:
            steps = _by_steps(snap.get("rows", []))
            calls = snap["teacher_calls_per_update"]
            note = f"{calls:g}"
            if rec.get("cache"):
                c = rec["cache"]
                note += f" (+ {c['teacher_calls']:,} once, writing the cache: {c['write_s']} s)"
            lines.append(f"| {rec['method']} | {snap['updates']:,} | {_fid(steps.get(1))} | {_fid(steps.get(2))} | "
                         f"{_fid(steps.get(4))} | {_mse(snap.get('validation'))} | {snap['train_s']:,.0f} "
                         f"({snap['s_per_update']:.3f}) | {note} |")
    gapped = [r for r in records if r.get("gaps")]
    if gapped:
        lines += ["", f"Self-consistency gap along {gapped[0].get('gap_trajectories', 16)} fixed teacher DDIM trajectories "
                  "(CFG at w, latent L2; grid "
                  f"{', '.join(str(t) for t in gapped[0]['gap_grid'])}): mean adjacent-point gap over the grid, the "
                  "gap from t = 999 to the trajectory's end, and the roughness of the adjacent gap over t (mean |second "
                  "difference| / mean; 0 = a straight line).", "",
                  "| method | updates | mean adjacent gap | gap t = 999 → end | roughness over t |", "|---|---:|---:|---:|---:|"]
        for rec in gapped:
            for g in rec["gaps"]:
                adjacent = np.mean([r["adjacent_mean"] for r in g["rows"]])
                lines.append(f"| {rec['method']} | {g['updates']:,} | {adjacent:.3f} | {g['rows'][0]['boundary_mean']:.3f} | "
                             f"{gap_roughness(g['rows']):.3f} |")
    return "\n".join(lines) + "\n"


def plot_gaps(records: list[dict[str, Any]], path: Path) -> Path | None:
    """Left: the final adjacent gap vs t per method; right: the mean adjacent and t = 999 gaps vs updates."""
    from cdx.benchmarks.consistency_eval import _pyplot, _save_figure

    gapped = [r for r in records if r.get("gaps")]
    if not gapped:
        return None
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    for rec in gapped:
        last = rec["gaps"][-1]
        t = [r["t"] for r in last["rows"]]
        line, = left.plot(t, [r["adjacent_mean"] for r in last["rows"]], marker=".",
                          label=f"{rec['method']} @ {last['updates']:,}")
        updates = [g["updates"] for g in rec["gaps"]]
        right.plot(updates, [np.mean([r["adjacent_mean"] for r in g["rows"]]) for g in rec["gaps"]], marker=".",
                   color=line.get_color(), label=f"{rec['method']}: mean adjacent gap")
        right.plot(updates, [g["rows"][0]["boundary_mean"] for g in rec["gaps"]], marker="x", linestyle="--",
                   color=line.get_color(), label=f"{rec['method']}: gap t = 999 → end")
    left.set_xlabel("timestep t_n (teacher DDIM trajectory)")
    left.set_ylabel("‖f(x_tn, t_n) − f(x_tn−1, t_n−1)‖ (latent L2)")
    left.set_title("adjacent-point gap vs t, last probe")
    right.set_xlabel("updates")
    right.set_ylabel("latent L2")
    right.set_title("gap drift over training")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path = _save_figure(fig, path)
    plt.close(fig)
    return path


def load_records(out: Path) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    folder = out / "methods"
    found = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))} if folder.is_dir() else {}
    anchors = found.pop("anchors", None)
    order = list(METHODS)
    return sorted(found.values(), key=lambda r: order.index(r["key"]) if r["key"] in order else len(order)), anchors


def write_report(out: Path) -> str:
    records, anchors = load_records(out)
    text = render(records, anchors)
    atomic_write_text(out / "consistency_methods.md", text)
    plot_gaps(records, out / "gap_drift.png")
    return text


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated keys of {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=3000, help="updates per method")
    parser.add_argument("--snapshots", default="", help="extra update counts to save and evaluate at (the end always is)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--num-solver-steps", type=int, default=5, help="CD's grid N (the committed student's)")
    parser.add_argument("--n", type=int, default=1000, help="samples per table row")
    parser.add_argument("--limit", type=int, default=10000, help="training images (Fashion-MNIST train)")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gap-every", type=int, default=0, help="probe the self-consistency gap every K updates")
    parser.add_argument("--gap-trajectories", type=int, default=16)
    parser.add_argument("--gap-grid", type=int, default=10, help="grid points of the probe's teacher trajectories")
    parser.add_argument("--no-inception", dest="inception", action="store_false",
                        help="classifier FD only (fast; not the field's metric)")
    parser.add_argument("--no-eval", action="store_true", help="train and save only")
    parser.add_argument("--anchors", action="store_true", help="evaluate the teacher's DDIM 50 and the untrained start")
    parser.add_argument("--validation-images", type=int, default=200, help="held-out test images of the validation MSE")
    parser.add_argument("--validation-timesteps", type=int, default=32, help="random t per held-out image")
    parser.add_argument("--validate", action="store_true",
                        help="add the held-out validation MSE to saved snapshots that lack it, then render")
    parser.add_argument("--render", action="store_true", help="only join the saved records into the table and plot")
    parser.add_argument("--progress", action="store_true", help="show the training progress bar")
    parser.add_argument("--out", type=Path, default=Path("out/consistency_methods"))
    args = parser.parse_args(argv)
    try:
        args.snapshots = {int(s) for s in args.snapshots.split(",") if s.strip()}
    except ValueError:
        raise InputError(f"--snapshots {args.snapshots!r}: comma-separated update counts") from None
    methods = parse_methods(args.methods)
    if args.steps < 1 or args.gap_every < 0:
        raise InputError("--steps must be ≥ 1 and --gap-every ≥ 0")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.validate:
        print(f"validation MSE added to {fill_validation(args.out, args)} snapshot(s)")
    elif not args.render:
        if args.anchors:
            run_anchors(args, args.out)
        else:
            from cdx.distill.data import load_dataset

            data = load_dataset(limit=args.limit)
            for method in methods:
                run_method(method, args, data, args.out)
    text = write_report(args.out)
    print(text)
    return text


if __name__ == "__main__":
    main()
