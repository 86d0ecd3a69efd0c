"""The parity gate: run an artifact in its runtime on the golden inputs and compare with eager PyTorch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cdx.benchmarks.metrics import max_abs_diff, psnr
from cdx.errors import ParityError

FLOAT_MIN_PSNR_DB = 35.0  # apple/ml-stable-diffusion's ABSOLUTE_MIN_PSNR
QUANT_MIN_PSNR_DB = 30.0


def min_psnr_for(precision: str) -> float:
    """Refusal threshold: 35 dB for float/fp16 artifacts, 30 dB for quantized ones."""
    return FLOAT_MIN_PSNR_DB if precision in ("fp32", "fp16") else QUANT_MIN_PSNR_DB


def measure(reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Max-abs and PSNR of the first output over all samples, plus the worst per-sample PSNR."""
    name = next(iter(reference[0]))
    ref = np.concatenate([r[name] for r in reference])
    out = np.concatenate([a[name] for a in actual])
    per_sample = [psnr(r[name], a[name]) for r, a in zip(reference, actual, strict=True)]
    return {
        "output": name,
        "samples": len(reference),
        "max_abs": max_abs_diff(ref, out),
        "psnr_db": _finite(psnr(ref, out)),
        "min_sample_psnr_db": _finite(min(per_sample)),
        "finite": bool(np.isfinite(out).all()),
    }


def _finite(value: float) -> float:
    """JSON has no infinity: identical outputs are reported as 999 dB."""
    return 999.0 if math.isinf(value) else value


def parity_gate(folder: Path, manifest: dict[str, Any], model: dict[str, Any], inputs: list[dict[str, np.ndarray]],
                reference: list[dict[str, np.ndarray]], force: bool = False) -> dict[str, Any]:
    """Measure the artifact `model` (already in `folder`) against `reference`; raise ParityError when it fails.

    Returns the record stored in the manifest under `parity`.
    """
    from cdx.runtimes.base import open_runner

    runner = open_runner(folder, manifest, model)
    runtime = runner.runtime
    actual = [runner.run(batch) for batch in inputs]
    record = {"runtime": runtime, "checked": "numeric", **measure(reference, actual)}
    threshold = min_psnr_for(model["precision"])
    record["min_psnr_db"] = threshold
    record["passed"] = record["finite"] and record["psnr_db"] >= threshold
    if not record["passed"] and not force:
        raise ParityError(
            f"{model['name']} ({model['target']} {model['precision']}): parity gate failed — PSNR "
            f"{record['psnr_db']:.1f} dB < {threshold:.0f} dB vs eager PyTorch"
            f"{'' if record['finite'] else ', output has inf/NaN'} (pass --force to keep it anyway)"
        )
    record["forced"] = not record["passed"]
    return record
