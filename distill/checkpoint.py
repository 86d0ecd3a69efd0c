"""Training checkpoints through 🤗 Accelerate's `save_state` / `load_state`, exact on any number of processes.

Accelerate writes what it prepared — the student (safetensors), the optimizer, the fp16 GradScaler, its step counter
(the gradient-accumulation phase) and every rank's global RNG states. cdx adds beside them what Accelerate does not
own: `target.safetensors` (the EMA target), `generator-<rank>.safetensors` (each rank's batch generator) and
`state.json` (step, history, config, architecture), written last as the completeness mark.

Why not `register_for_checkpointing` for the target and the generators: Accelerate reloads registered objects with
`torch.load(weights_only=False)`, i.e. it unpickles, and cdx never unpickles; plain safetensors do the same job.

Every rank writes into `.checkpoint-<step>.partial`; after a barrier the main process renames it into place, so a
kill -9 never leaves a half checkpoint that resume would pick up.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"
TARGET_FILE = "target.safetensors"
EXPORT_EMA_FILE = "export_ema.safetensors"  # `cdx distill --export-ema-decay`: the slow EMA that is saved


def _generator_file(rank: int) -> str:
    return f"generator-{rank}.safetensors"


def save_checkpoint(accelerator, root: Path, step: int, target: dict[str, torch.Tensor], rng: torch.Generator,
                    meta: dict[str, Any], keep: int = 2, extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write `root/checkpoint-<step>` from every rank (collective: all ranks must call it); prune older ones.
    `extra`: more safetensors files the main process writes beside the target (file name -> tensors)."""
    final = root / f"checkpoint-{step:07d}"
    staging = root / f".checkpoint-{step:07d}.partial"
    if accelerator.is_main_process:
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    save_file({"state": rng.get_state()}, staging / _generator_file(accelerator.process_index))
    if accelerator.is_main_process:
        save_file(target, staging / TARGET_FILE)
        for name, tensors in (extra or {}).items():
            save_file(tensors, staging / name)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps({"step": step, **meta}, indent=2), "utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        for old in sorted(p for p in root.glob("checkpoint-*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder, if any."""
    done = [p for p in sorted(root.glob("checkpoint-*")) if (p / STATE_FILE).is_file()]
    return done[-1] if done else None


def resume_and_run(trainer: Any, resume: bool, show: bool) -> tuple[int, float]:
    """Resume `trainer` (a distiller: `resume()`, `checkpoint_dir`, `run(show=)`) from its newest checkpoint when
    `resume`, say so, and train it to the end; returns (the step it resumed from, seconds of training)."""
    start = trainer.resume() if resume else 0
    if start and show:
        print(f"resumed from step {start} ({latest_checkpoint(trainer.checkpoint_dir)})", flush=True)
    started = time.perf_counter()
    trainer.run(show=show)
    return start, time.perf_counter() - started


def read_checkpoint_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text("utf-8"))


def load_checkpoint(accelerator, path: Path, rng: torch.Generator) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore Accelerate's state and this rank's generator; returns (state.json, target tensors)."""
    accelerator.load_state(str(path))
    rng.set_state(load_file(path / _generator_file(accelerator.process_index))["state"])
    return read_checkpoint_state(path), load_file(path / TARGET_FILE)


def load_extra(path: Path, name: str) -> dict[str, torch.Tensor]:
    """One of the `extra` safetensors files `save_checkpoint` wrote into the checkpoint at `path`."""
    return load_file(path / name)


def ema_tensors(ema: Any) -> dict[str, torch.Tensor]:
    """A diffusers `EMAModel`'s shadow weights as the checkpoint's target tensors ("0", "1", … in parameter order)."""
    return {str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)}


def resume_ema_run(accelerator, root: Path | None, rng: torch.Generator, ema: Any, show: bool) -> tuple[int, dict[str, Any]]:
    """Resume a run with a diffusers `EMAModel` from the newest checkpoint in `root` (Accelerate's state, `rng`, the
    EMA's shadow weights and step counter); returns (its step, its state.json), or (0, {}) with none."""
    last = latest_checkpoint(root) if root else None
    if last is None:
        return 0, {}
    state, target = load_checkpoint(accelerator, last, rng)
    for param, (_, value) in zip(ema.shadow_params, sorted(target.items(), key=lambda kv: int(kv[0])), strict=True):
        param.data.copy_(value)
    ema.optimization_step = int(state["step"])
    if show:
        print(f"resumed from {last} (step {state['step']})", flush=True)
    return int(state["step"]), state


# Options that may change between a checkpoint and its resume (they do not change what the steps compute).
RESUME_MAY_CHANGE = frozenset({"steps", "checkpoint_every", "sample_every", "extra"})


def _normal(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def check_resumable(state: dict[str, Any], config: dict[str, Any], architecture: dict[str, Any], path: Path,
                    defaults: dict[str, Any] | None = None) -> None:
    """InputError naming the first field where the checkpoint differs from this run (config, then architecture).
    A field the checkpoint lacks (an option added after it was written) counts as `defaults[field]`."""
    from cdx.errors import InputError

    saved_config, saved_arch = state.get("config", {}), state.get("architecture", {})
    defaults = defaults or {}
    for key in sorted(set(config) | set(saved_config)):
        if key in RESUME_MAY_CHANGE:
            continue
        old, new = _normal(saved_config.get(key, defaults.get(key))), _normal(config.get(key))
        if old != new:
            raise InputError(f"{path}: checkpoint was made with {key}={old!r}, this run has {key}={new!r}; "
                             "rerun with the same options or pass --no-resume")
    for key in sorted(set(architecture) | set(saved_arch)):
        old, new = _normal(saved_arch.get(key)), _normal(architecture.get(key))
        if old != new:
            raise InputError(f"{path}: checkpoint was made with a different {key.replace('_', ' ')} "
                             f"({old!r} vs {new!r}); rerun with the same teacher/processes or pass --no-resume")


# ---- the work folder: cdx marks what it owns and deletes only that -------------------------------------------
WORK_MARKER = ".cdx-work.json"
OWNED = ("checkpoints", "samples")  # what --no-resume removes (caches such as hf-datasets/ are kept)


def prepare_work_dir(work: Path, resume: bool) -> None:
    """Create/claim `work` (a marker file says cdx owns it); with resume=False clear cdx's training state in it.

    A folder cdx did not create (no marker) is used only when empty; --no-resume on it is refused, so a
    `--work-dir .` can never delete a user's files.
    """
    from cdx.errors import InputError

    work = Path(work)
    marker = work / WORK_MARKER
    if work.is_symlink():
        raise InputError(f"--work-dir {work}: is a symlink; give a real folder")
    if work.exists() and not work.is_dir():
        raise InputError(f"--work-dir {work}: exists and is not a folder")
    if work.exists() and not marker.is_file() and any(work.iterdir()):
        raise InputError(f"--work-dir {work}: not a cdx work folder (no {WORK_MARKER}) and not empty; "
                         "cdx writes and deletes only in folders it created — give a new or empty folder")
    work.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        marker.write_text(json.dumps({"created_by": "cdx distill", "owned": list(OWNED)}) + "\n", "utf-8")
    if not resume:
        for name in OWNED:
            path = work / name
            if path.is_symlink():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
