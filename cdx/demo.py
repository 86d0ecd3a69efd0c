"""`cdx demo`: the main job end to end on an embedded student — convert (3 targets) → bench → report.

`--model fashion` (the default): the class-conditional Fashion-MNIST student; `--model emoji`: the text-to-image
emoji student (a stock LatentConsistencyModelPipeline with a CLIP text encoder), converted with its prompts and its
text encoder graph, benched with a prompt-labelled image grid; or any student folder. No download and no training
by default (teachers and students are committed under `cdx/assets/`); `--distill` first re-distills the Fashion
student from the committed teacher with its recorded recipe.
"""

from __future__ import annotations

from pathlib import Path

from cdx.errors import InputError
from cdx.ui import console, stages

# (output folder, target, --quant values): every precision that is quick to make and checkable here
DEMO_TARGETS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("onnx", "onnx", ("none", "ort", "fp16", "int8-dynamic")),
    ("executorch", "executorch", ("none", "int8")),
    ("coreml", "coreml", ("fp16", "palettize6")),
)
DEMO_FOLDERS = (*(name for name, _, _ in DEMO_TARGETS), "report", "student", "student.work")
EMOJI_STUDENT_DIR = "emoji_student"
DEMO_MODELS = ("fashion", "emoji")


def demo_student(model: str) -> str:
    """The student folder of `--model`: an embedded one by name, or a student folder (e.g. a tiny test pipeline)."""
    from cdx.defaults import ASSETS, default_student

    if model == "fashion":
        return default_student()
    if model == "emoji":
        folder = ASSETS / EMOJI_STUDENT_DIR
        if not (folder / "model_index.json").is_file():
            raise InputError(f"--model emoji: the embedded emoji student is missing ({folder}); distill it with "
                             "`cdx distill --data emoji` from the emoji teacher (see its model card)")
        return str(folder)
    if (Path(model) / "model_index.json").is_file():
        return model
    raise InputError(f"--model {model!r}: not one of {', '.join(DEMO_MODELS)} nor a student folder with model_index.json")


def check_workdir(workdir: Path, overwrite: bool) -> None:
    """Refuse a work dir that holds anything unless `overwrite`; even then only the demo's own folders are replaced
    (each atomically, by the stage that writes it) and nothing else in it is touched."""
    if workdir.is_symlink() or (workdir.exists() and not workdir.is_dir()):
        raise InputError(f"--workdir {workdir}: not a folder")
    if overwrite or not workdir.is_dir():
        return
    entries = sorted(p.name for p in workdir.iterdir())
    if entries:
        shown = ", ".join(entries[:4]) + (", …" if len(entries) > 4 else "")
        raise InputError(f"--workdir {workdir} is not empty ({shown}): pass --overwrite to replace the demo's "
                         f"folders in it ({', '.join(DEMO_FOLDERS)}), or choose an empty --workdir")


def _redistill(workdir: Path, student: str, distill_steps: int | None) -> str:
    from cdx.defaults import default_teacher
    from cdx.distill.distiller import DistillConfig, distill_student
    from cdx.distill.loading import read_cdx_info

    recipe = read_cdx_info(Path(student)).get("distill", {})
    config = DistillConfig(**{k: v for k, v in recipe.items() if k in DistillConfig.__dataclass_fields__})
    config.guidance_range = tuple(config.guidance_range)  # type: ignore[assignment]
    # the committed student's last stage started from earlier students (`init_from` in its cdx.json) that are not
    # shipped: re-distilling runs that stage's recipe from the teacher
    config.init_student = None
    if distill_steps:
        config.steps = distill_steps
    student_dir = workdir / "student"
    distill_student(default_teacher(), student_dir, config, work_dir=workdir / "student.work", overwrite=True,
                    resume=False)
    return str(student_dir)


def run_demo(workdir: Path, runs: int = 20, distill: bool = False, distill_steps: int | None = None,
             seeds: int = 64, overwrite: bool = False, model: str = "fashion") -> Path:
    """Convert the student `model` (see `demo_student`) to every target, bench them together with its teacher;
    return report.md. Text students also get their text encoder graph and tokenizer in each folder.

    A non-empty `workdir` is refused unless `overwrite` (see `check_workdir`)."""
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.report import render_markdown, write_report
    from cdx.convert.export import ConvertOptions, convert

    if distill and model != "fashion":
        raise InputError(f"--distill re-distills the Fashion student only; the {model} student's model card gives its "
                         "distillation command")
    workdir = Path(workdir)
    check_workdir(workdir, overwrite)
    report_dir = workdir / "report"
    folders = [workdir / name for name, _, _ in DEMO_TARGETS]
    student = demo_student(model)
    student = _redistill(workdir, student, distill_steps) if distill else student
    with stages("demo") as say:
        for folder, (_, target, quants) in zip(folders, DEMO_TARGETS, strict=True):
            say(f"convert → {target} ({', '.join(quants)})")
            convert(student, folder, ConvertOptions(target=target, quants=quants, overwrite=overwrite, text_encoder=True),
                    progress=say)
        report = bench(folders, BenchOptions(runs=runs, seeds=seeds), progress=say)
        _, md_path = write_report(report, report_dir)
    print(render_markdown(report))
    console.print(f"wrote {md_path}")
    return md_path
