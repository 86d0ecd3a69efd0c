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
def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in cdx.benchmarks (report.schema.json, device_results.schema.json)."""
    return json.loads(resources.files("cdx.benchmarks").joinpath(name).read_text("utf-8"))


def report_schema() -> dict[str, Any]:
    return load_schema("report.schema.json")


def validate_against(schema_name: str, data: Any, where: str) -> None:
    """Raise one line naming `where`, the JSON path and the first schema violation."""
    from referencing import Registry, Resource

    device = load_schema("device_results.schema.json")
    registry = Registry().with_resource(device["$id"], Resource.from_contents(device))
    validator = jsonschema.Draft202012Validator(load_schema(schema_name), registry=registry)
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        path = "/".join(str(p) for p in errors[0].absolute_path) or "(root)"
        raise ManifestError(f"{where}: schema violation at {path}: {errors[0].message}")


def validate_report(report: dict[str, Any], where: str = "report") -> None:
    """Raise with the first schema violation."""
    validate_against("report.schema.json", report, where)


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


def new_report(folders: list[Path], manifest: dict[str, Any], options: Any, results: list[dict[str, Any]],
               machine: dict[str, Any]) -> dict[str, Any]:
    """The report skeleton around measured rows (validated at write time, once every section is in)."""
    return {
        "report_version": REPORT_VERSION,
        "created_by": f"cdx {__version__}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "artifacts": [str(f) for f in folders],
        "source": manifest["source"],
        "settings": {"runs": options.runs, "warmup": options.warmup, "threads": options.threads,
                     "seeds": getattr(options, "seeds", 0)},
        "machine": machine,
        "results": results,
        "skipped": [],
        "device_results": [],
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _teacher_ratio(ratio: dict[str, Any] | None) -> str:
    """A teacher ratio with the runtime whose teacher it divides by."""
    return "—" if not ratio else f"{ratio['ratio']:.2f}× ({ratio['runtime']})"


def _kid(value: dict[str, Any] | None) -> str:
    """KID ×10³ as mean ± std over subsets."""
    return "—" if not value else f"{value['mean'] * 1e3:.2f} ± {value['std'] * 1e3:.2f}"


def _quality_lines(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["results"] if "quality" in r]
    if not rows:
        return []
    q = report.get("quality_settings") or {"samples": rows[0]["quality"]["samples"]}
    subsets = f"{q['kid_subsets']} subsets of {q['kid_subset_size']}" if "kid_subsets" in q else ""
    reference = q.get("reference") or "no reference statistics"
    lines = ["", f"## Distribution drift (n = {q['samples']} per row; same seeds, labels and initial latents)", "",
             f"Inception KID ×10³, mean ± std over {subsets}, against the eager float student's own samples and against "
             f"the real data ({reference}); the classifier FD is secondary. Compare rows of this table with each other, "
             "not with numbers at another n.", "",
             "| model | runtime | precision | KID vs float student | KID vs real | FID vs real | classifier FD vs real "
             "| classifier FD vs student | class accuracy |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["quality"]
        lines.append(f"| {r['name']} | {r['runtime']} | {r['precision']} | {_kid(m.get('kid_vs_student'))} | "
                     f"{_kid(m.get('kid_vs_reference'))} | {_fmt(m.get('fid_vs_reference'), 2)} | "
                     f"{_fmt(m.get('fd_classifier'), 2)} | {_fmt(m.get('fd_classifier_vs_student'), 2)} | "
                     f"{_fmt(m.get('accuracy'), 3)} |")
    return lines


def _budget_line(settings: dict[str, Any]) -> str:
    """What the time budget chose (empty without one)."""
    if not settings.get("time_budget_s"):
        return ""
    chosen = settings.get("seeds", "?")
    asked = settings.get("seeds_requested", chosen)
    return (f" Time budget {settings['time_budget_s']:g} s (`--time-budget`): {chosen} of {asked} seeds; "
            "each row's runs are in its latency record.")


def _components_lines(report: dict[str, Any]) -> list[str]:
    splits = report.get("components") or []
    if not splits:
        return []
    lines = ["", "## Per-component latency (UNet step and decoder graphs, same runtime)", "",
             "Median ms of the `--mode components` graphs; the split is steps × UNet step + decoder, the generator is "
             "the one-graph artifact of the same weights, target and precision.", "",
             "| runtime | precision | resolution | UNet step ms | decoder ms | steps | steps × UNet + decoder ms "
             "| generator ms | decoder share | decoder / generator |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for c in splits:
        resolution = "×".join(map(str, c.get("resolution") or [])) or "—"
        share_gen = c.get("decoder_share_of_generator")
        lines.append(f"| {c['runtime']} | {c['precision']} | {resolution} | {_fmt(c['unet_step_ms'], 2)} | "
                     f"{_fmt(c['decoder_ms'], 2)} | {c['steps']} | {_fmt(c['components_ms'], 2)} | "
                     f"{_fmt(c.get('generator_ms'), 2)} | {c['decoder_share']:.0%} | "
                     f"{'—' if share_gen is None else f'{share_gen:.0%}'} |")
    return lines


def _memory_lines(report: dict[str, Any]) -> list[str]:
    rows = [r for r in report["results"] if "memory" in r]
    if not rows:
        return []
    tiers = [t["ram_gb"] for t in (report.get("memory_tiers") or {}).get("tiers", [])] or \
        [int(k.removesuffix("GB")) for k in rows[0]["memory"]["tiers"]]
    source = (report.get("memory_tiers") or {}).get("source", "estimates")
    lines = ["", "## Runtime memory (peak RSS of each runtime's own worker process)", "",
             f"Fits a phone tier: yes = under every app budget of that RAM size; entitlement/android = only with iOS's "
             f"increased-memory-limit entitlement or Android's larger budget; no = neither. Budgets: {source}.", "",
             "| model | runtime | precision | size MB | peak RSS MB | RSS before load MB | peak RSS / size | "
             + " | ".join(f"{t} GB" for t in tiers) + " |",
             "|---|---|---|---:|---:|---:|---:|" + "---|" * len(tiers)]
    for r in rows:
        size, memory = r.get("file_size_bytes"), r["memory"]
        ratio = memory.get("rss_over_size")
        lines.append(f"| {r['name']} | {r['runtime']} | {r['precision']} | {_fmt(size / 1e6 if size else None, 2)} | "
                     f"{_fmt(r['peak_rss_mb'])} | {_fmt(r.get('rss_before_load_mb'))} | "
                     f"{'—' if ratio is None else f'{ratio:.2f}×'} | "
                     + " | ".join(memory["tiers"].get(f"{t}GB", "—") for t in tiers) + " |")
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """Tables a person wants to read: latency and drift per artifact, distillation speed-up, quality, phones."""
    settings, machine = report["settings"], report["machine"]
    lines = [
        f"# cdx bench — {report['source'].get('name', report['source']['path'])}", "",
        f"{machine['cpu']}, {settings['threads']} threads, {settings['runs']} timed runs after {settings['warmup']} "
        f"warm-up, drift over {settings.get('seeds', '?')} seeded inputs; {report['created_at']}."
        f"{_budget_line(settings)}", "",
        "## Latency and drift vs the eager float student", "",
        "The teacher runs on every runtime an artifact runs on (its guided UNet step exported for it); "
        "\"× teacher full\" divides the teacher's full sampler on the runtime in brackets by the row's time.", "",
        "| model | runtime | precision | median ms | p90 ms | cold load ms | first run ms | peak RSS MB | size MB | "
        "PSNR dB | SSIM | cond. ratio | × eager | × teacher full (same runtime) | × teacher full (eager) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        drift = r.get("drift_vs_eager") or {}
        size = r.get("file_size_bytes")
        cond = (drift.get("conditioning_sensitivity") or {}).get("aligned_ratio")
        lines.append(
            f"| {r['name']} | {r['runtime']} | {r['precision']} | {_fmt(r['latency']['median_ms'], 2)} | "
            f"{_fmt(r['latency']['p90_ms'], 2)} | {_fmt(r['cold_load_ms'])} | {_fmt(r['first_run_ms'])} | "
            f"{_fmt(r['peak_rss_mb'])} | {_fmt(size / 1e6 if size else None, 2)} | {_fmt(drift.get('psnr_db'))} | "
            f"{_fmt(drift.get('ssim'), 4)} | {_fmt(cond, 2)} | {_ratio(r.get('speedup_vs_eager'))} | "
            f"{_teacher_ratio(r.get('speedup_vs_teacher_full'))} | {_teacher_ratio(r.get('speedup_vs_teacher_full_eager'))} |"
        )
    lines += _components_lines(report)
    lines += _memory_lines(report)
    lines += _quality_lines(report)
    notes = [*report.get("notes", []), *([report["quality_note"]] if report.get("quality_note") else [])]
    if notes:
        lines += ["", "## Notes", "", *(f"- {note}" for note in notes)]
    if report.get("skipped"):
        lines += ["", "## Not runnable on this machine (listed, not timed)", "", "| model | target | precision | size MB | why |",
                  "|---|---|---|---:|---|"]
        lines += [f"| {s['name']} | {s['target']} | {s['precision']} | {_fmt(s['file_size_bytes'] / 1e6, 2)} | {s['reason']} |"
                  for s in report["skipped"]]
    if report.get("device_results"):
        lines += ["", "## Phones and other devices (`cdx bench ingest`)", "",
                  "| device | OS | runtime | backend | model | median ms | p90 ms | cold load ms | golden PSNR dB "
                  "| golden max-abs |",
                  "|---|---|---|---|---|---:|---:|---:|---:|---:|"]
        for device_file in report["device_results"]:
            device = device_file["device"]
            for r in device_file["results"]:
                golden = r.get("golden", {})
                lines.append(f"| {device['model']} | {device['os']} {device.get('os_version', '')} | {r['runtime']} | "
                             f"{r.get('backend', '—')} | {r['model']} | {_fmt(r['latency']['median_ms'], 2)} | "
                             f"{_fmt(r['latency'].get('p90_ms'), 2)} | {_fmt(r.get('cold_load_ms'))} | "
                             f"{_fmt(golden.get('psnr_db'))} | {_fmt(golden.get('max_abs'), 6)} |")
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in report["plots"].items()]
    lines += ["", "PSNR 999 = identical outputs; cond. ratio = how far outputs move when only the conditioning changes, "
              "artifact vs float, projected on the float model's change (≈ 1 kept, ≈ 0 collapsed; quantization noise "
              "does not inflate it). Re-run: `cdx bench " + " ".join(report["artifacts"]) + "`.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: str | Path, plots: bool = True) -> tuple[Path, Path]:
    """Validate, draw the plots, then write `report.json` and `report.md` atomically."""
    out = Path(out_dir)
    grid = report.pop("_grid", None)
    columns = report.pop("_grid_columns", None)
    if plots:
        from cdx.benchmarks.plots import draw_plots

        out.mkdir(parents=True, exist_ok=True)
        report["plots"] = draw_plots(report, grid or {}, out, columns)
    validate_report(report)
    json_path, md_path = out / "report.json", out / "report.md"
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    atomic_write_text(md_path, render_markdown(report))
    return json_path, md_path


def load_report(path: str | Path) -> dict[str, Any]:
    """Read and validate a report.json (one line naming the file on failure)."""
    path = Path(path)
    try:
        report = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{path}: cannot read report ({exc})") from None
    validate_report(report, where=str(path))
    return report
