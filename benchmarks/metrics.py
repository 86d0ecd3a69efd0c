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
