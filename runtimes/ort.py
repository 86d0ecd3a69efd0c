"""ONNX Runtime runner (.onnx and ORT-format .ort files); execution providers selectable by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from cdx.errors import InputError
from cdx.manifest import resolve_inside
from cdx.runtimes.base import Runner


def session_options(threads: int | None, optimization: str = "all", saved_optimizations: bool = False):
    """ORT SessionOptions with thread count and graph optimisation level set."""
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[optimization]
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if saved_optimizations:
        options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
    options.log_severity_level = 3
    return options


class OrtRunner(Runner):
    """Runs a manifest's .onnx/.ort file on ONNX Runtime (CPU EP unless `providers` says otherwise)."""

    runtime = "onnxruntime"

    def __init__(self, folder: Path, manifest: dict[str, Any], model: dict[str, Any], threads: int | None = None,
                 providers: list[str] | None = None):
        super().__init__(folder, manifest, model, threads)
        available = ort.get_available_providers()
        self.providers = providers or ["CPUExecutionProvider"]
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise InputError(f"ONNX Runtime provider(s) {', '.join(missing)} not available; available: {', '.join(available)}")
        path = resolve_inside(folder, model["file"])
        saved = model["format"] == "ort"
        self.session = ort.InferenceSession(str(path), session_options(threads, saved_optimizations=saved),
                                            providers=self.providers)

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        values = self.session.run(self.output_names, {name: inputs[name] for name in self.input_names})
        return dict(zip(self.output_names, values, strict=True))

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "providers": self.providers}
