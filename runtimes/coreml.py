"""Core ML runner (.mlpackage): `MLModel.predict` on macOS; elsewhere it refuses with one line (no prediction off macOS)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cdx.errors import UnsupportedError
from cdx.manifest import resolve_inside
from cdx.runtimes.base import Runner


def can_predict() -> bool:
    """Core ML prediction exists only on macOS (coremltools has no Linux runtime)."""
    return sys.platform == "darwin"


class CoreMLRunner(Runner):
    """Loads a manifest's .mlpackage with coremltools and predicts on the CPU+GPU+ANE compute units."""

    runtime = "coreml"

    def __init__(self, folder: Path, manifest: dict[str, Any], model: dict[str, Any], threads: int | None = None):
        super().__init__(folder, manifest, model, threads)
        if not can_predict():
            raise UnsupportedError(f"{model['name']}: Core ML prediction needs macOS (this is {sys.platform}); "
                                   "the spec was checked at export instead")
        import coremltools as ct

        self.mlmodel = ct.models.MLModel(str(resolve_inside(folder, model["file"])))
        self.dtypes = {spec["name"]: np.int32 if spec["dtype"] == "int64" else np.dtype(spec["dtype"])
                       for spec in model["inputs"]}

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        feed = {name: inputs[name].astype(self.dtypes[name]) for name in self.input_names}
        out = self.mlmodel.predict(feed)
        return {name: np.asarray(out[name], dtype=np.float32) for name in self.output_names}
