"""Real-data reference features, shipped as an asset so `cdx evaluate`, `cdx bench` and `cdx demo` score distribution
quality (Inception FID/KID, classifier FD) with no dataset installed; the dataset is only needed to recompute them.

Features, not just mean/covariance: KID needs the samples, and a smaller matched n takes the first n rows.
Stored fp16 (≈ 4 MB per 1,000 × 2048): the FID they give differs from fp32 features by < 0.01 (checked on write).

Recompute: `python -m cdx.benchmarks.reference_stats` (Fashion-MNIST from Debian's `dataset-fashion-mnist`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cdx.defaults import ASSETS
from cdx.errors import InputError, UnsupportedError

REFERENCE_PATH = ASSETS / "reference" / "fashion_mnist.safetensors"
RECOMPUTE = "python -m cdx.benchmarks.reference_stats"
PREPROCESSING = ("Fashion-MNIST 28×28 uint8 → [-1, 1], centre-padded to 32×32 with -1 (cdx.distill.data.load_fashion_mnist, "
                 "the teacher's training input), mapped to [0, 1]; the first n images of the split, in file order")


@dataclass(frozen=True)
class ReferenceFeatures:
    """One split's real-image features: rows are images, in the dataset's order."""

    split: str
    classifier: np.ndarray  # (n, 128)
    labels: np.ndarray  # (n,)
    inception: np.ndarray | None  # (n, 2048); None when the file has none
    metadata: dict[str, Any]

    def __len__(self) -> int:
        return len(self.labels)

    def first(self, n: int) -> ReferenceFeatures:
        """The first n images (a matched n for FID, whose bias depends on n)."""
        if n > len(self):
            raise InputError(f"the reference has {len(self)} {self.split} images, {n} asked: "
                             f"recompute with `{RECOMPUTE} --n {n}`")
        inc = None if self.inception is None else self.inception[:n]
        return ReferenceFeatures(self.split, self.classifier[:n], self.labels[:n], inc, self.metadata)


def classifier_sha256() -> str:
    """sha256 of the shipped classifier: reference features taken with other weights are stale."""
    from cdx.atomic import sha256_file
    from cdx.benchmarks.quality import CLASSIFIER_PATH

    return sha256_file(CLASSIFIER_PATH)


def load_reference(split: str = "test", path: Path = REFERENCE_PATH, inception_sha256: str | None = None) -> ReferenceFeatures:
    """Read one split; refuses (one line) a missing file, a missing split, or features from other network weights."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UnsupportedError(f"reference statistics missing: {path} (recompute with `{RECOMPUTE}`, needs Fashion-MNIST)")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            meta = json.loads((handle.metadata() or {}).get("cdx_reference", "{}"))
            keys = set(handle.keys())
            if f"{split}/classifier" not in keys:
                raise InputError(f"{path}: no '{split}' split (has {', '.join(sorted(meta.get('splits', {})))})")
            tensors = {k.split("/", 1)[1]: handle.get_tensor(k) for k in keys if k.startswith(f"{split}/")}
    except (SafetensorError, OSError, ValueError) as err:  # a truncated or corrupt file
        raise InputError(f"{path}: unreadable reference statistics ({err}); recompute with `{RECOMPUTE}`") from None
    if meta.get("classifier", {}).get("sha256") != classifier_sha256():
        raise InputError(f"{path}: classifier features are from other classifier weights; recompute with `{RECOMPUTE}`")
    inception = tensors.get("inception")
    if inception is not None and inception_sha256 and meta.get("inception", {}).get("sha256") != inception_sha256:
        raise InputError(f"{path}: Inception features are from other Inception weights; recompute with `{RECOMPUTE}`")
    return ReferenceFeatures(split, tensors["classifier"].astype(np.float64), tensors["labels"].astype(np.int64),
                             None if inception is None else inception.astype(np.float64), meta)


def compute_split(split: str, n: int, data_dir: str | Path | None = None, inception=None,
                  progress=None) -> dict[str, np.ndarray]:
    """Features of the first n images of a split, exactly as the reference file stores them (before fp16)."""
    from cdx.benchmarks.quality import classifier_features, load_classifier
    from cdx.distill.data import load_fashion_mnist

    data = load_fashion_mnist(data_dir, split=split, limit=n)
    images01 = (data.images + 1) / 2
    classifier, _ = classifier_features(load_classifier(), images01)
    out = {"classifier": classifier, "labels": data.labels.numpy().astype(np.int64)}
    if inception is not None:
        out["inception"] = inception(images01, progress=progress)
    return out


def _source_sha256(data_dir: str | Path | None, split: str) -> str | None:
    """sha256 of the split's IDX image file (provenance in the metadata)."""
    from cdx.atomic import sha256_file
    from cdx.distill.data import default_data_dir

    stem = f"{'train' if split == 'train' else 't10k'}-images-idx3-ubyte"
    root = Path(data_dir) if data_dir else default_data_dir()
    found = [root / name for name in (f"{stem}.gz", stem) if (root / name).is_file()]
    return sha256_file(found[0]) if found else None


def write_reference(path: Path, splits: dict[str, dict[str, np.ndarray]], inception_sha256: str | None,
                    source_sha256: dict[str, str | None]) -> Path:
    """One safetensors file: `<split>/inception` (fp16), `<split>/classifier` (fp16), `<split>/labels`, + metadata."""
    from safetensors.numpy import save

    from cdx.atomic import atomic_write_bytes
    from cdx.benchmarks.quality import INCEPTION_PACKAGE, INCEPTION_PROTOCOL

    tensors, meta_splits = {}, {}
    for split, arrays in splits.items():
        for key, value in arrays.items():
            tensors[f"{split}/{key}"] = np.ascontiguousarray(value.astype(np.int64 if key == "labels" else np.float16))
        meta_splits[split] = {"n": len(arrays["labels"]), "images": f"first {len(arrays['labels'])} in file order",
                              "source_sha256": source_sha256.get(split)}
    meta = {"dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)", "splits": meta_splits, "preprocessing": PREPROCESSING,
            "dtype": "float16", "command": RECOMPUTE,
            "classifier": {"path": "cdx/assets/fashion_classifier.safetensors", "sha256": classifier_sha256(), "dim": 128}}
    if inception_sha256:
        meta["inception"] = {"weights": f"{INCEPTION_PACKAGE} default_1.pt", "sha256": inception_sha256, "dim": 2048,
                             "protocol": INCEPTION_PROTOCOL}
    atomic_write_bytes(path, save(tensors, metadata={"cdx_reference": json.dumps(meta, ensure_ascii=False)}))
    return path


def main(argv: list[str] | None = None) -> None:
    """Recompute the shipped reference features from the dataset (≈ 0.2–0.5 s per image for Inception on 2 cores)."""
    from cdx.benchmarks.quality import InceptionFeatures
    from cdx.metrics import frechet_distance

    parser = argparse.ArgumentParser(prog=RECOMPUTE, description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="images per split (the first n)")
    parser.add_argument("--splits", default="test,train", help="comma-separated: test (the reference), train (the floor row)")
    parser.add_argument("--data", default=None, help="Fashion-MNIST IDX folder (default: $CDX_FASHION_MNIST or Debian's)")
    parser.add_argument("--out", type=Path, default=REFERENCE_PATH)
    parser.add_argument("--no-inception", action="store_true", help="classifier features only (fast)")
    args = parser.parse_args(argv)
    inception = None if args.no_inception else InceptionFeatures()
    splits = {}
    for split in [s.strip() for s in args.splits.split(",") if s.strip()]:
        print(f"{split}: {args.n} images", flush=True)
        splits[split] = compute_split(split, args.n, args.data, inception,
                                      progress=lambda d, n: print(f"  Inception {d}/{n}", flush=True) if d % 250 == 0 else None)
    sources = {s: _source_sha256(args.data, s) for s in splits}
    path = write_reference(args.out, splits, inception.sha256 if inception else None, sources)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    if inception and {"test", "train"} <= splits.keys():
        a, b = splits["train"]["inception"], splits["test"]["inception"]
        fid32 = frechet_distance(a, b)
        fid16 = frechet_distance(a.astype(np.float16).astype(np.float64), b.astype(np.float16).astype(np.float64))
        print(f"real train vs test Inception FID at n={args.n}: {fid32:.2f} (fp32 features), {fid16:.2f} (fp16 as stored)")


if __name__ == "__main__":
    main()
