"""The runner interface: load one model of a manifest, run named numpy inputs, get named numpy outputs."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from cdx.errors import InputError, UnsupportedError
from cdx.manifest import find_model, load_manifest

# runtime name -> (module, class, artifact formats it runs)
RUNTIMES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "torch": ("cdx.runtimes.eager", "EagerRunner", ("onnx", "ort", "pte", "mlpackage")),
    "onnxruntime": ("cdx.runtimes.ort", "OrtRunner", ("onnx", "ort")),
    "executorch": ("cdx.runtimes.executorch", "ExecuTorchRunner", ("pte",)),
    "coreml": ("cdx.runtimes.coreml", "CoreMLRunner", ("mlpackage",)),
}

DEFAULT_RUNTIME = {"onnx": "onnxruntime", "ort": "onnxruntime", "pte": "executorch", "mlpackage": "coreml"}


class Runner(ABC):
    """A loaded model. Subclasses load in `__init__` so that construction time is the cold-load time."""

    runtime: str = "?"

    def __init__(self, folder: Path, manifest: dict[str, Any], model: dict[str, Any], threads: int | None = None):
        self.folder = folder
        self.manifest = manifest
        self.model = model
        self.threads = threads
        self.input_names = [spec["name"] for spec in model["inputs"]]
        self.output_names = [spec["name"] for spec in model["outputs"]]

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run once on batch-1 inputs named as in the manifest."""

    def check_inputs(self, inputs: dict[str, np.ndarray]) -> None:
        """Refuse inputs whose names, shapes or dtypes differ from the manifest (one line, naming the tensor)."""
        for spec in self.model["inputs"]:
            if spec["name"] not in inputs:
                raise InputError(f"{self.model['name']}: missing input {spec['name']!r}")
            value = inputs[spec["name"]]
            if list(value.shape) != spec["shape"] or str(value.dtype) != spec["dtype"]:
                raise InputError(
                    f"{self.model['name']}: input {spec['name']!r} is {value.dtype}{list(value.shape)}, "
                    f"manifest says {spec['dtype']}{spec['shape']}"
                )

    def describe(self) -> dict[str, Any]:
        """Metadata recorded next to measurements."""
        return {"runtime": self.runtime, "model": self.model["name"], "threads": self.threads}


def runtime_for(model: dict[str, Any], runtime: str | None) -> str:
    """The runtime to use for a model entry: the requested one if it can run the format, else the default."""
    fmt = model["format"]
    if runtime is None:
        runtime = DEFAULT_RUNTIME.get(fmt)
        if runtime is None:
            raise UnsupportedError(f"no runtime for format {fmt!r} is available in this build of cdx")
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    if fmt not in RUNTIMES[runtime][2]:
        raise InputError(f"runtime {runtime!r} cannot run {fmt!r} artifacts (it runs {', '.join(RUNTIMES[runtime][2])})")
    return runtime


def open_runner(folder: Path, manifest: dict[str, Any], model: dict[str, Any], runtime: str | None = None,
                threads: int | None = None) -> Runner:
    """Construct the runner for an already-validated model entry (no checksum work)."""
    name = runtime_for(model, runtime)
    module_name, class_name, _ = RUNTIMES[name]
    runner_cls = getattr(importlib.import_module(module_name), class_name)
    return runner_cls(folder, manifest, model, threads)


def load_runner(folder: str | Path, model_name: str | None = None, runtime: str | None = None,
                threads: int | None = None, verify: bool = True) -> Runner:
    """Load `model_name` from the artifact folder's manifest on `runtime` (sha256 checked first)."""
    root = Path(folder)
    manifest = load_manifest(root, verify=verify)
    return open_runner(root, manifest, find_model(manifest, model_name), runtime, threads)
