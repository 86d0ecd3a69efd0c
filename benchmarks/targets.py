"""Convert one student to every target × precision, then time what runs here: the issue-#4 support table.

    python -m cdx.benchmarks.targets [--model DIR] [--out out/targets] [--runs 20] [--mode generator]

Every row's drift is the parity gate's measurement (artifact vs eager float generator, same seeded inputs); latency is
`cdx bench` (each runtime in its own process). Core ML rows carry what Linux can check (spec, I/O, size). ExecuTorch is
exported twice, with and without cdx's graph passes, so the table shows what the rewrites buy. Writes targets.json and
targets.md in --out.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdx.atomic import atomic_write_text


@dataclass(frozen=True)
class TargetRun:
    """One `cdx convert` call of the table."""

    folder: str
    target: str
    quants: tuple[str, ...]
    passes: tuple[str, ...] | None = None  # None = cdx's default passes
    timed: bool = True  # False where the artifact cannot run on this machine


RUNS = (
    TargetRun("onnx", "onnx", ("none", "ort", "fp16", "int8-dynamic", "int8-static")),
    TargetRun("executorch", "executorch", ("none", "int8")),
    TargetRun("executorch_nopasses", "executorch", ("none",), passes=()),
    TargetRun("coreml", "coreml", ("none", "fp16", "int8", "palettize6", "palettize4"), timed=False),
)


def _row(run: TargetRun, model: dict[str, Any], sizes: dict[str, int], bench_rows: dict[str, dict[str, Any]],
         convert_s: float) -> dict[str, Any]:
    parity = model["parity"]
    size = sum(v for p, v in sizes.items() if p == model["file"] or p.startswith(model["file"] + "/"))
    row: dict[str, Any] = {
        "run": run.folder, "name": model["name"], "role": model["role"], "target": model["target"],
        "format": model["format"], "precision": model["precision"], "size_bytes": size, "checked": parity["checked"],
        "convert_seconds": round(convert_s, 1),
    }
    if parity["checked"] == "numeric":
        row.update(psnr_db=parity["psnr_db"], max_abs=parity["max_abs"], ssim=parity.get("ssim"),
                   conditioning_ratio=parity.get("conditioning_sensitivity", {}).get("aligned_ratio"))  # the gate's measure
    else:
        row["why_not_numeric"] = parity.get("reason")
    if "delegation" in model.get("export", {}):
        d = model["export"]["delegation"]
        row["delegation"] = f"{d['delegate_calls']} calls, {d['delegated_fraction']:.0%} of ops delegated"
        row["portable_ops"] = d["portable_op_names"]
    measured = bench_rows.get(model["name"])
    if measured:
        row["latency_ms"] = measured["latency"]
        row["cold_load_ms"] = measured["cold_load_ms"]
        row["peak_rss_mb"] = measured["peak_rss_mb"]
    return row


def run_targets(model: str, out: Path, runs: int = 20, mode: str = "generator", say=print) -> dict[str, Any]:
    """Convert `model` for every entry of RUNS into `out/<folder>`, bench the timed ones; return the table."""
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.convert.export import ConvertOptions, convert
    from cdx.manifest import load_manifest

    rows: list[dict[str, Any]] = []
    eager: dict[str, Any] | None = None
    for run in RUNS:
        folder = out / run.folder
        say(f"convert → {run.folder} ({', '.join(run.quants)})")
        start = time.perf_counter()
        convert(model, folder, ConvertOptions(target=run.target, quants=run.quants, passes=run.passes, mode=mode,
                                              overwrite=True), progress=lambda m: None)
        convert_s = time.perf_counter() - start
        manifest = load_manifest(folder)
        bench_rows: dict[str, dict[str, Any]] = {}
        if run.timed:
            say(f"bench {run.folder}")
            report = bench(folder, BenchOptions(runs=runs, include_eager=eager is None))
            for r in report["results"]:
                if r["runtime"] == "torch":
                    eager = eager or r
                else:
                    bench_rows[r["name"]] = r
        sizes = {f["path"]: f["size_bytes"] for f in manifest["files"]}
        rows += [_row(run, m, sizes, bench_rows, convert_s) for m in manifest["models"]]
    reference = next((r for r in rows if r["run"] == "onnx" and r["precision"] == "fp32" and r["format"] == "onnx"), None)
    for row in rows:
        if reference and "latency_ms" in row:
            row["vs_ort_fp32"] = row["latency_ms"]["median_ms"] / reference["latency_ms"]["median_ms"]
    from cdx.benchmarks.report import machine_info

    return {"model": model, "mode": mode, "runs": runs, "machine": machine_info(),
            "eager": eager and {"latency_ms": eager["latency"], "runtime": "torch"}, "rows": rows}


def _mb(size: int) -> str:
    return f"{size / 1e6:.2f}"


def render_markdown(table: dict[str, Any]) -> str:
    """The support table: one line per artifact."""
    lines = [f"Model: `{table['model']}` ({table['mode']}); {table['machine']['cpu']}, "
             f"{table['machine']['logical_cores']} cores; {table['runs']} timed runs per artifact.", ""]
    if table.get("eager"):
        lines.append(f"Eager PyTorch fp32: median {table['eager']['latency_ms']['median_ms']:.2f} ms.")
        lines.append("")
    lines += ["| artifact | target | precision | size MB | checked here | PSNR dB | SSIM | cond. (aligned) | median ms | p90 ms "
              "| × ORT fp32 | delegation |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in table["rows"]:
        lat = r.get("latency_ms")
        cells = [
            f"{r['run']}/{r['name']}", f"{r['target']} ({r['format']})", r["precision"], _mb(r["size_bytes"]),
            r["checked"] if r["checked"] == "numeric" else f"{r['checked']} only (needs macOS/iOS)",
            f"{r['psnr_db']:.1f}" if "psnr_db" in r else "—",
            f"{r['ssim']:.4f}" if r.get("ssim") is not None else "—",
            f"{r['conditioning_ratio']:.2f}" if r.get("conditioning_ratio") is not None else "—",
            f"{lat['median_ms']:.2f}" if lat else "—", f"{lat['p90_ms']:.2f}" if lat else "—",
            f"{r['vs_ort_fp32']:.2f}×" if "vs_ort_fp32" in r else "—", r.get("delegation", "—"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from cdx.defaults import default_student

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="student folder (default: the embedded Fashion-MNIST student)")
    parser.add_argument("--out", type=Path, default=Path("out/targets"))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--mode", default="generator", choices=("generator", "components"))
    args = parser.parse_args(argv)
    table = run_targets(args.model or default_student(), args.out, runs=args.runs, mode=args.mode)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "targets.json", json.dumps(table, indent=2) + "\n")
    markdown = render_markdown(table)
    atomic_write_text(args.out / "targets.md", markdown)
    print(markdown)


if __name__ == "__main__":
    from cdx.quiet import quiet_third_party

    quiet_third_party()
    main()
