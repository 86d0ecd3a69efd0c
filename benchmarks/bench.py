"""`cdx bench`: every model of an artifact folder on its runtime and on eager PyTorch, same seeded inputs.

Each (model, runtime) pair is measured in its own subprocess (see `worker.py`); drift is computed here
against the eager float generator's outputs from the same run.
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

from cdx.benchmarks.metrics import max_abs_diff, psnr
from cdx.errors import CdxError
from cdx.manifest import load_manifest
from cdx.runtimes.base import runtime_for

Progress = Callable[[str], None]


@dataclass
class BenchOptions:
    """How to measure."""

    runs: int = 20
    warmup: int = 3
    threads: int = min(4, os.cpu_count() or 1)
    include_eager: bool = True

    def validate(self) -> None:
        if self.runs < 1 or self.warmup < 0 or self.threads < 1:
            raise CdxError("--runs and --threads must be >= 1 and --warmup >= 0")


def _run_worker(folder: Path, model: str, runtime: str, options: BenchOptions, scratch: Path) -> tuple[dict, np.ndarray]:
    tag = f"{model}.{runtime}"
    spec = {
        "folder": str(folder.resolve()),
        "model": model,
        "runtime": runtime,
        "threads": options.threads,
        "runs": options.runs,
        "warmup": options.warmup,
        "outputs_path": str(scratch / f"{tag}.npy"),
        "result_path": str(scratch / f"{tag}.json"),
    }
    spec_path = scratch / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec), "utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": str(options.threads), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "cdx.benchmarks.worker", str(spec_path)], env=env,
                          capture_output=True, text=True, check=False)
    result_path = Path(spec["result_path"])
    if not result_path.is_file():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        raise CdxError(f"bench worker for {model} on {runtime} crashed (exit {proc.returncode}): {tail[0]}")
    result = json.loads(result_path.read_text("utf-8"))
    if not result.pop("ok"):
        raise CdxError(f"bench of {model} on {runtime} failed: {result['error']}")
    return result, np.load(spec["outputs_path"])


def bench(folder: str | Path, options: BenchOptions | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """Measure every model in `folder`; returns the report dict (see `report.schema.json`)."""
    from cdx.benchmarks.report import machine_info, new_report

    options = options or BenchOptions()
    options.validate()
    say = progress or (lambda _msg: None)
    root = Path(folder)
    manifest = load_manifest(root, verify=True)
    file_sizes = {f["path"]: f["size_bytes"] for f in manifest["files"]}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="cdx-bench-") as tmp:
        scratch = Path(tmp)
        eager_cache: dict[tuple, tuple[dict, np.ndarray]] = {}
        for model in manifest["models"]:
            key = (model.get("role", "generator"), *tuple(tuple(s["shape"]) for s in model["inputs"]), model.get("steps", 1))
            if options.include_eager and key not in eager_cache:
                say(f"eager PyTorch baseline for {model['name']}")
                eager_cache[key] = _run_worker(root, model["name"], "torch", options, scratch)
            runtime = runtime_for(model, None)
            say(f"{model['name']} on {runtime}")
            measured, outputs = _run_worker(root, model["name"], runtime, options, scratch)
            size = sum(v for p, v in file_sizes.items() if p == model["file"] or p.startswith(model["file"] + "/"))
            row = _row(model, measured, size)
            if key in eager_cache:
                eager, reference = eager_cache[key]
                row["drift_vs_eager"] = {"samples": int(reference.shape[0]), "max_abs": max_abs_diff(reference, outputs),
                                         "psnr_db": min(psnr(reference, outputs), 999.0)}
                row["speedup_vs_eager"] = eager["latency"]["median_ms"] / row["latency"]["median_ms"]
                eager_row = _row(model, eager, None)
                eager_row["name"] = f"{model['name']} (eager)"
                if not any(r["name"] == eager_row["name"] for r in results):
                    results.append(eager_row)
            results.append(row)
    return new_report(root, manifest, options, results, machine_info())


def _row(model: dict[str, Any], measured: dict[str, Any], size: int | None) -> dict[str, Any]:
    return {
        "name": model["name"],
        "target": model["target"] if measured["runtime"] != "torch" else "torch",
        "format": model["format"] if measured["runtime"] != "torch" else "eager",
        "precision": model["precision"] if measured["runtime"] != "torch" else "fp32",
        "runtime": measured["runtime"],
        "threads": measured["threads"],
        "file_size_bytes": size,
        "import_ms": measured["import_ms"],
        "cold_load_ms": measured["cold_load_ms"],
        "first_run_ms": measured["first_run_ms"],
        "latency": measured["latency"],
        "peak_rss_mb": measured["peak_rss_mb"],
    }
