"""Golden data: seeded inputs and the float model's outputs, as raw little-endian files any runtime can read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx import rng
from cdx.convert.generator import ExportableGraph

# numpy-only helpers live in golden_io (no torch import); re-exported for the callers of this module
from cdx.convert.golden_io import GOLDEN_DIR, read_golden, stack, unstack  # noqa: F401


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
            save_png_grid(array, folder / GOLDEN_DIR / f"{prefix}.{name}.png")
    return entry


def save_png_grid(images: np.ndarray, path: Path, columns: int = 8) -> None:
    """Save NCHW images in [0, 1] as one PNG grid."""
    import matplotlib.image

    n, c, h, w = images.shape
    cols = min(columns, n)
    rows = (n + cols - 1) // cols
    grid = np.ones((rows * h, cols * w, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = images[i].transpose(1, 2, 0)
    matplotlib.image.imsave(path, np.clip(grid, 0, 1))


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


def contrast_batches(input_names: list[str], batches: list[dict[str, np.ndarray]],
                     num_classes: int | None) -> list[dict[str, np.ndarray]] | None:
    """The same noise with a different conditioning (next class label / another text embedding), or None if unconditional.

    The parity gate compares how far outputs move between the two conditionings in the artifact vs the float model,
    so a quantized artifact whose conditional signal collapsed is caught even when its PSNR looks fine.
    """
    if "class_label" in input_names and num_classes and num_classes > 1:
        return [{**b, "class_label": (b["class_label"] + 1) % num_classes} for b in batches]
    if "text_embedding" in input_names:
        out = []
        for i, b in enumerate(batches):
            other = rng.normal(CALIBRATION_SEED_BASE * 2 + i, b["text_embedding"].shape, input_names.index("text_embedding"))
            out.append({**b, "text_embedding": other})
        return out
    return None


def manifest_inputs(model: dict[str, Any], manifest: dict[str, Any], seeds: list[int]) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for a manifest entry, built from the manifest alone (the rule in `manifest["rng"]`).

    Random tensors are drawn from cdx-normal-v1 (`cdx/rng.py`) with stream = input index; class labels cycle with the
    seed's index; w is the manifest's default; step-graph constants are the first schedule step. For the generator
    this is exactly what `example_inputs` gives, so any runtime (or app) can regenerate the golden inputs.
    """
    conditioning = manifest["conditioning"]
    first_step = manifest["schedule"]["steps"][0]
    batches = []
    for i, seed in enumerate(seeds):
        batch: dict[str, np.ndarray] = {}
        for stream, spec in enumerate(model["inputs"]):
            name, shape, dtype = spec["name"], spec["shape"], np.dtype(spec["dtype"])
            if name == "class_label":
                value = np.full(shape, i % (conditioning.get("num_classes") or 1))
            elif name == "guidance_scale":
                value = np.full(shape, conditioning["guidance"].get("default", 8.0))
            elif name in first_step:
                value = np.full(shape, first_step[name])
            else:
                value = rng.normal(seed, shape, stream)
            batch[name] = value.astype(dtype)
        batches.append(batch)
    return batches
