"""`cdx bench`: every model of one or more artifact folders on its runtime, against the eager float student.

Each (model, runtime) pair is measured in its own subprocess (see `worker.py`) on the same seeded inputs (rebuilt
from the manifest, ≥ 64 seeds by default), so cold load and peak RSS mean what they say. Drift (PSNR, SSIM,
conditioning sensitivity) is computed here against the eager float generator of the same run; the teacher's own
sampler at its full step count and at DDIM 8/4/2/1 is timed on the same runtime so distillation's speed-up is a ratio
from one run. Artifacts that cannot run on this machine are listed with the reason, never timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdx.errors import CdxError, InputError
from cdx.manifest import load_manifest
from cdx.metrics import conditioning_sensitivity, max_abs_diff, psnr, ssim
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
    teacher_steps: tuple[int, ...] = (50, 8, 4, 2, 1)

    def validate(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1 or self.seeds < 1:
            raise InputError("--runs, --threads and --seeds must be >= 1 and --warmup >= 0")


@dataclass
class Measured:
    """What one worker returned: its timing record, its outputs on the seeds, and on the contrast conditioning."""

    record: dict[str, Any]
    outputs: np.ndarray
    contrast: np.ndarray | None


def _run_worker(spec: dict[str, Any], scratch: Path, tag: str, env_threads: int) -> Measured:
    spec = {**spec, "outputs_path": str(scratch / f"{tag}.npy"), "contrast_path": str(scratch / f"{tag}.contrast.npy"),
            "result_path": str(scratch / f"{tag}.json")}
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
    contrast = Path(spec["contrast_path"])
    return Measured(result, np.load(spec["outputs_path"]), np.load(contrast) if contrast.is_file() else None)


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
        "runtime": record["runtime"],
        "threads": record["threads"],
        "file_size_bytes": size,
        "import_ms": record["import_ms"],
        "cold_load_ms": record["cold_load_ms"],
        "first_run_ms": record["first_run_ms"],
        "latency": record["latency"],
        "peak_rss_mb": record["peak_rss_mb"],
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
    from cdx.defaults import ASSETS
    from cdx.distill.loading import read_cdx_info

    named = read_cdx_info(Path(manifest["source"]["path"])).get("teacher") if Path(manifest["source"]["path"]).is_dir() \
        else None
    if not named:
        return None
    for candidate in (Path(named), ASSETS / Path(named).name):
        if (candidate / "model_index.json").is_file():
            return str(candidate)
    return None


def _images_for_quality(outputs: np.ndarray) -> bool:
    """The Fashion-MNIST classifier's feature space applies to 1×32×32 images."""
    return outputs.ndim == 4 and tuple(outputs.shape[1:]) == (1, 32, 32)


def _quality(outputs: np.ndarray, labels: np.ndarray, real_features: np.ndarray) -> dict[str, Any]:
    import torch

    from cdx.benchmarks.quality import classifier_features, frechet_distance, load_classifier

    features, predicted = classifier_features(load_classifier(), torch.from_numpy(outputs))
    return {"samples": len(outputs), "fd_classifier": frechet_distance(features, real_features),
            "accuracy": float((predicted == labels).mean())}


def _real_features(count: int) -> np.ndarray | None:
    """Classifier features of `count` Fashion-MNIST test images (None when the data is not installed)."""
    from cdx.benchmarks.quality import classifier_features, load_classifier
    from cdx.distill.data import load_fashion_mnist

    try:
        test = load_fashion_mnist(split="test", limit=count)
    except CdxError:
        return None
    return classifier_features(load_classifier(), (test.images + 1) / 2)[0]


def bench(folders: str | Path | list[str | Path], options: BenchOptions | None = None,
          progress: Progress | None = None) -> dict[str, Any]:
    """Measure every model in `folders`; returns the report dict (see `report.schema.json`)."""
    from cdx.benchmarks.report import machine_info, new_report
    from cdx.convert.parity import psnr_peak

    options = options or BenchOptions()
    options.validate()
    say = progress or (lambda _msg: None)
    roots = [Path(f) for f in (folders if isinstance(folders, list) else [folders])]
    manifests = {root: load_manifest(root, verify=True) for root in roots}
    seeds = list(range(options.seeds))
    base = {"threads": options.threads, "runs": options.runs, "warmup": options.warmup, "seeds": seeds}
    from cdx.benchmarks.worker import save_inputs
    from cdx.convert.golden import contrast_batches, manifest_inputs
    results: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    grid: dict[str, np.ndarray] = {}
    quality_outputs: dict[int, np.ndarray] = {}  # index in `results` → that row's images
    with tempfile.TemporaryDirectory(prefix="cdx-bench-") as tmp:
        scratch = Path(tmp)
        eager_cache: dict[tuple, Measured] = {}
        for root, manifest in manifests.items():
            for model in manifest["models"]:
                size = _size(model, manifest)
                reason = why_not_runnable(model)
                if reason:
                    skipped.append({"name": model["name"], "folder": str(root), "target": model["target"],
                                    "format": model["format"], "precision": model["precision"], "file_size_bytes": size,
                                    "reason": reason, "parity_at_convert": model.get("parity", {}).get("checked")})
                    continue
                key = (manifest["source"]["weights_sha256"], model.get("role", "generator"),
                       *(tuple(s["shape"]) for s in model["inputs"]), model.get("steps", 1))
                tag = f"{root.name}.{model['name']}"
                samples = manifest_inputs(model, manifest, seeds)
                contrast = contrast_batches([s["name"] for s in model["inputs"]], samples,
                                            manifest["conditioning"].get("num_classes"))
                inputs_path = scratch / f"{tag}.inputs.npz"
                save_inputs(inputs_path, samples, contrast)
                if options.include_eager and key not in eager_cache:
                    say(f"eager PyTorch baseline for {model['name']} ({options.seeds} seeds)")
                    eager_cache[key] = _run_worker({**base, "folder": str(root.resolve()), "model": model["name"],
                                                    "runtime": "torch", "inputs_path": str(inputs_path)},
                                                   scratch, f"{tag}.torch", options.threads)
                    eager_row = _row(model, eager_cache[key].record, None, str(root), eager=True)
                    results.append(eager_row)
                    grid[eager_row["name"]] = eager_cache[key].outputs[:GRID_SAMPLES]
                    quality_outputs[len(results) - 1] = eager_cache[key].outputs
                runtime = runtime_for(model, None)
                say(f"{model['name']} on {runtime}")
                measured = _run_worker({**base, "folder": str(root.resolve()), "model": model["name"], "runtime": runtime,
                                        "inputs_path": str(inputs_path)}, scratch, f"{tag}.{runtime}", options.threads)
                row = _row(model, measured.record, size, str(root))
                if key in eager_cache:
                    eager = eager_cache[key]
                    row["drift_vs_eager"] = _drift(eager, measured, psnr_peak(model["outputs"][0], eager.outputs))
                    row["speedup_vs_eager"] = eager.record["latency"]["median_ms"] / row["latency"]["median_ms"]
                results.append(row)
                grid[f"{row['name']} ({row['runtime']})"] = measured.outputs[:GRID_SAMPLES]
                quality_outputs[len(results) - 1] = measured.outputs
        first = next(iter(manifests.values()))
        teacher = find_teacher(first, options.teacher)
        if teacher:
            guidance = first["conditioning"].get("guidance", {}).get("default", 3.0)
            for steps in options.teacher_steps:
                name = f"teacher DDIM {steps}" + (" (full)" if steps == options.teacher_steps[0] else "")
                say(f"{name} (eager PyTorch, guidance {guidance})")
                measured = _run_worker({**base, "kind": "teacher", "teacher": teacher, "steps": steps, "guidance": guidance},
                                       scratch, f"teacher{steps}", options.threads)
                results.append({**_row({"name": name, "target": "teacher", "format": "eager", "precision": "fp32",
                                        "role": "teacher"}, measured.record, None, teacher, eager=False),
                                "target": "teacher", "format": "eager", "teacher_steps": steps})
                if steps == options.teacher_steps[0]:
                    grid[name] = measured.outputs[:GRID_SAMPLES]
                quality_outputs[len(results) - 1] = measured.outputs
    report = new_report(roots, first, options, results, machine_info())
    report["skipped"] = skipped
    _add_distillation_speedup(report)
    _add_quality(report, quality_outputs, first)
    report["_grid"] = grid  # images for the plots; dropped before the JSON is written
    return report


def _add_distillation_speedup(report: dict[str, Any]) -> None:
    """Teacher full-step latency over each student row's, on the same runtime and threads."""
    full = next((r for r in report["results"] if r["target"] == "teacher" and r["name"].endswith("(full)")), None)
    if full is None:
        return
    for row in report["results"]:
        if row["target"] != "teacher" and row.get("role", "generator") == "generator":
            row["speedup_vs_teacher_full"] = full["latency"]["median_ms"] / row["latency"]["median_ms"]


def _add_quality(report: dict[str, Any], outputs: dict[int, np.ndarray], manifest: dict[str, Any]) -> None:
    """Distribution-level quality under the Fashion-MNIST classifier, for every row whose images it can read."""
    images = {index: out for index, out in outputs.items() if _images_for_quality(out)}
    if not images:
        return
    count = min(len(out) for out in images.values())
    real = _real_features(count)
    if real is None:
        report["quality_note"] = "Fashion-MNIST test set not installed: no distribution-level quality"
        return
    num_classes = manifest["conditioning"].get("num_classes") or 1
    labels = np.arange(count) % num_classes
    for index, row in enumerate(report["results"]):
        if index in images:
            row["quality"] = _quality(images[index][:count], labels, real)
