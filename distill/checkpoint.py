"""Training checkpoints that resume exactly: tensors in safetensors, optimizer state loaded with weights_only.

A checkpoint folder is written under a temp name and renamed, so a kill -9 never leaves a half checkpoint;
the newest `keep` checkpoints are kept.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cdx.atomic import atomic_directory


def save_checkpoint(root: Path, step: int, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    rng: torch.Generator, meta: dict[str, Any], keep: int = 2) -> Path:
    """Write `root/checkpoint-<step>` atomically; prune older ones."""
    target = root / f"checkpoint-{step:07d}"
    with atomic_directory(target, overwrite=True) as staging:
        for name, module in modules.items():
            state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
            save_file(state, staging / f"{name}.safetensors")
        torch.save(optimizer.state_dict(), staging / "optimizer.pt")
        save_file({"rng": rng.get_state()}, staging / "rng.safetensors")
        (staging / "state.json").write_text(json.dumps({"step": step, **meta}, indent=2), "utf-8")
    for old in sorted(root.glob("checkpoint-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def latest_checkpoint(root: Path) -> Path | None:
    """The newest complete checkpoint folder, if any."""
    done = [p for p in sorted(root.glob("checkpoint-*")) if (p / "state.json").is_file()]
    return done[-1] if done else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer,
                    rng: torch.Generator) -> dict[str, Any]:
    """Restore modules, optimizer and RNG; returns the saved state (with `step`)."""
    for name, module in modules.items():
        module.load_state_dict(load_file(path / f"{name}.safetensors"))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    rng.set_state(load_file(path / "rng.safetensors")["rng"])
    return json.loads((path / "state.json").read_text("utf-8"))
