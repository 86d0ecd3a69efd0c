"""The one image-grid writer: NCHW images in [0, 1] (1 or 3 channels, numpy or torch) → one PNG, written atomically.

Used by distillation grids, the converter's golden PNGs, `cdx evaluate` and the bench, so every grid rounds and
lays out pixels the same way.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from cdx.atomic import atomic_write_bytes


def grid_pixels(images: Any, columns: int = 8) -> np.ndarray:
    """uint8 pixels of the grid (H, W) for one channel, (H, W, 3) for three; empty cells are white."""
    arr = np.asarray(images.detach().cpu().float().numpy() if hasattr(images, "detach") else images, dtype=np.float32)
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"an image grid needs NCHW images with 1 or 3 channels, got shape {list(arr.shape)}")
    n, c, h, w = arr.shape
    cols = max(1, min(columns, n))
    rows = (n + cols - 1) // cols
    grid = np.ones((rows * h, cols * w, c), dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, cols)
        grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = arr[i].transpose(1, 2, 0)
    pixels = (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)
    return pixels[..., 0] if c == 1 else pixels


def save_image_grid(images: Any, path: str | Path, columns: int = 8) -> Path:
    """Write the grid of `images` as a PNG at `path` (parent folders created); returns the path."""
    from PIL import Image

    path = Path(path)
    buffer = io.BytesIO()
    Image.fromarray(grid_pixels(images, columns)).save(buffer, format="PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path
