"""Write a pipeline folder that is a copy of another with one component replaced and the step recorded in cdx.json
(decoder fine-tunes, UNet continuations, deepening: each a stage the model cards list)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

from cdx.atomic import atomic_directory
from cdx.distill.model_card import record_stage


def copy_with_component(source: Path, out: Path, component: str, model: torch.nn.Module, stage: str,
                        record: dict[str, Any], overwrite: bool, info: dict[str, Any] | None = None,
                        keep_replaced_as: str | None = None) -> None:
    """`source` copied to `out` (atomically: nothing is left half-written) with `component/` replaced by `model`
    (safetensors) and `record` kept under `stage` in cdx.json (`info`, or the copied cdx.json when None). A student's
    `sample_grid.png` is drawn again from the new folder: the copied one shows what the old component made.
    `keep_replaced_as`: the source's old `component/` stays in the copy under that name (and in model_index.json),
    unless the source already has one."""
    with atomic_directory(Path(out), overwrite=overwrite) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(component))
        if keep_replaced_as and not (staging / keep_replaced_as).exists():
            shutil.copytree(source / component, staging / keep_replaced_as)
            register_component(staging, keep_replaced_as, component)
        model.save_pretrained(staging / component, safe_serialization=True)
        info_path = staging / "cdx.json"
        if info is None:
            info = json.loads(info_path.read_text("utf-8")) if info_path.is_file() else {}
        record_stage(info, stage, record)
        info_path.write_text(json.dumps(info, indent=2) + "\n", "utf-8")
        if (staging / GRID_FILE).is_file():
            redraw_sample_grid(staging, info)


GRID_FILE = "sample_grid.png"


def register_component(folder: Path, name: str, like: str) -> None:
    """List `name/` in the folder's model_index.json with the library and class of its `like/` entry, so
    `DiffusionPipeline.from_pretrained` loads it."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return
    index = json.loads(index_path.read_text("utf-8"))
    if like in index:
        index[name] = index[like]
        index_path.write_text(json.dumps(index, indent=2) + "\n", "utf-8")


def redraw_sample_grid(folder: Path, info: dict[str, Any]) -> Path:
    """The student folder's grid as `cdx distill` draws it (`ConsistencyDistiller.sample_grid`): one-step samples,
    GRID_PER_CLASS per class, seed 0, at the middle of its guidance range."""
    from cdx.distill.sampling import GRID_PER_CLASS, sample_grid

    low, high = info.get("guidance_range", (3.0, 3.0))
    return sample_grid(folder, folder / GRID_FILE, steps=1, per_class=GRID_PER_CLASS, guidance=(low + high) / 2)
