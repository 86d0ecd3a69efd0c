"""Drift metrics between an artifact's outputs and the float reference (images in [0, 1])."""

from __future__ import annotations

import math

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
