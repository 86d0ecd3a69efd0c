"""ONNX export of the generator (torch.export-based exporter), with automatic external data over 2 GB."""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.convert.artifact import Artifact
from cdx.convert.explain import explain
from cdx.distill.generator import ExportableGraph
from cdx.errors import ConversionError

OPSET = 18
_PROTOBUF_LIMIT = 2 * 1024**3
# Weights past this go to a `.data` file beside the graph. Writing a self-contained file builds the whole protobuf
# in memory and then its serialized bytes (the weights twice more); external data is written one tensor at a time.
EXTERNAL_DATA_BYTES = 256 * 1024**2


def needs_external_data(weight_bytes: int) -> bool:
    """True when weights should be written beside the graph (memory at export; protobuf's 2 GB limit)."""
    return weight_bytes > EXTERNAL_DATA_BYTES


def export_onnx(generator: ExportableGraph, path: Path, exporter: str = "dynamo") -> dict[str, Any]:
    """Export `generator` to `path` (.onnx); returns the manifest's `export` record."""
    inputs = generator.example_inputs()
    input_names = list(inputs)
    output_names = [spec.name for spec in generator.output_specs()]
    args = tuple(inputs.values())
    weight_bytes = sum(p.numel() * p.element_size() for p in generator.parameters())
    external = needs_external_data(weight_bytes)
    sink = io.StringIO()
    try:
        with torch.inference_mode(False), torch.no_grad(), contextlib.redirect_stdout(sink):
            if exporter == "dynamo":
                program = torch.onnx.export(generator, args, input_names=input_names, output_names=output_names,
                                            opset_version=OPSET, dynamo=True, verbose=False)
                _strip_ir_metadata(program.model)
                program.save(str(path), external_data=external)
                del program  # its folded constants (e.g. transposed weights) are freed before the next stage
                forget_rewriter_matches()
            elif exporter == "torchscript":
                torch.onnx.export(generator, args, str(path), input_names=input_names, output_names=output_names,
                                  opset_version=OPSET, dynamo=False)
                strip_debug_metadata(path)
            else:
                raise ConversionError(f"unknown ONNX exporter {exporter!r}; valid: dynamo, torchscript")
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(explain(exc, "onnx")) from None
    return {"exporter": f"torch.onnx ({exporter})", "opset": OPSET, "torch": torch.__version__,
            "external_data": bool(external_data_files(path)), "graph_optimization_level": "ORT_ENABLE_ALL (at load)"}


def forget_rewriter_matches() -> int:
    """Drop the exported graph that onnxscript's rewrite rules keep after optimizing it.

    The exporter's optimizer runs module-level rewrite rules whose `SimplePatternMatcher`s (onnxscript 0.7) keep the
    graph, tracer and bindings of their last match as attributes: after an export they hold the whole ONNX IR
    graph, and through its initializers every weight of the model (measured: 3.7 GB of SD-1.5 stayed resident
    after its eager weights were released). `match()` sets all of them again before use, so clearing them is safe.
    Returns how many matchers were cleared."""
    import gc

    cleared = 0
    for obj in gc.get_objects():
        cls = type(obj)
        if cls.__name__ == "SimplePatternMatcher" and cls.__module__.startswith("onnxscript."):
            state = vars(obj)
            if state.get("_graph") is not None or "_match" in state:
                state.update(_graph=None, _tracer=None, _current_node=None)
                state.pop("_match", None)
                cleared += 1
    gc.collect()
    return cleared


def _strip_ir_metadata(model: Any) -> None:
    """Drop the exporter's per-node debug metadata (stack traces with local paths, FX node text) on the in-memory IR:
    a quarter of a small model's file, and it leaks the exporting machine's file layout into a shipped artifact."""
    for node in model.graph.all_nodes():
        node.metadata_props.clear()
    for function in model.functions.values():
        for node in function:
            node.metadata_props.clear()


def strip_debug_metadata(path: Path) -> None:
    """`_strip_ir_metadata` for a saved file (the TorchScript exporter's); external data files are left as they are."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for node in proto.graph.node:
        del node.metadata_props[:]
    onnx.save(proto, str(path))


def external_data_name(path: Path) -> str:
    """The file beside `path` that holds its weights when they are external: `<name>.data`."""
    return f"{path.name}.data"


def save_onnx(proto: Any, path: Path) -> None:
    """Save a ModelProto, its weights beside it (`<name>.data`) when large (see EXTERNAL_DATA_BYTES)."""
    import onnx

    weight_bytes = sum(len(t.raw_data) for t in proto.graph.initializer)
    if needs_external_data(weight_bytes):
        onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=external_data_name(path), size_threshold=1024)
    else:
        onnx.save_model(proto, str(path))


# ---- precisions and the ORT-format file, each derived from the fp32 .onnx -------------------------------------------
# --quant value -> (manifest precision, file format)
QUANTS: dict[str, tuple[str, str]] = {
    "none": ("fp32", "onnx"),
    "fp16": ("fp16", "onnx"),
    "int8-dynamic": ("int8-dynamic", "onnx"),
    "int8-static": ("int8-static", "onnx"),
    "ort": ("fp32", "ort"),
}
STATIC_OP_TYPES = ("Conv", "MatMul", "Gemm")  # STACK.md: quantizing more breaks dynamo exports ("shared mode", int64 DQ)


def to_fp16(source: Path, path: Path) -> dict[str, Any]:
    """fp16 weights and compute with float32 inputs/outputs (onnxruntime's converter; onnxconverter-common's
    keep_io_types emits a Cast type mismatch at time_proj on these graphs).

    The converter rewrites the graph (types, Casts, blocked ops); a source whose weights are external data is loaded
    without them and its tensors are converted one at a time into the new file's external data (`stream_fp16_weights`),
    so the fp32 model is never resident."""
    import onnx
    from onnx.external_data_helper import uses_external_data
    from onnxruntime.transformers.onnx_model import OnnxModel

    proto = onnx.load(str(source), load_external_data=False)  # inline weights load here; external ones stay on disk
    external = {t.name: t.data_type for t in proto.graph.initializer if uses_external_data(t)}
    model = OnnxModel(proto)
    del proto
    with _value_info_from_dims():  # ONNX's own shape inference: it reads no weights (symbolic inference does)
        model.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)
    record = {"method": "onnxruntime.transformers OnnxModel.convert_float_to_float16", "keep_io_types": True,
              "io": "float32"}
    if external:
        stream_fp16_weights(model.model, source.parent, path, external)
        record["weights"] = "converted tensor by tensor from the fp32 external data"
    else:
        save_onnx(model.model, path)
    del model
    return record


@contextlib.contextmanager
def _value_info_from_dims():
    """The converter takes each converted initializer's shape from `numpy_helper.to_array(tensor).shape`, which reads
    (and attaches) an external tensor's data; the same value info from the tensor's dims reads nothing."""
    from onnx import helper
    from onnxruntime.transformers import onnx_model

    scope = onnx_model.convert_float_to_float16.__globals__  # the `float16` module OnnxModel imported (a sys.path name)
    original = scope["make_value_info_from_tensor"]
    scope["make_value_info_from_tensor"] = lambda t: helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
    try:
        yield
    finally:
        scope["make_value_info_from_tensor"] = original


def stream_fp16_weights(proto: Any, source_dir: Path, path: Path, source_types: dict[str, int]) -> None:
    """Write `proto` (converted graph, weights still pointing at the fp32 external data) to `path` with its weights in
    `<name>.data`: each tensor read from the source file, cast to fp16 where the converter made it fp16 (its own
    clamping, `convert_np_to_float16`), written, and dropped before the next."""
    import onnx
    from onnx import TensorProto
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data
    from onnxruntime.transformers.float16 import convert_np_to_float16

    data_name = external_data_name(path)
    offset = 0
    with open(path.parent / data_name, "wb") as sink:
        for tensor in proto.graph.initializer:
            if not uses_external_data(tensor):
                continue
            info = ExternalDataInfo(tensor)
            raw = np.memmap(source_dir / info.location, dtype=np.uint8, mode="r", offset=info.offset or 0,
                            shape=(info.length,)) if info.length else np.zeros(0, np.uint8)
            if source_types[tensor.name] == TensorProto.FLOAT and tensor.data_type == TensorProto.FLOAT16:
                data = convert_np_to_float16(np.asarray(raw).view(np.float32)).tobytes()
            else:
                data = raw.tobytes()
            del raw
            sink.write(data)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = TensorProto.EXTERNAL
            offset += len(data)
    onnx.save_model(proto, str(path))


def quantize_int8_dynamic(source: Path, path: Path, feeds: list[dict[str, np.ndarray]] | None = None,
                          output_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """Weights int8, activations quantized on the fly per call; nodes that break quality stay float (see
    `mixed_precision`), judged on `feeds`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from cdx.convert.mixed_precision import quantizable_nodes, search_target, sensitivity_search

    def quantize(excluded: list[str], out: Path) -> None:
        quantize_dynamic(str(source), str(out), weight_type=QuantType.QInt8, op_types_to_quantize=list(STATIC_OP_TYPES),
                         nodes_to_exclude=excluded)

    record = {"method": "onnxruntime.quantization.quantize_dynamic", "weights": "int8", "activations": "dynamic uint8",
              "op_types": list(STATIC_OP_TYPES)}
    excluded: list[str] = []
    if feeds:
        target, peak = search_target(output_range)
        search = sensitivity_search(quantize, source, quantizable_nodes(source, STATIC_OP_TYPES), feeds, target, peak)
        record["mixed_precision"] = search
        excluded = search["kept_float"]
    quantize(excluded, path)
    return record


class _SeededReader:
    """CalibrationDataReader over seeded generator inputs (several seeds, labels and guidance scales)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # pragma: no cover - required by some ORT versions
        pass


def quantize_int8_static(source: Path, path: Path, feeds: list[dict[str, np.ndarray]],
                         output_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """QDQ int8 calibrated on `feeds`; `quant_pre_process` first (shape inference + optimisation), Conv/MatMul/Gemm only;
    nodes that break quality stay float (see `mixed_precision`)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cdx.convert.mixed_precision import quantizable_nodes, search_target, sensitivity_search

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)

        def quantize(excluded: list[str], out: Path) -> None:
            quantize_static(str(prepared), str(out), _SeededReader(feeds), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(STATIC_OP_TYPES), per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=excluded)

        target, peak = search_target(output_range)
        search = sensitivity_search(quantize, prepared, quantizable_nodes(prepared, STATIC_OP_TYPES), feeds, target, peak)
        quantize(search["kept_float"], path)
    return {"method": "onnxruntime.quantization.quantize_static", "format": "QDQ", "pre_process": "quant_pre_process",
            "op_types": list(STATIC_OP_TYPES), "weights": "int8 per-channel", "activations": "int8 per-tensor",
            "calibration_method": "MinMax", "calibration_samples": len(feeds),
            "calibration": "seeded generator inputs (noise + conditioning)", "mixed_precision": search}


def to_ort_format(source: Path, path: Path) -> dict[str, Any]:
    """ORT-format file for ONNX Runtime Mobile, optimised like `python -m onnxruntime.tools.convert_onnx_models_to_ort`
    (Fixed style, ORT_ENABLE_ALL, NCHWc layout excluded so the file runs on ARM too)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(path)
    options.add_session_config_entry("session.save_model_format", "ORT")
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
    return {"optimization_style": "Fixed", "graph_optimization_level": "ORT_ENABLE_ALL (baked into the file)",
            "disabled_optimizers": ["NchwcTransformer"], "onnxruntime": ort.__version__}


def export_onnx_fp32(generator: ExportableGraph, path: Path, exporter: str = "dynamo") -> Artifact:
    """The fp32 .onnx every other ONNX variant derives from (the only ONNX step that needs the PyTorch model)."""
    record = export_onnx(generator, path, exporter=exporter)
    return Artifact(file=path.name, format="onnx", precision="fp32", export=record, external_data=external_data_files(path))


def derive_onnx_variant(source: Path, base_record: dict[str, Any], path: Path, quant: str,
                        calibration: list[dict[str, np.ndarray]] | None = None,
                        output_range: tuple[float, float] | None = None) -> Artifact:
    """The `quant` variant of the fp32 file `source` at `path` (no PyTorch model needed, so the driver runs this after
    it has freed the eager model)."""
    precision, fmt = QUANTS[quant]
    record = dict(base_record)
    try:
        if quant == "fp16":
            quantization = to_fp16(source, path)
        elif quant == "int8-dynamic":
            quantization = quantize_int8_dynamic(source, path, calibration, output_range)
        elif quant == "int8-static":
            quantization = quantize_int8_static(source, path, calibration or [], output_range)
        else:
            quantization = None
            record.update(to_ort_format(source, path))
    except Exception as exc:
        raise ConversionError(explain(exc, "onnx")) from None
    if quant != "ort":
        record["graph_optimization_level"] = "ORT_ENABLE_ALL (at load)"
    record["external_data"] = bool(external_data_files(path))
    return Artifact(file=path.name, format=fmt, precision=precision, export=record, quantization=quantization,
                    external_data=external_data_files(path))


def export_onnx_variant(generator: ExportableGraph, path: Path, quant: str, exporter: str = "dynamo",
                        calibration: list[dict[str, np.ndarray]] | None = None,
                        cache: dict[str, Any] | None = None) -> Artifact:
    """Export `generator` once to fp32 ONNX (cached per run), then derive the `quant` variant at `path` (in one call,
    for callers that keep the model anyway, e.g. the bench's teacher graphs)."""
    cache = cache if cache is not None else {}
    if quant == "none":
        artifact = export_onnx_fp32(generator, path, exporter)
        cache[("onnx_fp32", id(generator), exporter)] = (path, artifact.export)  # later variants derive from this file
        return artifact
    key = ("onnx_fp32", id(generator), exporter)
    if key not in cache:
        tmp = cache["onnx_tmp"] = cache.get("onnx_tmp") or tempfile.TemporaryDirectory(prefix="cdx-onnx-")
        source = Path(tmp.name) / f"fp32_{len(cache)}.onnx"
        cache[key] = (source, export_onnx(generator, source, exporter=exporter))
    source, base_record = cache[key]
    return derive_onnx_variant(source, base_record, path, quant, calibration, generator.output_specs()[0].range)


def external_data_files(path: Path) -> list[str]:
    """Names of the external weight files an .onnx refers to (empty for a self-contained file or an .ort)."""
    if path.suffix != ".onnx":
        return []
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    proto = onnx.load(str(path), load_external_data=False)
    return sorted({ExternalDataInfo(t).location for t in proto.graph.initializer if uses_external_data(t)})
