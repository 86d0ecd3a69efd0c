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
                        record: dict[str, Any], overwrite: bool, info: dict[str, Any] | None = None) -> None:
    """`source` copied to `out` (atomically: nothing is left half-written) with `component/` replaced by `model`
    (safetensors) and `record` kept under `stage` in cdx.json (`info`, or the copied cdx.json when None)."""
    with atomic_directory(Path(out), overwrite=overwrite) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(component))
        model.save_pretrained(staging / component, safe_serialization=True)
        info_path = staging / "cdx.json"
        if info is None:
            info = json.loads(info_path.read_text("utf-8")) if info_path.is_file() else {}
        record_stage(info, stage, record)
        info_path.write_text(json.dumps(info, indent=2) + "\n", "utf-8")
