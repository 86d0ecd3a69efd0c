"""`cdx bench`: every model of one or more artifact folders on its runtime, against the eager float student.

Each (model, runtime) pair is measured in its own subprocess (see `worker.py`) on the same seeded inputs (rebuilt
from the manifest by its rule, ≥ 64 seeds by default), so cold load and peak RSS mean what they say. Drift (PSNR,
SSIM, conditioning sensitivity) is computed here against the eager float generator of the same run. The teacher's
own sampler, at its full step count and at DDIM 8/4/2/1, runs on every runtime an artifact runs on (its guided UNet
step exported for that runtime, `bench_teacher.py`) from the student's initial latents, so each "× teacher" divides
two times of one runtime; the ratio to the eager teacher is its own column. Distribution drift is Inception KID per
row (`bench_quality.py`). Artifacts that cannot run on this machine are listed with the reason, never timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdx.benchmarks.budget import DEFAULT_TIME_BUDGET_S, Budget
from cdx.errors import CdxError, InputError
from cdx.golden_io import contrast_batches, manifest_inputs, prompt_tensors
from cdx.manifest import load_manifest
from cdx.metrics import conditioning_sensitivity, max_abs_diff, psnr, psnr_peak, ssim
from cdx.runtimes.base import runtime_for

Progress = Callable[[str], None]
GRID_SAMPLES = 8


@dataclass
class BenchOptions:
    """How to measure."""

    runs: int = 20
    warmup: int = 3
    threads: int = min(4, os.cpu_count() or 1)
    include_eager: bool = True
    seeds: int = 64
    teacher: str | None = None  # None: the student's own teacher (its cdx.json) when found; "": no teacher rows
    teacher_steps: tuple[int, ...] = (50, 8, 4, 2, 1)  # the first is the teacher's full sampler
    inception: bool = True  # Inception KID per row (when the weights are installed)
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S  # whole bench; seeds/runs shrink to fit (None or 0: unlimited)

    def validate(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1 or self.seeds < 1:
            raise InputError("--runs, --threads and --seeds must be >= 1 and --warmup >= 0")
        if self.time_budget_s is not None and self.time_budget_s < 0:
            raise InputError(f"--time-budget {self.time_budget_s:g}: must be >= 0 seconds (0 = no budget)")
        if not self.teacher_steps or min(self.teacher_steps) < 1:
            raise InputError("teacher steps must be >= 1")


@dataclass
class Measured:
    """What one worker returned: its timing record, its outputs on the seeds, and on the contrast conditioning."""

    record: dict[str, Any]
    outputs: np.ndarray
    contrast: np.ndarray | None


def _worker(spec: dict[str, Any], scratch: Path, tag: str, env_threads: int) -> dict[str, Any]:
    """Run one worker process on `spec`; its result record (one line naming the failure otherwise)."""
    spec = {**spec, "result_path": str(scratch / f"{tag}.json")}
    spec_path = scratch / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec), "utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(env_threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "cdx.benchmarks.worker", str(spec_path)], env=env,
                          capture_output=True, text=True, check=False)
    result_path = Path(spec["result_path"])
    if not result_path.is_file():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise CdxError(f"bench worker for {tag} crashed (exit {proc.returncode}): {tail[0]}")
    result = json.loads(result_path.read_text("utf-8"))
    if not result.pop("ok"):
        raise CdxError(f"bench of {tag} failed: {result['error']}")
    return result


def _run_worker(spec: dict[str, Any], scratch: Path, tag: str, env_threads: int) -> Measured:
    outputs, contrast = scratch / f"{tag}.npy", scratch / f"{tag}.contrast.npy"
    record = _worker({**spec, "outputs_path": str(outputs), "contrast_path": str(contrast)}, scratch, tag, env_threads)
    return Measured(record, np.load(outputs), np.load(contrast) if contrast.is_file() else None)


def why_not_runnable(model: dict[str, Any]) -> str | None:
    """The reason an artifact cannot run on this machine, or None when it can."""
    if model.get("export", {}).get("delegate") == "coreml":
        return "Core ML-delegated .pte: runs only on Apple devices (no CoreMLBackend in this runtime)"
    if model["format"] == "mlpackage":
        from cdx.runtimes.coreml import can_predict

        if not can_predict():
            return f"Core ML prediction needs macOS (this is {sys.platform}); spec checked at convert"
    return None


def _size(model: dict[str, Any], manifest: dict[str, Any]) -> int:
    prefix = model["file"].rstrip("/") + "/"
    own = {model["file"], *model.get("external_data", [])}
    return sum(f["size_bytes"] for f in manifest["files"] if f["path"] in own or f["path"].startswith(prefix))


def _row(model: dict[str, Any], record: dict[str, Any], size: int | None, folder: str, eager: bool = False) -> dict[str, Any]:
    return {
        "name": f"{model['name']} (eager)" if eager else model["name"],
        "folder": folder,
        "role": model.get("role", "generator"),
        "target": "torch" if eager else model["target"],
        "format": "eager" if eager else model["format"],
        "precision": "fp32" if eager else model["precision"],
        "steps": int(model.get("steps", 1)),
        "runtime": record["runtime"],
        "threads": record["threads"],
        "file_size_bytes": size,
        "import_ms": record["import_ms"],
        "cold_load_ms": record["cold_load_ms"],
        "first_run_ms": record["first_run_ms"],
        "latency": record["latency"],
        "peak_rss_mb": record["peak_rss_mb"],
        **({"rss_before_load_mb": record["rss_before_load_mb"]} if "rss_before_load_mb" in record else {}),
        **({"plan": record["plan"]} if "plan" in record else {}),
    }


def _drift(reference: Measured, measured: Measured, peak: float) -> dict[str, Any]:
    ref, out = reference.outputs, measured.outputs
    drift: dict[str, Any] = {"samples": int(ref.shape[0]), "max_abs": max_abs_diff(ref, out),
                             "psnr_db": min(psnr(ref, out, peak), 999.0), "ssim": ssim(ref, out, peak=peak)}
    if reference.contrast is not None and measured.contrast is not None:
        drift["conditioning_sensitivity"] = conditioning_sensitivity(ref, reference.contrast, out, measured.contrast)
    return drift


def find_teacher(manifest: dict[str, Any], requested: str | None) -> str | None:
    """The teacher to time: the one asked for, else the one the student's cdx.json names (when it is on disk)."""
    if requested is not None:
        return requested or None
    from cdx.distill.loading import recorded_teacher

    found = recorded_teacher(manifest["source"]["path"])
    return str(found) if found else None


def _teacher_rows(teacher: str, first: dict[str, Any], samples: list[dict[str, np.ndarray]], runtimes: list[str],
                  options: BenchOptions, runs: _Runs, passes: list[str] | None,
                  say: Progress) -> tuple[list[tuple[dict[str, Any], np.ndarray]], list[str]]:
    """The teacher's rows on eager torch and on each of `runtimes`, every step count: (row, images) pairs, notes."""
    from cdx.benchmarks.bench_teacher import prepare_teacher, teacher_inputs, teacher_row_name
    from cdx.benchmarks.worker import save_inputs

    guidance = float(first["conditioning"].get("guidance", {}).get("default", 3.0))
    latent_shape = tuple(samples[0]["noise"].shape)
    scratch = runs.scratch
    graphs = prepare_teacher(teacher, latent_shape, guidance, runtimes, options.teacher_steps, scratch, passes, say)
    rows: list[tuple[dict[str, Any], np.ndarray]] = []
    if not graphs.manifests:
        return rows, graphs.notes
    inputs_path = scratch / "teacher.inputs.npz"
    save_inputs(inputs_path, teacher_inputs(samples, graphs.input_names, guidance), None)
    for runtime, manifest_path in graphs.manifests.items():
        say(f"teacher DDIM {', '.join(map(str, options.teacher_steps))} on {runtime} (guidance {guidance})")
        tag = f"teacher.{runtime}"
        record = runs.call({"kind": "teacher", "teacher_manifest": str(manifest_path), "runtime": runtime,
                            "steps": list(options.teacher_steps), "inputs_path": str(inputs_path),
                            "outputs_prefix": str(scratch / tag)}, tag, outputs=False)
        for steps in options.teacher_steps:
            full = steps == options.teacher_steps[0]
            timing = record["by_steps"][str(steps)]
            row = {"name": teacher_row_name(steps, full), "folder": teacher, "role": "teacher", "target": "teacher",
                   "format": "eager" if runtime == "torch" else ("onnx" if runtime == "onnxruntime" else "pte"),
                   "precision": "fp32", "runtime": runtime, "threads": record["threads"], "file_size_bytes": None,
                   "import_ms": record["import_ms"], "cold_load_ms": record["cold_load_ms"],
                   "first_run_ms": timing["first_run_ms"], "latency": timing["latency"],
                   "peak_rss_mb": record["peak_rss_mb"], "teacher_steps": steps, "teacher_full": full,
                   "rss_before_load_mb": record["rss_before_load_mb"], "plan": timing["plan"]}
            if record.get("providers"):
                row["providers"] = record["providers"]
            rows.append((row, np.load(scratch / f"{tag}.{steps}.npy")))
    return rows, graphs.notes


def _teacher_runtimes(results: list[dict[str, Any]]) -> list[str]:
    """The runtimes (besides eager torch) the teacher must run on: those of the generator rows."""
    from cdx.benchmarks.bench_teacher import EXPORTED_RUNTIMES

    seen = {r["runtime"] for r in results if r.get("role", "generator") == "generator"}
    return [runtime for runtime in EXPORTED_RUNTIMES if runtime in seen]


def _executorch_passes(manifests: dict[Path, dict[str, Any]]) -> list[str] | None:
    """The graph passes the ExecuTorch artifacts were lowered with, so the teacher is lowered the same way."""
    for manifest in manifests.values():
        for model in manifest["models"]:
            if model["target"] == "executorch" and "passes" in model.get("export", {}):
                return list(model["export"]["passes"])
    return None


class _Runs:
    """The bench's worker calls under one time budget: the first picks the seed count, every later one uses it."""

    def __init__(self, budget: Budget, base: dict[str, Any], scratch: Path, threads: int, say: Progress):
        self.budget, self.base, self.scratch, self.threads, self.say = budget, base, scratch, threads, say
        self.seeds: int | None = None  # chosen by the first worker (all requested when there is no budget)

    def call(self, spec: dict[str, Any], tag: str, outputs: bool = True) -> Measured | dict[str, Any]:
        share = self.budget.share()
        spec = {**self.base, **spec, "budget_s": share, "choose_seeds": self.seeds is None}
        start = time.perf_counter()
        result = _run_worker(spec, self.scratch, tag, self.threads) if outputs else \
            _worker(spec, self.scratch, tag, self.threads)
        self.budget.spent(time.perf_counter() - start)
        record = result.record if isinstance(result, Measured) else result
        plan = record.get("plan")
        if plan and self.seeds is None:
            self.seeds = plan["seeds"]
            if share is not None:
                self.say(f"time budget {self.budget.total_s:g} s: {plan['seeds']} of {len(self.base['seeds'])} seeds "
                         f"(a call took {plan['call_ms']:.0f} ms)")
        if plan and plan["limited"]:
            self.say(f"  {tag}: {plan['runs']} timed runs after {plan['warmup']} warm-up, {plan['seeds']} seeds "
                     f"(budget share {plan['budget_s']:.0f} s)")
        return result


def _worker_count(manifests: dict[Path, dict[str, Any]], options: BenchOptions, teacher: bool) -> int:
    """How many worker processes the bench will start (the budget is shared out over them)."""
    from cdx.benchmarks.bench_teacher import EXPORTED_RUNTIMES

    runnable = [(m, model) for m in manifests.values() for model in m["models"] if not why_not_runnable(model)]
    eager = {_eager_key(model, m) for m, model in runnable} if options.include_eager else set()
    runtimes = {runtime_for(model, None) for _, model in runnable if model.get("role", "generator") == "generator"}
    return len(runnable) + len(eager) + (1 + len(runtimes & set(EXPORTED_RUNTIMES)) if teacher else 0)


def _save_inputs(root: Path, model: dict[str, Any], manifest: dict[str, Any], seeds: list[int],
                 path: Path) -> list[dict[str, np.ndarray]]:
    """The model's seeded inputs (and their contrast-conditioning twins) in `path`; the inputs."""
    from cdx.benchmarks.worker import save_inputs

    samples = manifest_inputs(model, manifest, seeds, root)
    prompts = prompt_tensors(root, manifest)  # text students: the contrast is the next prompt
    save_inputs(path, samples, contrast_batches([s["name"] for s in model["inputs"]], samples,
                                                manifest["conditioning"].get("num_classes"), prompts[1] if prompts else None))
    return samples


def _eager_key(model: dict[str, Any], manifest: dict[str, Any]) -> tuple:
    """Models sharing one eager float baseline: same weights, role, input shapes and steps."""
    return (manifest["source"]["weights_sha256"], model.get("role", "generator"),
            *(tuple(s["shape"]) for s in model["inputs"]), model.get("steps", 1))


def _variant(model: dict[str, Any], manifest: dict[str, Any], runtime: str, eager: bool) -> tuple:
    """What makes a generator row and a components row the same artifact, from the manifests alone: the weights, the
    decoder, the runtime, target/format/precision and resolution (the role is what differs)."""
    decoder = (manifest["source"].get("decoder") or {}).get("sha256")  # `cdx convert --decoder`: a tiny decoder
    kind = ("torch", "eager", "fp32") if eager else (model["target"], model["format"], model["precision"])
    return (manifest["source"]["weights_sha256"], decoder, runtime, *kind, tuple(model.get("resolution") or ()))


def bench(folders: str | Path | list[str | Path], options: BenchOptions | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
    """Measure every model in `folders`; returns the report dict (see `report.schema.json`)."""
    from cdx.benchmarks.bench_quality import add_quality
    from cdx.benchmarks.memory_tiers import BUDGET_SOURCE, memory_fit, tiers_table
    from cdx.benchmarks.report import machine_info, new_report

    options = options or BenchOptions()
    options.validate()
    say = progress or (lambda _msg: None)
    roots = [Path(f) for f in (folders if isinstance(folders, list) else [folders])]
    manifests = {root: load_manifest(root, verify=True) for root in roots}
    first = next(iter(manifests.values()))
    teacher = find_teacher(first, options.teacher)
    seeds = list(range(options.seeds))
    base = {"threads": options.threads, "runs": options.runs, "warmup": options.warmup, "seeds": seeds}
    budget = Budget(options.time_budget_s, _worker_count(manifests, options, bool(teacher)))
    results: list[dict[str, Any]] = []
    variants: dict[int, tuple] = {}  # index in `results` → its `_variant` (per-component split)
    skipped: list[dict[str, Any]] = []
    notes: list[str] = []
    grid: dict[str, np.ndarray] = {}
    images: dict[int, np.ndarray] = {}  # index in `results` → that row's images (generator and teacher rows)
    baseline: dict[int, int] = {}  # index in `results` → the index of its eager float student row
    first_samples: list[dict[str, np.ndarray]] | None = None
    with tempfile.TemporaryDirectory(prefix="cdx-bench-") as tmp:
        scratch = Path(tmp)
        runs = _Runs(budget, base, scratch, options.threads, say)
        eager_cache: dict[tuple, tuple[Measured, int]] = {}
        for root, manifest in manifests.items():
            for model in manifest["models"]:
                size = _size(model, manifest)
                reason = why_not_runnable(model)
                if reason:
                    skipped.append({"name": model["name"], "folder": str(root), "target": model["target"],
                                    "format": model["format"], "precision": model["precision"], "file_size_bytes": size,
                                    "reason": reason, "parity_at_convert": model.get("parity", {}).get("checked")})
                    continue
                role = model.get("role", "generator")
                key = _eager_key(model, manifest)
                tag = f"{root.name}.{model['name']}"
                inputs_path = scratch / f"{tag}.inputs.npz"
                samples = _save_inputs(root, model, manifest, seeds[:runs.seeds] if runs.seeds else seeds, inputs_path)
                spec = {"folder": str(root.resolve()), "model": model["name"], "inputs_path": str(inputs_path)}
                if options.include_eager and key not in eager_cache:
                    say(f"eager PyTorch baseline for {model['name']} ({len(samples)} seeds)")
                    measured = runs.call({**spec, "runtime": "torch"}, f"{tag}.torch")
                    if len(samples) != runs.seeds:  # the first worker chose fewer seeds: the rest use them
                        samples = _save_inputs(root, model, manifest, seeds[:runs.seeds], inputs_path)
                    eager_row = _row(model, measured.record, None, str(root), eager=True)
                    results.append(eager_row)
                    variants[len(results) - 1] = _variant(model, manifest, "torch", eager=True)
                    eager_cache[key] = (measured, len(results) - 1)
                    grid[eager_row["name"]] = measured.outputs[:GRID_SAMPLES]
                    if role == "generator":
                        images[len(results) - 1] = measured.outputs
                        baseline[len(results) - 1] = len(results) - 1
                runtime = runtime_for(model, None)
                say(f"{model['name']} on {runtime}")
                measured = runs.call({**spec, "runtime": runtime}, f"{tag}.{runtime}")
                if len(samples) != runs.seeds:
                    samples = _save_inputs(root, model, manifest, seeds[:runs.seeds], inputs_path)
                if role == "generator" and first_samples is None:
                    first_samples = samples
                row = _row(model, measured.record, size, str(root))
                if key in eager_cache:
                    eager = eager_cache[key][0]
                    row["drift_vs_eager"] = _drift(eager, measured, psnr_peak(model["outputs"][0], eager.outputs))
                    row["speedup_vs_eager"] = eager.record["latency"]["median_ms"] / row["latency"]["median_ms"]
                results.append(row)
                variants[len(results) - 1] = _variant(model, manifest, runtime, eager=False)
                grid[f"{row['name']} ({row['runtime']})"] = measured.outputs[:GRID_SAMPLES]
                if role == "generator":
                    images[len(results) - 1] = measured.outputs
                    if key in eager_cache:
                        baseline[len(results) - 1] = eager_cache[key][1]
        if teacher and first_samples is None:
            notes.append("no generator model to compare the teacher with: no teacher rows")
        elif teacher:
            student_index = next((i for i, r in enumerate(results) if r["format"] == "eager" and i in images), None)
            teacher_rows, teacher_notes = _teacher_rows(teacher, first, first_samples, _teacher_runtimes(results),
                                                        options, runs, _executorch_passes(manifests), say)
            notes += teacher_notes
            eager_teacher = {row["teacher_steps"]: out for row, out in teacher_rows if row["runtime"] == "torch"}
            for row, out in teacher_rows:
                reference = eager_teacher.get(row["teacher_steps"])
                if row["runtime"] != "torch" and reference is not None:
                    row["drift_vs_eager"] = _drift(Measured({}, reference, None), Measured({}, out, None), 1.0)
                results.append(row)
                images[len(results) - 1] = out
                if student_index is not None:
                    baseline[len(results) - 1] = student_index
                if row["teacher_full"] and row["runtime"] == "torch":
                    grid[f"{row['name']} ({row['runtime']})"] = out[:GRID_SAMPLES]
    for row in results:
        if row["role"] != "teacher":
            row["memory"] = memory_fit(row["peak_rss_mb"], row.get("file_size_bytes"))
    report = new_report(roots, first, options, results, machine_info())
    report["settings"] |= {"seeds": runs.seeds or options.seeds, "seeds_requested": options.seeds,
                           "time_budget_s": budget.total_s or 0.0}
    report["skipped"] = skipped
    report["notes"] = notes
    report["components"] = component_splits(results, variants)
    if not report["components"] and any(r["role"] == "generator" for r in results):
        notes.append("no per-component split: bench a `cdx convert --mode components` folder of the same model and "
                     "target alongside the generator folder to time the UNet step and the decoder separately")
    report["memory_tiers"] = {"source": BUDGET_SOURCE, "tiers": tiers_table()}
    _add_teacher_ratios(report)
    labels = _labels(first_samples)
    # Inception features for the artifacts, their float students and the eager teacher (teacher rows on other
    # runtimes are the same sampler: their drift vs the eager teacher is in drift_vs_eager)
    slow = {i for i in images if not (results[i]["target"] == "teacher" and results[i]["runtime"] != "torch")}
    add_quality(report, images, baseline, labels, options.inception, slow, say)
    report["_grid"] = grid  # images for the plots; dropped before the JSON is written
    report["_grid_columns"] = grid_columns(first)
    return report


def component_splits(results: list[dict[str, Any]], variants: dict[int, tuple]) -> list[dict[str, Any]]:
    """Per runtime and artifact variant: the UNet step's and the decoder's latency, the generator's, the decoder share.

    Rows pair up by `_variant` (manifest fields), so a generator folder and a `--mode components` folder of the same
    student, target and precision give one split; `steps` calls of the step graph plus one decoder call are what the
    generator does in one graph.
    """
    groups: dict[tuple, dict[str, dict[str, Any]]] = {}
    for index, variant in variants.items():
        row = results[index]
        groups.setdefault(variant, {}).setdefault(row["role"], row)
    splits = []
    for variant, rows in groups.items():
        step, decoder, generator = rows.get("unet_step"), rows.get("vae_decoder"), rows.get("generator")
        if step is None or decoder is None:
            continue
        steps = int(generator.get("steps", 1)) if generator else int(step.get("steps", 1))
        unet_ms, decoder_ms = step["latency"]["median_ms"], decoder["latency"]["median_ms"]
        total = steps * unet_ms + decoder_ms
        split: dict[str, Any] = {
            "runtime": step["runtime"], "target": step["target"], "format": step["format"],
            "precision": step["precision"], "resolution": list(variant[-1]), "steps": steps,
            "unet_step": step["name"], "unet_step_ms": unet_ms, "vae_decoder": decoder["name"], "decoder_ms": decoder_ms,
            "components_ms": total, "decoder_share": decoder_ms / total,
        }
        if generator:
            split |= {"generator": generator["name"], "generator_folder": generator.get("folder", ""),
                      "generator_ms": generator["latency"]["median_ms"],
                      "decoder_share_of_generator": min(decoder_ms / generator["latency"]["median_ms"], 1.0)}
        splits.append(split)
    return splits


def grid_columns(manifest: dict[str, Any]) -> list[str] | None:
    """The image grid's column labels: the prompt each seed was given (text students: prompt i % P, the manifest's
    rule), else its class name (labels cycle the same way)."""
    conditioning = manifest["conditioning"]
    names = (conditioning.get("prompts") or {}).get("texts") or conditioning.get("class_names")
    return [names[i % len(names)] for i in range(GRID_SAMPLES)] if names else None


def _labels(samples: list[dict[str, np.ndarray]] | None) -> np.ndarray | None:
    """The class label of each seed (what the classifier's accuracy is scored against), if class-conditioned."""
    if not samples or "class_label" not in samples[0]:
        return None
    return np.concatenate([s["class_label"].reshape(-1) for s in samples])


def _add_teacher_ratios(report: dict[str, Any]) -> None:
    """Teacher full-step latency over each generator row's (and each fewer-step teacher row's), on the row's own
    runtime, and separately over the eager teacher's: each ratio names the runtime it compares."""
    full = {r["runtime"]: r for r in report["results"] if r["target"] == "teacher" and r.get("teacher_full")}
    for row in report["results"]:
        if row.get("role", "generator") not in ("generator", "teacher") or row.get("teacher_full"):
            continue
        for key, teacher in (("speedup_vs_teacher_full", full.get(row["runtime"])),
                             ("speedup_vs_teacher_full_eager", full.get("torch"))):
            if teacher is not None:
                ms = teacher["latency"]["median_ms"]
                row[key] = {"runtime": teacher["runtime"], "teacher_median_ms": ms,
                            "ratio": ms / row["latency"]["median_ms"]}
