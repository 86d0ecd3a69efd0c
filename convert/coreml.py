"""Core ML export: torch.export → coremltools (ML Program) → .mlpackage, fp32/fp16/int8/palettized.

fp16 is guarded: the generator is first run with fp16 in PyTorch (the VAE decoder, where SD's fp16 overflow to black
images happens) and with fp32 activation probes; ops of the blocks that overflow are kept fp32 through coremltools'
`op_selector`, and what was done is recorded. Core ML cannot predict on Linux, so `spec_report` checks everything
that can be checked here (spec loads, I/O against the manifest, op histogram, size).
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
from collections import Counter
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cdx.convert.artifact import Artifact
from cdx.convert.explain import explain
from cdx.distill.generator import ExportableGraph
from cdx.errors import ConversionError, InputError

FP16_MAX = 65504.0
DEPLOYMENT_TARGETS = ("iOS17", "iOS18")
# --quant value -> (manifest precision, compute precision, weight compression)
QUANTS: dict[str, tuple[str, str, str | None]] = {
    "none": ("fp32", "fp32", None),
    "fp32": ("fp32", "fp32", None),
    "fp16": ("fp16", "fp16", None),
    "int8": ("int8", "fp16", "linear_int8"),
    "palettize6": ("palettize6", "fp16", "kmeans_6bit"),
    "palettize4": ("palettize4", "fp16", "kmeans_4bit"),
}
_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "INT32": "int32"}
_COMPATIBLE = {("int32", "int64")}  # Core ML has no int64 inputs: class labels travel as int32


def _block_of(path: str) -> str:
    """The block a leaf module belongs to (e.g. vae.decoder.up_blocks.1): the unit kept fp32 when it overflows."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part.endswith("blocks") and i + 1 < len(parts):
            return ".".join(parts[: i + 2])
        if part in ("mid_block", "conv_in", "conv_out", "conv_norm_out"):
            return ".".join(parts[: i + 1])
    return path


def _leaf_probe(module: nn.Module, record: Callable[[str, tuple[Any, ...], torch.Tensor], None]) -> list[Any]:
    handles = []
    for name, child in module.named_modules():
        if name and not list(child.children()):
            handles.append(child.register_forward_hook(
                lambda _m, inputs, out, name=name: record(name, inputs, out) if isinstance(out, torch.Tensor) else None))
    return handles


def _overflow_origin(name: str, inputs: tuple[Any, ...], out: torch.Tensor, found: set[str]) -> None:
    """Flag a module whose inputs are finite but whose output is not: where fp16 overflow starts (NaN then spreads)."""
    finite_in = all(bool(torch.isfinite(x).all()) for x in inputs if isinstance(x, torch.Tensor))
    if finite_in and not bool(torch.isfinite(out).all()):
        found.add(name)


@torch.no_grad()
def fp16_overflow_report(generator: nn.Module, batches: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """Which blocks overflow fp16 on the golden inputs: fp32 activation probes over the whole graph, plus its VAE
    decoder (where there is one) actually run in fp16 in PyTorch (inf/NaN)."""
    peaks: dict[str, float] = {}

    def keep_peak(name: str, _inputs: tuple[Any, ...], out: torch.Tensor) -> None:
        peaks[name] = max(peaks.get(name, 0.0), float(out.detach().abs().max()))

    decodes = hasattr(generator, "decoder_latents")
    handles = _leaf_probe(generator, keep_peak)
    latents = []
    try:
        for batch in batches:
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
            generator(*tensors.values())
            if decodes:
                latents.append(generator.decoder_latents(tensors))
    finally:
        for h in handles:
            h.remove()
    offending = {f"{name}" for name, peak in peaks.items() if peak > FP16_MAX}

    nonfinite: set[str] = set()
    finite: bool | None = None
    if decodes:
        vae16 = copy.deepcopy(generator.vae).half()
        handles = _leaf_probe(vae16, lambda name, inputs, out: _overflow_origin(f"vae.{name}", inputs, out, nonfinite))
        finite = True
        try:
            for latent in latents:
                image = vae16.decode((latent / generator.scaling_factor + generator.shift_factor).half()).sample
                finite = finite and bool(torch.isfinite(image).all())
        finally:
            for h in handles:
                h.remove()
    blocks = sorted({_block_of(name) for name in offending | nonfinite})
    return {
        "inputs_checked": len(batches),
        "max_abs_activation_fp32": round(max(peaks.values(), default=0.0), 3),
        "vae_decoder_fp16_finite": finite,
        "overflowing_modules": sorted(offending | nonfinite),
        "fp32_blocks": blocks,
    }


def _fp32_node_names(program: torch.export.ExportedProgram, blocks: list[str]) -> set[str]:
    """FX node names (= MIL op names before the fp16 pass) created inside any of `blocks`."""
    names = set()
    for node in program.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [str(path) for path, _ in stack.values()]
        if any(p == b or p.startswith(b + ".") for p in paths for b in blocks):
            names.add(node.name)
    return names


def _op_histogram_of_spec(spec: Any) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                counts[op.type] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _compress(mlmodel: Any, compression: str | None) -> tuple[Any, dict[str, Any] | None]:
    import coremltools.optimize.coreml as cto

    if compression is None:
        return mlmodel, None
    if compression == "linear_int8":
        config = cto.OptimizationConfig(global_config=cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                                                                  granularity="per_channel"))
        return cto.linear_quantize_weights(mlmodel, config), {
            "method": "coremltools.optimize.coreml.linear_quantize_weights", "dtype": "int8",
            "mode": "linear_symmetric", "granularity": "per_channel", "weight_threshold": 2048,
            "activations": "fp16 (weight-only)"}
    nbits = int(compression.split("_")[1].removesuffix("bit"))
    config = cto.OptimizationConfig(global_config=cto.OpPalettizerConfig(mode="kmeans", nbits=nbits))
    return cto.palettize_weights(mlmodel, config), {
        "method": "coremltools.optimize.coreml.palettize_weights", "mode": "kmeans", "nbits": nbits,
        "granularity": "per_tensor", "weight_threshold": 2048, "activations": "fp16 (weight-only)"}


def _rename_io(mlmodel: Any, generator: ExportableGraph) -> Any:
    """torch.export names inputs after forward's arguments (`args_0`, …) and outputs automatically: use manifest names."""
    import coremltools as ct

    spec = mlmodel.get_spec()
    wanted_in = [s.name for s in generator.input_specs()]
    wanted_out = [s.name for s in generator.output_specs()]
    for feature, name in zip(list(spec.description.input), wanted_in, strict=True):
        if feature.name != name:
            ct.utils.rename_feature(spec, feature.name, name, rename_outputs=False)
    for feature, name in zip(list(spec.description.output), wanted_out, strict=True):
        if feature.name != name:
            ct.utils.rename_feature(spec, feature.name, name, rename_inputs=False)
    return ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True)


def export_coreml(generator: ExportableGraph, path: Path, quant: str = "fp16", deployment_target: str = "iOS17",
                  batches: list[dict[str, np.ndarray]] | None = None, say: Any = None,
                  cache: dict[Any, Any] | None = None) -> Artifact:
    """Write `path` (.mlpackage folder); returns the artifact with the export record and the fp16 overflow report.

    `cache` (one dict per run) keeps the converted fp16/fp32 model so int8/palettized variants only add compression.
    """
    if deployment_target not in DEPLOYMENT_TARGETS:
        raise InputError(f"unknown Core ML deployment target {deployment_target!r}; valid: {', '.join(DEPLOYMENT_TARGETS)}")

    precision, compute, compression = QUANTS[quant]
    args = tuple(generator.example_inputs().values())
    record: dict[str, Any] = {"exporter": "torch.export → coremltools.convert (mlprogram)", "coremltools": version("coremltools"),
                              "torch": torch.__version__, "minimum_deployment_target": deployment_target,
                              "compute_precision": compute}
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), torch.no_grad():
            key = ("coreml", id(generator), compute, deployment_target)
            cache = cache if cache is not None else {}
            if key not in cache:
                cache[key] = _convert(generator, args, compute, deployment_target, batches)
            mlmodel, checks = cache[key]
            record.update(checks)
            mlmodel, quantization = _compress(mlmodel, compression)
            mlmodel = _rename_io(mlmodel, generator)
            if path.exists():
                shutil.rmtree(path)
            mlmodel.save(str(path))
    except (ConversionError, InputError):
        raise
    except Exception as exc:  # converters raise anything; the user gets one line
        raise ConversionError(explain(exc, "coreml")) from None
    if say and compute == "fp16":
        say(f"fp16 overflow check: {record['fp16_overflow_check']['action']}")
    return Artifact(file=path.name, format="mlpackage", precision=precision, export=record, quantization=quantization,
                    numeric=False)


def _convert(generator: ExportableGraph, args: tuple[torch.Tensor, ...], compute: str, deployment_target: str,
             batches: list[dict[str, np.ndarray]] | None) -> tuple[Any, dict[str, Any]]:
    """torch.export → run_decompositions → ct.convert, with the fp16 overflow guard; returns (model, records)."""
    import coremltools as ct

    program = torch.export.export(generator, args, strict=False).run_decompositions({})
    compute_precision: Any = ct.precision.FLOAT32
    records: dict[str, Any] = {}
    if compute == "fp16":
        probe = batches or [{k: v.numpy() for k, v in generator.example_inputs().items()}]
        report = fp16_overflow_report(generator, probe)
        keep = _fp32_node_names(program, report["fp32_blocks"]) if report["fp32_blocks"] else set()
        report["fp32_ops_kept"] = len(keep)
        report["action"] = (f"kept {len(keep)} ops of {len(report['fp32_blocks'])} block(s) in fp32 (op_selector)"
                            if keep else "none needed: all fp16")
        records["fp16_overflow_check"] = report
        compute_precision = ct.transform.FP16ComputePrecision(op_selector=lambda op: op.name not in keep) \
            if keep else ct.precision.FLOAT16
    # outputs named and float32 as in the manifest (with fp16 compute coremltools would otherwise emit fp16 outputs)
    outputs = [ct.TensorType(name=spec.name, dtype=np.float32) for spec in generator.output_specs()]
    mlmodel = ct.convert(program, convert_to="mlprogram", compute_precision=compute_precision, outputs=outputs,
                         minimum_deployment_target=getattr(ct.target, deployment_target))
    return mlmodel, records


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def spec_report(path: Path, model: dict[str, Any]) -> dict[str, Any]:
    """What can be verified without macOS: the spec loads, I/O names/shapes/dtypes match the manifest, op histogram, size.

    Returns the record; `mismatches` lists every disagreement (empty when the spec matches the manifest).
    """
    import coremltools as ct

    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()
    mismatches: list[str] = []

    def compare(kind: str, features: Any, specs: list[dict[str, Any]]) -> None:
        if [f.name for f in features] != [s["name"] for s in specs]:
            mismatches.append(f"{kind} names {[f.name for f in features]} != manifest {[s['name'] for s in specs]}")
            return
        for feature, entry in zip(features, specs, strict=True):
            array = feature.type.multiArrayType
            shape = [int(d) for d in array.shape]
            dtype = _DTYPES.get(ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType), "?")
            if shape != entry["shape"]:
                mismatches.append(f"{kind} {feature.name!r} shape {shape} != manifest {entry['shape']}")
            if dtype != entry["dtype"] and (dtype, entry["dtype"]) not in _COMPATIBLE:
                mismatches.append(f"{kind} {feature.name!r} dtype {dtype} != manifest {entry['dtype']}")

    compare("input", spec.description.input, model["inputs"])
    compare("output", spec.description.output, model["outputs"])
    histogram = _op_histogram_of_spec(spec)
    return {
        "spec_loads": True,
        "specification_version": int(spec.specificationVersion),
        "io_matches_manifest": not mismatches,
        "mismatches": mismatches,
        "op_count": sum(histogram.values()),
        "op_histogram": histogram,
        "size_bytes": _folder_size(path),
    }
