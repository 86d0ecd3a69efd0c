"""`cdx demo`: the main job end to end on a model cdx builds itself, with no download and no training."""

from __future__ import annotations

import shutil
from pathlib import Path

from cdx.ui import console, stages


def run_demo(workdir: Path, runs: int = 20) -> Path:
    """Build the tiny SD-shaped student, export it to ONNX with the parity gate, bench it; return report.md."""
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.report import render_markdown, write_report
    from cdx.convert.export import ConvertOptions, convert
    from cdx.tiny_models import build_tiny_sd

    workdir = Path(workdir)
    model_dir, export_dir, report_dir = workdir / "student", workdir / "onnx", workdir / "report"
    for path in (model_dir, export_dir, report_dir):
        shutil.rmtree(path, ignore_errors=True)
    with stages("demo") as say:
        say("building the tiny SD-shaped student (random weights)")
        build_tiny_sd(model_dir)
        convert(model_dir, export_dir, ConvertOptions(target="onnx"), progress=say)
        report = bench(export_dir, BenchOptions(runs=runs), progress=say)
        _, md_path = write_report(report, report_dir)
    print(render_markdown(report))
    console.print(f"wrote {md_path}")
    return md_path
