"""ONNX export of the generator (torch.export-based exporter), with automatic external data over 2 GB."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch

from cdx.convert.generator import OneStepGenerator
from cdx.errors import ConversionError

OPSET = 18
_PROTOBUF_LIMIT = 2 * 1024**3


def export_onnx(generator: OneStepGenerator, path: Path, exporter: str = "dynamo") -> dict[str, Any]:
    """Export `generator` to `path` (.onnx); returns the manifest's `export` record."""
    inputs = generator.example_inputs()
    input_names = list(inputs)
    output_names = [spec.name for spec in generator.output_specs()]
    args = tuple(inputs.values())
    weight_bytes = sum(p.numel() * p.element_size() for p in generator.parameters())
    external = weight_bytes > _PROTOBUF_LIMIT * 0.9
    sink = io.StringIO()
    try:
        with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(sink):
            if exporter == "dynamo":
                program = torch.onnx.export(generator, args, input_names=input_names, output_names=output_names,
                                            opset_version=OPSET, dynamo=True, verbose=False)
                program.save(str(path), external_data=external)
            elif exporter == "torchscript":
                torch.onnx.export(generator, args, str(path), input_names=input_names, output_names=output_names,
                                  opset_version=OPSET, dynamo=False)
            else:
                raise ConversionError(f"unknown ONNX exporter {exporter!r}; valid: dynamo, torchscript")
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(_explain(exc, "onnx")) from None
    return {"exporter": f"torch.onnx ({exporter})", "opset": OPSET, "torch": torch.__version__,
            "external_data": external, "graph_optimization_level": "ORT_ENABLE_ALL (at load)"}


def _explain(exc: Exception, target: str) -> str:
    """One line naming the failing op when the exporter says which one."""
    text = " ".join(str(exc).split())
    for marker in ("aten::", "aten."):
        if marker in text:
            op = text[text.index(marker):].split()[0].strip("'\",.:()")
            return f"{target}: export failed at op {op} — try --exporter torchscript or report the op ({type(exc).__name__})"
    return f"{target}: export failed ({type(exc).__name__}: {text[:200]})"
