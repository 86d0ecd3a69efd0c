"""Metrics every stage shares (core, so distill, convert and bench import one copy): image drift against a float
reference (images in [0, 1]: PSNR, SSIM, max |Δ|, conditioning sensitivity), timing percentiles, and distribution
distances between feature sets (Fréchet distance, KID, improved precision and recall)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute element difference."""
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB over the whole array; `inf` for identical arrays."""
    mse = float(np.mean((reference.astype(np.float64) - test.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak**2 / mse)


def psnr_peak(output_spec: dict[str, Any], reference: np.ndarray) -> float:
    """The PSNR peak of an output: its declared range (images: [0, 1] → 1), else the reference's peak-to-peak.

    Latent outputs (the step graph's `denoised`) have no fixed range; a peak of 1 would make their PSNR meaningless.
    """
    if "range" in output_spec:
        low, high = output_spec["range"]
        return float(high - low)
    return float(np.ptp(reference)) or 1.0


def percentile_stats(samples_ms: list[float]) -> dict[str, float]:
    """Median, p90, p99, mean, min, max and IQR of a list of timings (ms)."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0:
        raise ValueError("no timing samples")
    q25, q50, q75, q90, q99 = np.percentile(arr, [25, 50, 75, 90, 99])
    return {
        "median_ms": float(q50),
        "p90_ms": float(q90),
        "p99_ms": float(q99),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "max_ms": float(arr.max()),
        "iqr_ms": float(q75 - q25),
        "runs": int(arr.size),
    }


def ssim(reference: np.ndarray, test: np.ndarray, peak: float = 1.0, window: int = 7) -> float:
    """Mean structural similarity of NCHW (or HW) images in [0, peak]: uniform `window`² windows per channel,
    the constants of Wang et al. 2004 (K1 = 0.01, K2 = 0.03), sample covariance as in scikit-image."""
    from scipy.ndimage import uniform_filter

    ref = reference.astype(np.float64)
    out = test.astype(np.float64)
    axes = (ref.ndim - 2, ref.ndim - 1)
    size = [1] * ref.ndim
    size[axes[0]] = size[axes[1]] = window

    def blur(x: np.ndarray) -> np.ndarray:
        return uniform_filter(x, size=size, mode="reflect")

    correction = window * window / (window * window - 1)
    mu_r, mu_o = blur(ref), blur(out)
    var_r = (blur(ref * ref) - mu_r * mu_r) * correction
    var_o = (blur(out * out) - mu_o * mu_o) * correction
    cov = (blur(ref * out) - mu_r * mu_o) * correction
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    index = ((2 * mu_r * mu_o + c1) * (2 * cov + c2)) / ((mu_r**2 + mu_o**2 + c1) * (var_r + var_o + c2))
    pad = window // 2
    crop = [slice(None)] * ref.ndim
    crop[axes[0]] = crop[axes[1]] = slice(pad, -pad or None)
    return float(index[tuple(crop)].mean())


def conditioning_sensitivity(reference_a: np.ndarray, reference_b: np.ndarray,
                             test_a: np.ndarray, test_b: np.ndarray) -> dict[str, float]:
    """How far outputs move when only the conditioning changes (same noise), artifact vs float model.

    A ratio near 1 means the artifact kept the conditional signal; near 0 means it collapsed (every prompt/label gives
    the same image, the failure users report after quantization).
    """
    d_ref = reference_a.astype(np.float64) - reference_b.astype(np.float64)
    d_out = test_a.astype(np.float64) - test_b.astype(np.float64)
    ref = float(np.mean(np.abs(d_ref)))
    got = float(np.mean(np.abs(d_out)))
    energy = float(np.sum(d_ref * d_ref))
    return {
        "float_mean_abs_change": ref,
        "artifact_mean_abs_change": got,
        "ratio": got / ref if ref > 0 else float("nan"),
        # projection of the artifact's change on the float model's: uncorrelated quantization noise does not inflate it
        "aligned_ratio": float(np.sum(d_out * d_ref)) / energy if energy > 0 else float("nan"),
    }


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa-μb‖² + Tr(Σa + Σb - 2(ΣaΣb)^½) between two feature sets (rows = samples), with the trace of the square
    root from the eigenvalues of ΣaΣb (FID when the features are Inception's, FD under any other network)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(cov_a @ cov_b)
    tr_sqrt = float(np.sqrt(np.clip(eig.real, 0, None)).sum())
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * tr_sqrt)


def kid_subset_size(n: int) -> int:
    """Subsets of half the samples, at most 1,000 (as torch-fidelity): subsets as large as n would all be the same
    set and show no spread."""
    return max(2, min(1000, n // 2))


def kid(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int | None = None, seed: int = 0) -> dict[str, float]:
    """Kernel Inception distance (Bińkowski et al. 2018): the unbiased MMD² under the cubic polynomial kernel
    k(x, y) = (x·y / d + 1)³, averaged over random subsets; the spread across subsets says how far to trust a
    difference. Unlike FD it is unbiased at small n, so two models can be compared at the n a run affords.

    Returns {"mean", "std", "subsets", "subset_size"}; subset_size defaults to `kid_subset_size` of the smaller set
    and is capped by it.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"KID needs two (n, d) feature sets of the same d, got {a.shape} and {b.shape}")
    m = min(subset_size or kid_subset_size(min(len(a), len(b))), len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per side, got {len(a)} and {len(b)}")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        off = m * (m - 1)
        values.append((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2 * kxy.mean())
    arr = np.asarray(values)
    return {"mean": float(arr.mean()), "std": float(arr.std()), "subsets": subsets, "subset_size": m}


def _kth_neighbour_radii(x: np.ndarray, k: int, block: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row (itself excluded)."""
    radii = np.empty(len(x))
    for start in range(0, len(x), block):
        d = _pairwise_distances(x[start:start + block], x)
        radii[start:start + block] = np.partition(d, k, axis=1)[:, k]  # column 0 of the sorted row is the point itself
    return radii


def _pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.clip(squared, 0, None))


def _share_inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int) -> float:
    """The share of `points` inside at least one ball (centre, radius)."""
    inside = 0
    for start in range(0, len(points), block):
        inside += int((_pairwise_distances(points[start:start + block], centres) <= radii[None]).any(1).sum())
    return inside / len(points)


def precision_recall(samples: np.ndarray, real: np.ndarray, k: int = 3, block: int = 1024) -> dict[str, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls around
    its points reaching their k-th nearest neighbour; precision is the share of samples inside the real manifold
    (fidelity), recall the share of real points inside the samples' manifold (diversity). FID folds both into one
    number; these two say which one a model lacks. Returns {"precision", "recall", "k"}.
    """
    a, b = np.asarray(samples, dtype=np.float64), np.asarray(real, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"precision/recall need two (n, d) feature sets of the same d, got {a.shape} and {b.shape}")
    if not 1 <= k < min(len(a), len(b)):
        raise ValueError(f"precision/recall with k = {k} need more than k samples per side, got {len(a)} and {len(b)}")
    precision = _share_inside(a, b, _kth_neighbour_radii(b, k, block), block)
    recall = _share_inside(b, a, _kth_neighbour_radii(a, k, block), block)
    return {"precision": precision, "recall": recall, "k": k}
