"""The parity gate: run an artifact in its runtime on the golden inputs and compare with eager PyTorch."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from cdx.errors import CdxError, ParityError
from cdx.metrics import conditioning_sensitivity, max_abs_diff, psnr, psnr_peak, ssim

FLOAT_MIN_PSNR_DB = 35.0  # apple/ml-stable-diffusion's ABSOLUTE_MIN_PSNR
QUANT_MIN_PSNR_DB = 30.0
MIN_CONDITIONING_RATIO = 0.5  # artifact's conditional change projected on the float model's / the float model's


def min_psnr_for(precision: str) -> float:
    """Refusal threshold: 35 dB for float/fp16 artifacts, 30 dB for quantized ones."""
    return FLOAT_MIN_PSNR_DB if precision in ("fp32", "fp16") else QUANT_MIN_PSNR_DB


def measure(reference: list[dict[str, np.ndarray]], actual: list[dict[str, np.ndarray]],
            output_spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Max-abs and PSNR of the first output over all samples, plus the worst per-sample PSNR."""
    name = next(iter(reference[0]))
    ref = np.concatenate([r[name] for r in reference])
    out = np.concatenate([a[name] for a in actual])
    peak = psnr_peak(output_spec or {"range": [0.0, 1.0]}, ref)
    per_sample = [psnr(r[name], a[name], peak) for r, a in zip(reference, actual, strict=True)]
    return {
        "output": name,
        "samples": len(reference),
        "max_abs": max_abs_diff(ref, out),
        "psnr_db": _finite(psnr(ref, out, peak)),
        "psnr_peak": peak,
        "min_sample_psnr_db": _finite(min(per_sample)),
        "finite": bool(np.isfinite(out).all()),
    }


def _finite(value: float) -> float:
    """JSON has no infinity: identical outputs are reported as 999 dB."""
    return 999.0 if math.isinf(value) else value


def is_quantized(precision: str) -> bool:
    """Anything below fp16 (int8, palettized, ...) gets the quantized checks: SSIM and conditioning sensitivity."""
    return precision not in ("fp32", "fp16")


def conditioning_problem(sensitivity: dict[str, float]) -> str | None:
    """Why the conditioning collapsed, or None. Judged on the aligned ratio (the artifact's change between two
    conditionings, projected on the float model's change): quantization noise that differs between the two runs
    inflates the mean |Δ| ratio but averages out of the projection, so only a kept conditional signal passes."""
    aligned = sensitivity["aligned_ratio"]
    if aligned >= MIN_CONDITIONING_RATIO:
        return None
    return (f"conditioning sensitivity {aligned:.2f}× the float model's along its conditional change "
            f"(< {MIN_CONDITIONING_RATIO}: the conditional signal collapsed; mean |Δ| ratio {sensitivity['ratio']:.2f}×)")


def _refuse(model: dict[str, Any], why: str) -> ParityError:
    return ParityError(f"{model['name']} ({model['target']} {model['precision']}): parity gate failed — {why} "
                       "(pass --force to keep it anyway)")


def _spec_gate(folder: Path, model: dict[str, Any], force: bool) -> dict[str, Any]:
    """Core ML off macOS: verify the spec (loads, I/O vs manifest, op histogram, size); no numbers are invented."""
    import sys

    from cdx.convert.coreml import spec_report
    from cdx.manifest import resolve_inside

    spec = spec_report(resolve_inside(folder, model["file"]), model)
    record = {"runtime": None, "checked": "spec", "reason": f"Core ML prediction needs macOS (this is {sys.platform})",
              "verified": ["spec loads (skip_model_load)", "input/output names, shapes, dtypes vs manifest",
                           "op histogram", "size"], **spec, "passed": spec["io_matches_manifest"]}
    if not record["passed"] and not force:
        raise _refuse(model, "Core ML spec does not match the manifest: " + "; ".join(spec["mismatches"]))
    record["forced"] = not record["passed"]
    return record


def _run_all(runner: Any, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    return [runner.run(batch) for batch in batches]


def parity_gate(folder: Path, manifest: dict[str, Any], model: dict[str, Any], inputs: list[dict[str, np.ndarray]],
                reference: list[dict[str, np.ndarray]], force: bool = False,
                contrast: tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]] | None = None) -> dict[str, Any]:
    """Measure the artifact `model` (already in `folder`) against `reference`; raise ParityError when it fails.

    `contrast` = (the same inputs with another conditioning, the float model's outputs on them): for quantized
    artifacts the gate compares how much the output moves between the two conditionings, artifact vs float.
    Artifacts that cannot run here are spec-checked (Core ML off macOS) or recorded as not checked, never guessed.
    Returns the record stored in the manifest under `parity`.
    """
    from cdx.runtimes.base import open_runner
    from cdx.runtimes.coreml import can_predict

    if model.get("export", {}).get("delegate") == "coreml":
        return {"runtime": None, "checked": "none", "passed": False, "forced": False,
                "reason": "Core ML-delegated .pte: the Linux ExecuTorch runtime has no CoreMLBackend; not numerically checked"}
    if model["format"] == "mlpackage" and not can_predict():
        return _spec_gate(folder, model, force)
    try:
        runner = open_runner(folder, manifest, model)
        actual = _run_all(runner, inputs)
    except CdxError:
        raise
    except Exception as exc:  # the runtime refused the artifact at load or execute: one line, never a traceback
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ParityError(f"{model['name']} ({model['target']} {model['precision']}): parity gate failed — the "
                          f"runtime could not run it: {first[:300]}") from None
    record = {"runtime": runner.runtime, "checked": "numeric", **measure(reference, actual, model["outputs"][0])}
    if model["format"] == "mlpackage":
        from cdx.convert.coreml import spec_report
        from cdx.manifest import resolve_inside

        record["spec"] = spec_report(resolve_inside(folder, model["file"]), model)
    threshold = min_psnr_for(model["precision"])
    record["min_psnr_db"] = threshold
    problems = []
    if record["psnr_db"] < threshold:
        problems.append(f"PSNR {record['psnr_db']:.1f} dB < {threshold:.0f} dB vs eager PyTorch")
    if not record["finite"]:
        problems.append("output has inf/NaN")
    if is_quantized(model["precision"]):
        name = record["output"]
        record["ssim"] = ssim(np.concatenate([r[name] for r in reference]), np.concatenate([a[name] for a in actual]),
                              peak=record["psnr_peak"])
        if contrast is not None:
            other_inputs, other_reference = contrast
            other_actual = _run_all(runner, other_inputs)
            sensitivity = conditioning_sensitivity(
                np.concatenate([r[name] for r in reference]), np.concatenate([r[name] for r in other_reference]),
                np.concatenate([a[name] for a in actual]), np.concatenate([a[name] for a in other_actual]))
            sensitivity["min_ratio"] = MIN_CONDITIONING_RATIO
            record["conditioning_sensitivity"] = sensitivity
            if problem := conditioning_problem(sensitivity):
                problems.append(problem)
    if problems and not force:
        raise _refuse(model, "; ".join(problems))
    record["passed"] = not problems
    record["forced"] = bool(problems)
    if problems:
        record["problems"] = problems
    return record
