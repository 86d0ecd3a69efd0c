"""Model cards for pipelines cdx trains: the exact command, the training time and the measured quality."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cdx.atomic import atomic_write_text
from cdx.defaults import portable_path
from cdx.distill.loading import MULTISTEP_VAE, read_cdx_info


def _params(folder: Path, sub: str) -> int:
    """Parameter count of a component, read from its safetensors headers."""
    from safetensors import safe_open

    total = 0
    for file in (folder / sub).glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():  # noqa: SIM118 — safe_open is not iterable
                shape = handle.get_slice(key).get_shape()
                count = 1
                for dim in shape:
                    count *= dim
                total += count
    return total


def write_model_card(folder: Path, title: str, command: str, quality_md: str = "", notes: str = "") -> Path:
    """Write `folder/README.md` from cdx.json (recipe, time) plus the quality table given."""
    info: dict[str, Any] = read_cdx_info(folder)
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    seconds = info.get("train_seconds")
    total = seconds.get("total") if isinstance(seconds, dict) else seconds
    lines = [
        f"# {title}", "",
        f"- kind: {info.get('kind', '?')}; classes: {', '.join(info.get('class_names', []))}",
        f"- UNet parameters: {_params(folder, 'unet'):,}; VAE parameters: {_params(folder, 'vae'):,}",
        *([f"- decoders: `vae/` decodes one-step samples, `{MULTISTEP_VAE}/` 2 or more steps (the pipeline picks by "
            "`num_inference_steps`)"] if (folder / MULTISTEP_VAE).is_dir() else []),
        f"- folder size: {size_mb:.1f} MB",
        f"- training time: {total:.0f} s on the machine below" if total is not None else "- training time: n/a",
        f"- machine: {info.get('machine', 'not recorded')}",
        "", "## Reproduce", "", "```bash", command, "```", "",
        "Load it with plain diffusers (the pipeline class ships in `pipeline_cdx.py`):", "",
        "```python", "from diffusers import DiffusionPipeline",
        f'pipe = DiffusionPipeline.from_pretrained("{portable_path(str(folder))}", trust_remote_code=True)',
        f"images = pipe(class_labels=[0, 1, 2], num_inference_steps={1 if info.get('kind') == 'student' else 50}).images",
        "```", "",
    ]
    if quality_md:
        lines += ["## Measured quality", "", quality_md.strip(), ""]
    if notes:
        lines += [notes.strip(), ""]
    lines += ["## Recipe", "", "```json", json.dumps({k: v for k, v in info.items() if k != "class_names"}, indent=2), "```", ""]
    path = folder / "README.md"
    atomic_write_text(path, "\n".join(lines))
    return path


# DistillConfig field -> `cdx distill` flag (guidance_range is split in two flags)
_DISTILL_FLAGS = {
    "steps": "--steps", "batch_size": "--batch-size", "lr": "--lr", "lr_warmup_steps": "--lr-warmup-steps",
    "lr_schedule": "--lr-schedule",
    "ema_decay": "--ema-decay", "export_ema_decay": "--export-ema-decay", "solver": "--solver",
    "num_solver_steps": "--num-solver-steps", "solver_substeps": "--solver-substeps",
    "parameterization": "--parameterization", "loss": "--loss", "huber_c": "--huber-c",
    "gradient_accumulation": "--grad-accum", "mixed_precision": "--mixed-precision",
    "checkpoint_every": "--checkpoint-every", "sample_every": "--sample-every", "seed": "--seed",
    "caption_dropout": "--caption-dropout", "resolution": "--resolution", "lora_rank": "--lora-rank",
    "method": "--method", "init_student": "--init-student", "ode_regression_weight": "--ode-regression-weight",
    "ode_regression_steps": "--ode-regression-steps", "ode_regression_batch": "--ode-regression-batch",
    "ode_regression_space": "--ode-regression-space",
    "adversarial_weight": "--adversarial-weight", "adversarial_start": "--adversarial-start", "critic_lr": "--critic-lr",
    "critic_r1": "--critic-r1", "critic_input": "--critic-input", "critic_depth": "--critic-depth",
    "critic_steps": "--critic-steps", "dmd_weight": "--dmd-weight", "dmd_start": "--dmd-start",
    "fake_score_lr": "--fake-score-lr", "fake_score_updates": "--fake-score-updates",
    "dmd_gan_weight": "--dmd-gan-weight", "dmd_critic_weight": "--dmd-critic-weight",
    "dmd_gan_heads": "--dmd-gan-heads",
}
# DistillConfig fields that are not a `--flag VALUE` pair: written by distill_command's own rules, or not CLI options
_DISTILL_NOT_FLAGS = frozenset({"guidance_range", "variance_reduction", "guidance_embedding_dim", "extra"})


def distill_command(recipe: dict[str, Any], out: str) -> str:
    """The `cdx distill` command line that reproduces `recipe` (a saved DistillConfig): only non-default flags."""
    from cdx.distill.distiller import DistillConfig

    default = DistillConfig().as_dict()
    parts = ["cdx distill", f"--out {out}"]
    for field_name, flag in _DISTILL_FLAGS.items():
        if field_name in recipe and recipe[field_name] != default[field_name]:
            parts.append(f"{flag} {recipe[field_name]}")
    if recipe.get("variance_reduction"):  # a typer bool flag: present or absent, no value
        parts.append("--variance-reduction")
    low, high = recipe.get("guidance_range", default["guidance_range"])
    if (low, high) != tuple(default["guidance_range"]):
        parts += [f"--guidance-min {low}", f"--guidance-max {high}"]
    return " ".join(parts)


def teacher_command(recipe: dict[str, Any], out: str) -> str:
    """The `cdx teacher train` command line that reproduces `recipe` (a saved TeacherRecipe)."""
    from cdx.distill.teacher import TeacherRecipe

    default = TeacherRecipe().as_dict()
    parts = ["cdx teacher train", f"--out {out}"]
    for field_name in ("vae_steps", "unet_steps", "seed"):
        if field_name in recipe and recipe[field_name] != default[field_name]:
            parts.append(f"--{field_name.replace('_', '-')} {recipe[field_name]}")
    other = [k for k in default if k not in ("vae_steps", "unet_steps", "seed") and recipe.get(k, default[k]) != default[k]
             and not (isinstance(default[k], tuple) and list(default[k]) == recipe.get(k))]
    if other:
        parts.append(f"# with TeacherRecipe({', '.join(f'{k}={recipe[k]!r}' for k in other)}) in Python")
    return " ".join(parts)


def record_stage(info: dict[str, Any], key: str, record: dict[str, Any]) -> None:
    """Put `record` under `key` in a folder's cdx.json `info`, moving an earlier one to the end of `key`_earlier
    (a fine-tune of a fine-tuned folder keeps the chain, oldest first)."""
    if key in info:
        info[f"{key}_earlier"] = [*info.get(f"{key}_earlier", []), info[key]]
    info[key] = record


def recorded_stages(info: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The records `record_stage` kept under `key` (`key`_earlier + `key`), oldest first."""
    latest = info.get(key)
    return [*info.get(f"{key}_earlier", []), latest] if latest else []


def decoder_finetune_stages(info: dict[str, Any]) -> list[dict[str, Any]]:
    """A folder's decoder fine-tunes (cdx.json `decoder_finetune_earlier` + `decoder_finetune`), oldest first."""
    return recorded_stages(info, "decoder_finetune")


def _changed_flags(record: dict[str, Any], defaults: dict[str, Any], names: dict[str, str] | None = None) -> list[str]:
    """`--flag VALUE` for each of `defaults`' keys whose recorded value differs (flag: the key, or `names`' rename,
    with dashes)."""
    names = names or {}
    return [f"--{names.get(key, key).replace('_', '-')} {record[key]}" for key, value in defaults.items()
            if record.get(key, value) != value]


def _limit_flag(record: dict[str, Any]) -> list[str]:
    """`--limit N` when a decoder fine-tune did not use the default 20,000 training images."""
    return [] if record.get("images") == 20000 else [f"--limit {record.get('images')}"]


def decoder_finetune_command(record: dict[str, Any], out: str, student_out: str | None = None,
                             teacher_in: str = "out/teacher_base", student_in: str = "out/student_base") -> str:
    """The `cdx teacher finetune-decoder` line (a saved decoder_finetune record) that turns `teacher_in` (and
    `student_in`) into `out` (and `student_out`)."""
    parts = [f"cdx teacher finetune-decoder --teacher {teacher_in}", f"--out {out}", f"--steps {record['steps']}"]
    parts += _changed_flags(record, {"lr": 1e-3, "batch": 64, "seed": 0}) + _limit_flag(record)
    if record.get("adversarial_weight"):
        parts += _changed_flags(record, {"adversarial_weight": 0.0, "adversarial_start": 0, "critic_lr": 2e-4,
                                         "critic_r1": 0.0})
    parts += _changed_flags(record, {"latent_noise": 0.0})
    if student_out:
        parts += [f"--student {student_in}", f"--student-out {student_out}"]
    return " ".join(parts)


def is_student_decoder_fit(record: dict[str, Any]) -> bool:
    """A `decoder_finetune` record of `cdx student finetune-decoder` (it keeps `student_samples`, 0 included), not
    of a teacher's fine-tune the student took along (`cdx teacher finetune-decoder --student`)."""
    return "student_samples" in record


def student_decoder_command(record: dict[str, Any], student_in: str, out: str) -> str:
    """The `cdx student finetune-decoder` line (a saved record with `student_samples`) that turned `student_in` into
    `out`."""
    parts = [f"cdx student finetune-decoder --student {student_in}", f"--out {out}", f"--steps {record['steps']}"]
    defaults = {"lr": 2e-4, "batch": 64, "seed": 0, "student_samples": 10000, "adversarial_weight": 0.5,
                "adversarial_start": 0, "critic_lr": 2e-4, "critic_r1": 0.0, "latent_noise": 0.0}
    return " ".join(parts + _changed_flags(record, defaults, {"student_samples": "samples"}) + _limit_flag(record))


def deepen_command(record: dict[str, Any], student_in: str, out: str) -> str:
    """The `cdx student deepen` line (a saved `deepen` record) that turned `student_in` into `out`."""
    seed = [f"--seed {record['seed']}"] if record.get("seed", 0) else []
    return " ".join([f"cdx student deepen --student {student_in} --out {out}",
                     f"--layers-per-block {record['layers_per_block'][1]}", *seed])


def unet_continue_stages(info: dict[str, Any]) -> list[dict[str, Any]]:
    """A teacher folder's UNet continuations (cdx.json `unet_continue_earlier` + `unet_continue`), oldest first."""
    return recorded_stages(info, "unet_continue")


def unet_continue_command(record: dict[str, Any], teacher_in: str, out: str, work_dir: str) -> str:
    """The `cdx teacher continue-unet` line (a saved unet_continue record) that turned `teacher_in` into `out`
    (`--lr` / `--ema-decay` always written: their defaults are the input teacher's recipe), checkpointing into
    `work_dir` (one per continuation: a folder resumes only the run that made it)."""
    parts = [f"cdx teacher continue-unet --teacher {teacher_in}", f"--out {out}", f"--work-dir {work_dir}",
             f"--steps {record['steps']}", f"--lr {record['lr']}", f"--ema-decay {record['ema_decay']}"]
    return " ".join(parts + _changed_flags(record, {"seed": 1, "limit": None}))

