"""Device results: the JSON a sample app or native runner writes after running a bundle, and `cdx bench ingest`.

The schema (`device_results.schema.json`, "cdx-device-results/1") is the one contract between the phones and this
report. `local_device_results` writes the same file for this machine from the Python runtimes, so the ingest path is
exercised with real measurements, not invented ones.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from cdx.atomic import atomic_write_text
from cdx.benchmarks.report import load_report, render_markdown, validate_against, validate_report
from cdx.errors import InputError, ManifestError

SCHEMA_ID = "cdx-device-results/1"


def load_device_results(path: str | Path) -> dict[str, Any]:
    """Read and validate one device-results file; one line naming the file and the problem otherwise."""
    path = Path(path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such device-results file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: not JSON ({exc})") from None
    validate_against("device_results.schema.json", data, f"{path} (not a {SCHEMA_ID} file)")
    return data


def ingest(report_path: str | Path, files: list[str | Path]) -> dict[str, Any]:
    """Validate every file first, then merge them into the report and rewrite report.json + report.md atomically."""
    report_path = Path(report_path)
    report = load_report(report_path)
    incoming = [load_device_results(f) for f in files]
    source = report["source"].get("weights_sha256")
    for path, data in zip(files, incoming, strict=True):
        if source and data["bundle"]["source_weights_sha256"] != source:
            raise InputError(f"{path}: measured a bundle of other weights (source_weights_sha256 "
                             f"{data['bundle']['source_weights_sha256'][:12]}…, this report: {source[:12]}…)")
    report["device_results"] = [*report.get("device_results", []), *incoming]
    validate_report(report, where=str(report_path))
    atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(report_path.with_name("report.md"), render_markdown(report))
    return report


def local_device_results(folder: str | Path, runs: int = 20, warmup: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Run every model of an artifact folder that runs here on its golden inputs; return a device-results document."""
    from cdx.benchmarks.bench import why_not_runnable
    from cdx.golden_io import read_golden, unstack
    from cdx.manifest import MANIFEST_NAME, load_manifest
    from cdx.metrics import max_abs_diff, percentile_stats, psnr, psnr_peak
    from cdx.runtimes.base import open_runner, runtime_for

    folder = Path(folder)
    manifest = load_manifest(folder, verify=True)
    results = []
    for model in manifest["models"]:
        if why_not_runnable(model):
            continue
        start = time.perf_counter()
        runner = open_runner(folder, manifest, model, threads=threads)
        cold_load_ms = (time.perf_counter() - start) * 1e3
        inputs, golden = read_golden(folder, model)
        samples = unstack(inputs)
        start = time.perf_counter()
        outputs = [runner.run(samples[0])]
        first_run_ms = (time.perf_counter() - start) * 1e3
        outputs += [runner.run(s) for s in samples[1:]]
        for _ in range(warmup):
            runner.run(samples[0])
        timings = []
        for _ in range(runs):
            start = time.perf_counter()
            runner.run(samples[0])
            timings.append((time.perf_counter() - start) * 1e3)
        name = model["outputs"][0]["name"]
        ours, expected = np.concatenate([o[name] for o in outputs]), golden[name]
        stats = percentile_stats(timings)
        results.append({
            "model": model["name"], "runtime": runtime_for(model, None),
            "backend": model.get("export", {}).get("delegate", "cpu"),
            "threads": threads or 1, "cold_load_ms": cold_load_ms, "first_run_ms": first_run_ms,
            "latency": {k: stats[k] for k in ("median_ms", "p90_ms", "p99_ms", "min_ms", "max_ms")} | {"runs": runs},
            "golden": {"samples": len(samples), "max_abs": max_abs_diff(expected, ours),
                       "psnr_db": min(psnr(expected, ours, psnr_peak(model["outputs"][0], expected)), 999.0)},
        })
    if not results:
        raise InputError(f"{folder}: no model in this folder runs on this machine")
    document = {
        "schema": SCHEMA_ID,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": {"model": f"{platform.system().lower()}-{platform.machine()} (this machine)", "os": platform.system(),
                   "os_version": platform.release(), "abi": platform.machine()},
        "app": {"name": "cdx bench device --local"},
        "bundle": {"source_weights_sha256": manifest["source"]["weights_sha256"],
                   "manifest_sha256": hashlib.sha256((folder / MANIFEST_NAME).read_bytes()).hexdigest(),
                   "target": manifest["models"][0]["target"]},
        "results": results,
    }
    validate_against("device_results.schema.json", document, "local device results")
    return document
