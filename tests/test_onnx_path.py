"""First real path: student → ONNX → ONNX Runtime, checked against eager PyTorch, and refused when broken."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from cdx.convert.golden import eager_outputs, read_golden, seeded_batches, unstack
from cdx.convert.parity import parity_gate
from cdx.errors import ParityError
from cdx.manifest import load_manifest
from cdx.runtimes import load_runner


def test_ort_matches_eager_within_1e4(onnx_export: Path) -> None:
    ort_runner = load_runner(onnx_export, runtime="onnxruntime", threads=2)
    eager_runner = load_runner(onnx_export, runtime="torch", threads=2)
    inputs, golden_out = read_golden(onnx_export, ort_runner.model)
    for i, sample in enumerate(unstack(inputs)):
        ours = ort_runner.run(sample)["image"]
        ref = eager_runner.run(sample)["image"]
        assert np.abs(ours - ref).max() <= 1e-4
        assert np.abs(golden_out["image"][i : i + 1] - ref).max() <= 1e-6  # golden = eager float outputs
    assert ort_runner.model["parity"]["passed"] and ort_runner.model["parity"]["max_abs"] <= 1e-4


def test_onnx_graph_io_matches_manifest(onnx_export: Path) -> None:
    import onnx

    data = load_manifest(onnx_export)
    model = data["models"][0]
    graph = onnx.load(str(onnx_export / model["file"])).graph
    assert [i.name for i in graph.input] == [t["name"] for t in model["inputs"]]
    assert [o.name for o in graph.output] == [t["name"] for t in model["outputs"]]
    for value, spec in zip(graph.input, model["inputs"], strict=True):
        assert [d.dim_value for d in value.type.tensor_type.shape.dim] == spec["shape"]
    assert model["export"]["opset"] == 18


def test_runner_refuses_wrong_input_shape(onnx_export: Path) -> None:
    runner = load_runner(onnx_export)
    inputs, _ = read_golden(onnx_export, runner.model)
    sample = unstack(inputs)[0]
    sample["noise"] = np.zeros((1, 4, 8, 8), np.float32)
    with pytest.raises(Exception, match=r"input 'noise' is float32\[1, 4, 8, 8\], manifest says float32\[1, 4, 16, 16\]"):
        runner.run(sample)


def test_parity_gate_refuses_a_broken_artifact(onnx_export: Path, tmp_path: Path) -> None:
    """Zero one conv weight in the ONNX file: the gate must see the drift and refuse it."""
    import onnx
    from onnx import numpy_helper

    from cdx.distill.generator import build_generator
    from cdx.distill.loading import load_latent_pipeline

    folder = tmp_path / "broken"
    shutil.copytree(onnx_export, folder)
    manifest = load_manifest(folder)
    entry = manifest["models"][0]
    path = folder / entry["file"]
    proto = onnx.load(str(path))
    largest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
    largest.CopyFrom(numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(largest)), largest.name))
    onnx.save(proto, str(path))

    generator, _ = build_generator(load_latent_pipeline(manifest["source"]["path"]))
    batches = seeded_batches(generator, [0, 1], None)
    reference = eager_outputs(generator, batches)
    with pytest.raises(ParityError, match=r"parity gate failed — PSNR .* < 35 dB"):
        parity_gate(folder, manifest, entry, batches, reference)
    record = parity_gate(folder, manifest, entry, batches, reference, force=True)
    assert record["forced"] and not record["passed"]


def test_convert_failure_leaves_nothing_behind(tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdx.convert import export as export_module
    from cdx.errors import ConversionError

    def explode(*_args, **_kwargs):
        raise ConversionError("onnx: export failed at op aten.fake_op")

    monkeypatch.setattr(export_module, "_export_one", explode)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=r"aten\.fake_op"):
        export_module.convert(tiny_sd, out, export_module.ConvertOptions(target="onnx"))
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "the staging folder must be removed"


def test_weights_past_the_protobuf_limit_go_to_external_data_listed_and_hashed(tiny_sd: Path, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A large model's weights go beside the graph (external data: written one tensor at a time, and needed past ONNX's
    2 GB protobuf limit); the threshold is lowered here so a tiny model takes it, fp32 and the fp16 derived from it."""
    from cdx.convert import onnx as onnx_module
    from cdx.convert.export import ConvertOptions, convert

    monkeypatch.setattr(onnx_module, "EXTERNAL_DATA_BYTES", 1000)
    out = tmp_path / "external"
    convert(tiny_sd, out, ConvertOptions(target="onnx", quants=("none", "fp16"), seeds=(0,)))
    data = load_manifest(out)
    listed = {f["path"] for f in data["files"]}
    for model in data["models"]:
        assert model["export"]["external_data"] and model["external_data"]
        assert set(model["external_data"]) <= listed
        assert (out / model["file"]).stat().st_size < 1e6 < (out / model["external_data"][0]).stat().st_size
        assert model["size_bytes"] == sum((out / f).stat().st_size for f in (model["file"], *model["external_data"]))
        assert model["parity"]["passed"]
    fp32, fp16 = data["models"]
    assert fp32["parity"]["max_abs"] <= 1e-4 and fp16["parity"]["psnr_db"] >= 35
    assert fp16["size_bytes"] < 0.6 * fp32["size_bytes"]


def test_manifest_alone_regenerates_the_golden_inputs(onnx_export: Path) -> None:
    """Apps and runners rebuild seeded inputs from the manifest's rule: it must give the golden inputs bit for bit."""
    from cdx.convert.golden import manifest_inputs

    data = load_manifest(onnx_export)
    model = data["models"][0]
    inputs, _ = read_golden(onnx_export, model)
    rebuilt = manifest_inputs(model, data, model["golden"]["seeds"], onnx_export)  # text inputs: the encoded prompts
    for i, batch in enumerate(rebuilt):
        for name, value in batch.items():
            assert value.dtype == inputs[name].dtype and np.array_equal(value, inputs[name][i : i + 1])
