"""Golden data: seeded inputs and the float model's outputs, as raw little-endian files any runtime can read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.distill.generator import ExportableGraph

# numpy-only helpers live in the core (cdx.golden_io, no torch import); re-exported for the callers of this module
from cdx.golden_io import GOLDEN_DIR, contrast_batches, manifest_inputs, read_golden, stack, unstack  # noqa: F401
from cdx.images import save_image_grid


def seeded_batches(generator: ExportableGraph, seeds: list[int], num_classes: int | None) -> list[dict[str, np.ndarray]]:
    """One input dict per seed; class labels cycle through the classes so conditioning is exercised."""
    batches = []
    for i, seed in enumerate(seeds):
        label = i % num_classes if num_classes else 0
        tensors = generator.example_inputs(seed=seed, class_label=label)
        batches.append({k: v.numpy() for k, v in tensors.items()})
    return batches


@torch.inference_mode()
def eager_outputs(generator: ExportableGraph, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The float PyTorch generator's outputs on each input dict."""
    name = generator.output_specs()[0].name
    return [{name: generator(*(torch.from_numpy(v) for v in batch.values())).numpy()} for batch in batches]


def write_golden(folder: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Write `<prefix>.<tensor>.bin` files (little-endian) and PNGs of image outputs; return the manifest entry."""
    base = folder / GOLDEN_DIR
    base.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"inputs": {}, "outputs": {}}
    for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
        for name, array in tensors.items():
            rel = f"{GOLDEN_DIR}/{prefix}.{kind[:-1]}.{name}.bin"
            array.astype(array.dtype.newbyteorder("<"), copy=False).tofile(folder / rel)
            entry[kind][name] = rel
    for name, array in outputs.items():
        if array.ndim == 4 and array.shape[1] == 3:
            save_image_grid(array, folder / GOLDEN_DIR / f"{prefix}.{name}.png")
    return entry


CALIBRATION_SEED_BASE = 10_000  # far from the golden seeds, so calibration never sees the parity inputs


def calibration_inputs(generator: ExportableGraph, count: int, num_classes: int | None,
                       guidance: tuple[float, ...] = (2.0, 4.0, 8.0, 12.0)) -> list[tuple[torch.Tensor, ...]]:
    """Seeded generator inputs for static quantization: fresh noise, every class label, a spread of guidance scales.

    The generator's input *is* seeded noise (+ conditioning), so these are the real input distribution.
    """
    batches = []
    for i in range(count):
        label = i % num_classes if num_classes else 0
        tensors = generator.example_inputs(seed=CALIBRATION_SEED_BASE + i, class_label=label,
                                           guidance_scale=guidance[i % len(guidance)])
        batches.append(tuple(tensors.values()))
    return batches
