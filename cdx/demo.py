"""`cdx demo`: the main job end to end on the embedded Fashion-MNIST student — convert → bench → report.

No download and no training by default (the teacher and student are committed under `cdx/assets/`);
`--distill` first re-distills the student from the committed teacher.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cdx.ui import console, stages


def run_demo(workdir: Path, runs: int = 20, distill: bool = False, distill_steps: int | None = None) -> Path:
    """Convert the embedded student (re-distilled first with `distill`), bench every artifact; return report.md."""
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.report import render_markdown, write_report
    from cdx.convert.export import ConvertOptions, convert
    from cdx.defaults import default_student, default_teacher

    workdir = Path(workdir)
    export_dir, report_dir = workdir / "onnx", workdir / "report"
    for path in (export_dir, report_dir):
        shutil.rmtree(path, ignore_errors=True)
    student = default_student()
    if distill:
        from cdx.distill.distiller import DistillConfig, distill_student
        from cdx.distill.loading import read_cdx_info

        recipe = read_cdx_info(Path(student)).get("distill", {})
        config = DistillConfig(**{k: v for k, v in recipe.items() if k in DistillConfig.__dataclass_fields__})
        config.guidance_range = tuple(config.guidance_range)  # type: ignore[assignment]
        if distill_steps:
            config.steps = distill_steps
        student_dir = workdir / "student"
        distill_student(default_teacher(), student_dir, config, work_dir=workdir / "student.work", overwrite=True,
                        resume=False)
        student = str(student_dir)
    with stages("demo") as say:
        convert(student, export_dir, ConvertOptions(target="onnx"), progress=say)
        report = bench(export_dir, BenchOptions(runs=runs), progress=say)
        _, md_path = write_report(report, report_dir)
    print(render_markdown(report))
    console.print(f"wrote {md_path}")
    return md_path
