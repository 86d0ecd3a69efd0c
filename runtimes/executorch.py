"""ExecuTorch runner (.pte) through the Python bindings of the ExecuTorch runtime (XNNPACK delegate registered)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from executorch.runtime import Runtime  # the bindings load with the module (bench: import time, not cold load)

from cdx.errors import UnsupportedError
from cdx.manifest import resolve_inside
from cdx.quiet import filtered_stderr
from cdx.runtimes.base import Runner


class ExecuTorchRunner(Runner):
    """Loads a manifest's .pte with `executorch.runtime.Runtime` and runs its `forward` method."""

    runtime = "executorch"

    def __init__(self, folder: Path, manifest: dict[str, Any], model: dict[str, Any], threads: int | None = None):
        super().__init__(folder, manifest, model, threads)
        if model.get("export", {}).get("delegate") == "coreml":
            raise UnsupportedError(f"{model['name']}: a Core ML-delegated .pte runs only on Apple devices "
                                   "(CoreMLBackend is not registered in this runtime)")
        if threads:  # XNNPACK runs on ExecuTorch's own threadpool (default: the performant cores), not torch's
            from executorch.extension.pybindings import portable_lib

            torch.set_num_threads(threads)
            with filtered_stderr():
                portable_lib._unsafe_reset_threadpool(threads)
        with filtered_stderr():  # XNNPACK's cpuinfo probe prints ARM-register misses on x86 at method load
            program = Runtime.get().load_program(str(resolve_inside(folder, model["file"])))
            self.method = program.load_method("forward")

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.check_inputs(inputs)
        outputs = self.method.execute([torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names])
        return {name: out.numpy() for name, out in zip(self.output_names, outputs, strict=True)}
