"""Sensitivity-guided mixed precision for int8 (ONNX Runtime's quantizers, ExecuTorch PT2E): keep the few nodes or
blocks that break quality in float.

Post-training int8 of a small diffusion UNet can lose a few dB spread over a handful of convolutions (on the embedded
Fashion-MNIST student: 26.9 dB with every Conv/MatMul quantized, 31.3 dB with the 4 most sensitive convs kept float).
The search runs only when the fully quantized graph misses the target on the calibration inputs (never the parity
gate's seeds): it ranks each candidate node by the PSNR gained when it alone stays float, then keeps the top 1, 2,
3, 4, 6, 9, … float until the target is met. The excluded nodes are recorded in the manifest.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cdx.metrics import psnr

Quantize = Callable[[list[str], Path], None]  # (nodes kept float, output path) -> writes the quantized model


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, feed)[0] for feed in feeds])


def quantizable_nodes(path: Path, op_types: tuple[str, ...]) -> list[str]:
    """Names of the nodes of `op_types` in graph order (the search's candidates)."""
    import onnx

    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type in op_types and n.name]


MIXED_PRECISION_MARGIN_DB = 1.5  # the search aims this far above the gate, since it measures other inputs than the gate


def search_target(output_range: tuple[float, float] | None) -> tuple[float, float | None]:
    """(PSNR target, peak) for the mixed-precision search: the quantized gate + margin, on the output's range."""
    from cdx.convert.parity import QUANT_MIN_PSNR_DB

    peak = float(output_range[1] - output_range[0]) if output_range else None
    return QUANT_MIN_PSNR_DB + MIXED_PRECISION_MARGIN_DB, peak


def keep_float_search(score: Callable[[list[str]], float], candidates: list[str], target_db: float,
                      max_float_fraction: float = 0.25) -> dict[str, Any]:
    """The fewest candidates to keep float so that `score(kept)` (a PSNR) reaches `target_db`; backend-independent.
    At most `max_float_fraction` of them stay float; the record says whether the target was reached (more is not
    always better: for ExecuTorch int8 of a 5-point-grid student, 4 of 19 float blocks gave 31.2 dB and 9 gave 31.3)."""
    full = score([])
    record: dict[str, Any] = {"target_psnr_db": target_db, "psnr_all_quantized_db": full, "kept_float": [], "psnr_db": full}
    if full >= target_db or not candidates:
        return record
    ranked = sorted(((score([c]), i, c) for i, c in enumerate(candidates)), reverse=True)
    record["candidates_ranked"] = len(ranked)
    record["most_sensitive"] = {c: round(gain, 2) for gain, _, c in ranked[:5]}  # PSNR with that one kept float
    limit = max(1, int(len(candidates) * max_float_fraction))
    count = 1
    while True:
        kept = [c for _, _, c in ranked[:count]]
        reached = score(kept)
        record.update(kept_float=kept, psnr_db=reached, reached_target=reached >= target_db)
        if reached >= target_db or count >= limit:
            return record
        count = min(max(count + 1, count * 3 // 2), limit)


def sensitivity_search(quantize: Quantize, float_model: Path, candidates: list[str], feeds: list[dict[str, np.ndarray]],
                       target_db: float, peak: float | None = None) -> dict[str, Any]:
    """ONNX: quantize with the fewest float nodes that reach `target_db` on `feeds` (measured with ONNX Runtime)."""
    reference = _outputs(float_model, feeds)
    peak = peak or float(np.ptp(reference)) or 1.0
    with tempfile.TemporaryDirectory(prefix="cdx-mixed-") as tmp:
        trial = Path(tmp) / "trial.onnx"

        def score(excluded: list[str]) -> float:
            quantize(excluded, trial)
            return psnr(reference, _outputs(trial, feeds), peak)

        return {**keep_float_search(score, candidates, target_db), "measured_on": f"{len(feeds)} calibration inputs"}
