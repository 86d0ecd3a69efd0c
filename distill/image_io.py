"""Decode one training image into the teacher's input: its VAE's channel count, resized and center-cropped.

The transform is the one diffusers' training scripts apply (`Resize(resolution)` on the shorter side, bilinear, then
`CenterCrop(resolution)`), so a student sees its teacher's kind of pixels. Transparent images are composited on white
(emoji and icon sets are RGBA); grey images for an RGB VAE are converted by PIL (grey copied to R, G and B).
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from cdx.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class UnreadableImage(InputError):
    """An image file (or WebDataset member) that PIL cannot decode; `name` says which one."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: unreadable image ({reason})")
        self.name = name


def _pil_mode(channels: int) -> str:
    if channels == 3:
        return "RGB"
    if channels == 1:
        return "L"
    raise InputError(f"the teacher's VAE takes {channels}-channel images; cdx reads 1 (grey) or 3 (RGB) channels")


def decode_image(source: bytes | str | os.PathLike[str], name: str, size: int, channels: int) -> torch.Tensor:
    """(channels, size, size) float32 in [-1, 1] from encoded bytes or a file path; UnreadableImage names `name`."""
    from PIL import Image, UnidentifiedImageError

    mode = _pil_mode(channels)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else Path(source)) as img:
            img.load()
            pixels = _to_mode(img, mode)
    except UnidentifiedImageError:
        raise UnreadableImage(name, "not an image format PIL recognises") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data: PIL raises all of these
        raise UnreadableImage(name, type(exc).__name__ + (f": {exc}" if str(exc) else "")) from None
    pixels = resize_center_crop(pixels, size)
    array = np.asarray(pixels, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array[None] if channels == 1 else array.transpose(2, 0, 1).copy())


def _to_mode(img, mode: str):
    from PIL import Image

    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert(mode)


def resize_center_crop(img, size: int):
    """Shorter side to `size` (bilinear, antialiased), then the central size×size square."""
    from PIL import Image

    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((new_w, new_h), Image.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img
