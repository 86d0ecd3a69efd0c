"""Golden data files without torch: read them back, stack and unstack per-seed input dicts (numpy only).

Kept apart from `golden.py` (which builds golden data with the PyTorch model) so runtimes and bench workers that
only read golden files do not import torch: their peak memory is then the runtime's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GOLDEN_DIR = "golden"


def stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-seed dicts along the batch axis (the golden file layout)."""
    return {key: np.concatenate([b[key] for b in batches], axis=0) for key in batches[0]}


def unstack(stacked: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Inverse of `stack`: one batch-1 dict per sample."""
    count = next(iter(stacked.values())).shape[0]
    return [{key: value[i : i + 1] for key, value in stacked.items()} for i in range(count)]


def read_golden(folder: Path, model: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a model's golden inputs and outputs back, shaped as [count, *shape[1:]]."""
    from cdx.manifest import resolve_inside

    golden = model["golden"]
    count = len(golden["seeds"])

    def load(specs: list[dict[str, Any]], files: dict[str, str]) -> dict[str, np.ndarray]:
        out = {}
        for spec in specs:
            path = resolve_inside(folder, files[spec["name"]])
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            out[spec["name"]] = np.fromfile(path, dtype=dtype).reshape(count, *spec["shape"][1:]).astype(spec["dtype"])
        return out

    return load(model["inputs"], golden["inputs"]), load(model["outputs"], golden["outputs"])
