"""Image datasets for the embedded teacher: Fashion-MNIST IDX files (Debian `dataset-fashion-mnist`) or a folder.

Images come back as float tensors in [-1, 1], shape (N, C, H, W), padded/resized to `size`, with int64 labels.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cdx.errors import InputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot"]
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class ImageDataset:
    """Images in [-1, 1] and their class labels."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise InputError(f"{path}: not an unsigned-byte IDX file")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def default_data_dir() -> Path:
    """$CDX_FASHION_MNIST, else the Debian package's folder."""
    return Path(os.environ.get("CDX_FASHION_MNIST", FASHION_MNIST_DIR))


def _find(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    raise InputError(f"{folder}: missing {stem}(.gz) — install Debian's dataset-fashion-mnist or pass --data")


def _pad_to(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return torch.nn.functional.pad(images, (left, size - w - left, top, size - h - top), value=-1.0)
    return torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def load_fashion_mnist(folder: str | Path | None = None, split: str = "train", size: int = 32,
                       limit: int | None = None) -> ImageDataset:
    """Fashion-MNIST from IDX files: `split` is 'train' (60k) or 'test' (10k); 28x28 padded to `size`."""
    root = Path(folder) if folder else default_data_dir()
    if not root.is_dir():
        raise InputError(f"Fashion-MNIST folder not found: {root} (apt-get install dataset-fashion-mnist, or pass --data)")
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_find(root, f"{prefix}-images-idx3-ubyte"))
    labels = _read_idx(_find(root, f"{prefix}-labels-idx1-ubyte"))
    if limit:
        images, labels = images[:limit], labels[:limit]
    tensor = torch.from_numpy(images.astype(np.float32) / 127.5 - 1.0)[:, None]
    return ImageDataset(_pad_to(tensor, size), torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES))


def load_image_folder(folder: str | Path, size: int = 32, channels: int = 1) -> ImageDataset:
    """A folder of images, one subfolder per class (or flat: one class). Resized to `size`."""
    from PIL import Image

    root = Path(folder)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) or [root.name]
    images, labels = [], []
    for index, name in enumerate(classes):
        base = root / name if (root / name).is_dir() else root
        for file in sorted(base.iterdir()):
            if file.suffix.lower() in _IMAGE_SUFFIXES:
                with Image.open(file) as img:
                    img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.BICUBIC)
                    array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
                images.append(array[None] if channels == 1 else array.transpose(2, 0, 1))
                labels.append(index)
    if not images:
        raise InputError(f"{root}: no images found (expected class subfolders of .png/.jpg files)")
    return ImageDataset(torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64), classes)


def load_dataset(data: str | Path | None = None, split: str = "train", size: int = 32, limit: int | None = None) -> ImageDataset:
    """Fashion-MNIST IDX folder (default) or a folder of class subfolders."""
    root = Path(data) if data else default_data_dir()
    if not root.is_dir():
        raise InputError(f"image folder not found: {root} (no such folder; install dataset-fashion-mnist or pass --data)")
    if any(p.name.endswith("idx3-ubyte.gz") or p.name.endswith("idx3-ubyte") for p in root.iterdir()):
        return load_fashion_mnist(root, split, size, limit)
    dataset = load_image_folder(root, size)
    if limit:
        dataset = ImageDataset(dataset.images[:limit], dataset.labels[:limit], dataset.class_names)
    return dataset
