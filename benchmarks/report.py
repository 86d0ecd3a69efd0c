"""The benchmark report: `report.json` (schema'd, stable keys) and `report.md` (tables)."""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import jsonschema

from cdx import __version__
from cdx.atomic import atomic_write_text
from cdx.errors import ManifestError

REPORT_VERSION = "1.0"


@cache
def report_schema() -> dict[str, Any]:
    return json.loads(resources.files("cdx.benchmarks").joinpath("report.schema.json").read_text("utf-8"))


def validate_report(report: dict[str, Any], where: str = "report") -> None:
    """Raise with the first schema violation."""
    errors = sorted(jsonschema.Draft202012Validator(report_schema()).iter_errors(report), key=lambda e: list(e.path))
    if errors:
        path = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise ManifestError(f"{where}: schema violation at {path}: {errors[0].message}")


def _pkg(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Where the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu,
        "logical_cores": os.cpu_count() or 0,
        "python": platform.python_version(),
        "packages": {p: _pkg(p) for p in ("torch", "onnxruntime", "executorch", "coremltools", "diffusers")},
    }


def new_report(folder: Path, manifest: dict[str, Any], options: Any, results: list[dict[str, Any]],
               machine: dict[str, Any]) -> dict[str, Any]:
    report = {
        "report_version": REPORT_VERSION,
        "created_by": f"cdx {__version__}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifact": str(folder),
        "source": manifest["source"],
        "settings": {"runs": options.runs, "warmup": options.warmup, "threads": options.threads},
        "machine": machine,
        "results": results,
    }
    validate_report(report)
    return report


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    """Tables a person wants to read: latency, load, memory, size, drift."""
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"# cdx bench — {report['source'].get('name', report['source']['path'])}",
        "",
        f"{machine['cpu']}, {settings['threads']} threads, {settings['runs']} timed runs after {settings['warmup']} "
        f"warm-up; {report['created_at']}.",
        "",
        "| model | runtime | precision | median ms | p90 ms | cold load ms | first run ms | peak RSS MB | size MB | "
        "max-abs vs eager | PSNR dB | speed-up vs eager |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        drift = r.get("drift_vs_eager") or {}
        size = r.get("file_size_bytes")
        max_abs = f"{drift['max_abs']:.2e}" if "max_abs" in drift else "—"
        speedup = f"{r['speedup_vs_eager']:.2f}×" if r.get("speedup_vs_eager") else "—"
        lines.append(
            f"| {r['name']} | {r['runtime']} | {r['precision']} | {_fmt(r['latency']['median_ms'])} | "
            f"{_fmt(r['latency']['p90_ms'])} | {_fmt(r['cold_load_ms'])} | {_fmt(r['first_run_ms'])} | "
            f"{_fmt(r['peak_rss_mb'])} | {_fmt(size / 1e6 if size else None, 2)} | "
            f"{max_abs} | {_fmt(drift.get('psnr_db'))} | {speedup} |"
        )
    lines += ["", "PSNR 999 = identical outputs. Re-run: `cdx bench " + report["artifact"] + "`.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Validate, then write `report.json` and `report.md` atomically."""
    validate_report(report)
    out = Path(out_dir)
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path
