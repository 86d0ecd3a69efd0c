"""ONNX target precisions: fp16 (float32 I/O), int8 dynamic, int8 static QDQ, and the ORT-format file, all gated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from cdx.convert.export import ConvertOptions, convert
from cdx.convert.golden import read_golden, unstack
from cdx.manifest import load_manifest
from cdx.runtimes import load_runner

QUANTS = ("none", "fp16", "int8-dynamic", "int8-static", "ort")


@pytest.fixture(scope="module")
def onnx_variants(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "onnx_variants"
    convert(tiny_sd, out, ConvertOptions(target="onnx", quants=QUANTS, seeds=(0, 1, 2)))
    return out


def _models(folder: Path) -> dict[str, dict]:
    return {m["name"].removeprefix("generator_16x16").lstrip("_") or "none": m for m in load_manifest(folder)["models"]}


def test_one_manifest_holds_every_variant_with_its_precision_and_format(onnx_variants: Path) -> None:
    models = _models(onnx_variants)
    assert list(models) == list(QUANTS)
    assert [(m["precision"], m["format"]) for m in models.values()] == [
        ("fp32", "onnx"), ("fp16", "onnx"), ("int8-dynamic", "onnx"), ("int8-static", "onnx"), ("fp32", "ort")]
    for model in models.values():
        assert model["parity"]["passed"] and model["parity"]["checked"] == "numeric"
        assert "graph_optimization_level" in model["export"]


def test_fp16_keeps_float32_io_and_halves_the_weights(onnx_variants: Path) -> None:
    models = _models(onnx_variants)
    proto = onnx.load(str(onnx_variants / models["fp16"]["file"]))
    f32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == f32 for v in (*proto.graph.input[:1], *proto.graph.output))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in proto.graph.initializer)
    sizes = {f["path"]: f["size_bytes"] for f in load_manifest(onnx_variants)["files"]}
    assert sizes[models["fp16"]["file"]] < 0.6 * sizes[models["none"]["file"]]
    assert models["fp16"]["parity"]["psnr_db"] >= 35


def test_int8_variants_are_quantized_small_and_keep_the_text_signal(onnx_variants: Path) -> None:
    models = _models(onnx_variants)
    sizes = {f["path"]: f["size_bytes"] for f in load_manifest(onnx_variants)["files"]}
    static = onnx.load(str(onnx_variants / models["int8-static"]["file"]))
    ops = {n.op_type for n in static.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert models["int8-static"]["quantization"]["calibration_samples"] == 8
    dynamic = onnx.load(str(onnx_variants / models["int8-dynamic"]["file"]))
    assert any(n.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger") for n in dynamic.graph.node)
    for name in ("int8-dynamic", "int8-static"):
        parity = models[name]["parity"]
        assert parity["psnr_db"] >= 30 and 0.9 < parity["ssim"] <= 1
        assert parity["conditioning_sensitivity"]["ratio"] >= 0.5
        assert parity["conditioning_sensitivity"]["aligned_ratio"] > 0.5
        assert sizes[models[name]["file"]] < 0.4 * sizes[models["none"]["file"]]


def test_ort_format_file_runs_on_onnxruntime_and_matches_eager(onnx_variants: Path) -> None:
    model = _models(onnx_variants)["ort"]
    assert (onnx_variants / model["file"]).read_bytes()[4:8] == b"ORTM"  # flatbuffer identifier of ORT-format files
    runner = load_runner(onnx_variants, model["name"])
    assert runner.runtime == "onnxruntime"
    inputs, golden = read_golden(onnx_variants, model)
    out = runner.run(unstack(inputs)[0])["image"]
    assert np.abs(out - golden["image"][:1]).max() <= 1e-4
    assert model["export"]["disabled_optimizers"] == ["NchwcTransformer"]


def test_exported_graphs_carry_no_debug_metadata_or_local_paths(onnx_variants: Path) -> None:
    """The dynamo exporter's per-node stack traces would ship this machine's file layout inside the artifact."""
    for model in _models(onnx_variants).values():
        if model["format"] != "onnx":
            continue
        blob = (onnx_variants / model["file"]).read_bytes()
        assert b"pkg.torch.onnx.stack_trace" not in blob and str(Path.cwd()).encode() not in blob


def test_int8_keeps_the_few_sensitive_nodes_float_to_pass_the_gate(embedded_onnx: Path) -> None:
    """Fully int8, the embedded student misses 30 dB; the sensitivity search keeps a few nodes float and passes."""
    model = load_manifest(embedded_onnx)["models"][1]
    search = model["quantization"]["mixed_precision"]
    assert search["psnr_all_quantized_db"] < 30 <= search["target_psnr_db"] - 1 <= search["psnr_db"]
    assert 1 <= len(search["kept_float"]) <= 0.25 * search["candidates_ranked"]
    assert model["parity"]["passed"] and model["parity"]["psnr_db"] >= 30
    proto = onnx.load(str(embedded_onnx / model["file"]))
    names = {n.name for n in proto.graph.node}
    assert set(search["kept_float"]) <= names, "the nodes kept float are still plain float ops in the graph"


def _external_fp32_model(folder: Path) -> Path:
    """Conv → GroupNorm-free Add → MatMul with weights as external data (what a large export writes)."""
    from onnx import TensorProto, helper, numpy_helper

    gen = np.random.default_rng(0)
    w = numpy_helper.from_array(gen.standard_normal((8, 4, 3, 3)).astype(np.float32), "conv.weight")
    b = numpy_helper.from_array(gen.standard_normal(8).astype(np.float32) * 1e-9, "conv.bias")  # below fp16's range
    m = numpy_helper.from_array(gen.standard_normal((6, 5)).astype(np.float32) * 7e4, "proj.weight")  # above it
    shape = numpy_helper.from_array(np.array([1, 8, 6, 6], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"]),
         helper.make_node("Reshape", ["c", "shape"], ["r"]),
         helper.make_node("MatMul", ["r", "proj.weight"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 5])], [w, b, m, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    path = folder / "fp32.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="fp32.onnx.data", size_threshold=100)  # the int64 shape stays inline, as in exports
    return path


def test_fp16_of_external_data_streams_tensors_and_equals_the_in_memory_conversion(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A large model's fp16 file is made tensor by tensor from the fp32 external data (the fp32 weights never loaded
    whole) and holds exactly what onnxruntime's in-memory converter makes, its fp16 clamping included."""
    from onnx import numpy_helper
    from onnxruntime.transformers.onnx_model import OnnxModel

    from cdx.convert.onnx import external_data_files, to_fp16

    source = _external_fp32_model(tmp_path)
    reference = OnnxModel(onnx.load(str(source)))
    reference.convert_float_to_float16(use_symbolic_shape_infer=False, keep_io_types=True)
    expected = {t.name: numpy_helper.to_array(t) for t in reference.model.graph.initializer}

    real_load = onnx.load
    monkeypatch.setattr(onnx, "load", lambda f, *a, load_external_data=True, **k: pytest.fail("fp32 weights loaded")
                        if load_external_data else real_load(f, *a, load_external_data=False, **k))
    out = tmp_path / "fp16" / "generator_fp16.onnx"
    out.parent.mkdir()
    record = to_fp16(source, out)
    monkeypatch.setattr(onnx, "load", real_load)

    assert record["weights"].startswith("converted tensor by tensor")
    assert external_data_files(out) == ["generator_fp16.onnx.data"]
    got = {t.name: numpy_helper.to_array(t, base_dir=str(out.parent)) for t in onnx.load(str(out)).graph.initializer}
    assert got.keys() == expected.keys()
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
    assert got["conv.weight"].dtype == np.float16 and np.abs(got["proj.weight"]).max() == 65504.0
    import onnxruntime as ort

    x = np.random.default_rng(1).standard_normal((1, 4, 8, 8)).astype(np.float32)
    ours = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    theirs = ort.InferenceSession(reference.model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(ours, theirs)
