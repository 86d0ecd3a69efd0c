"""Core ML target: .mlpackage files whose spec, I/O and ops are checked here (numeric parity runs on macOS only)."""

from __future__ import annotations

import itertools
import json
import shutil
import sys
from pathlib import Path

import pytest

from cdx.convert.export import ConvertOptions, convert
from cdx.errors import ParityError
from cdx.manifest import load_manifest

QUANTS = ("none", "fp16", "int8", "palettize6", "palettize4")


@pytest.fixture(scope="module")
def mlpackages(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "coreml"
    convert(tiny_sd, out, ConvertOptions(target="coreml", quants=QUANTS, seeds=(0, 1)))
    return out


def test_every_precision_is_spec_checked_against_the_manifest(mlpackages: Path) -> None:
    models = load_manifest(mlpackages)["models"]
    assert [m["precision"] for m in models] == ["fp32", "fp16", "int8", "palettize6", "palettize4"]
    for model in models:
        parity = model["parity"]
        if sys.platform == "darwin":
            assert parity["checked"] == "numeric" and parity["spec"]["io_matches_manifest"]
            continue
        assert parity["checked"] == "spec" and "macOS" in parity["reason"]
        assert parity["passed"] and parity["io_matches_manifest"] and parity["mismatches"] == []
        assert parity["specification_version"] >= 8  # iOS17 ML Program
        assert parity["op_histogram"]["conv"] > 10 and parity["op_count"] == sum(parity["op_histogram"].values())
        assert model["export"]["minimum_deployment_target"] == "iOS17"


def test_saved_spec_has_the_manifest_io_names_shapes_and_dtypes(mlpackages: Path) -> None:
    import coremltools as ct

    model = load_manifest(mlpackages)["models"][1]
    spec = ct.models.MLModel(str(mlpackages / model["file"]), skip_model_load=True).get_spec()
    assert [i.name for i in spec.description.input] == ["noise", "text_embedding", "guidance_scale"]
    assert [o.name for o in spec.description.output] == ["image"]
    assert list(spec.description.output[0].type.multiArrayType.shape) == [1, 3, 64, 64]
    assert list(spec.description.input[1].type.multiArrayType.shape) == model["inputs"][1]["shape"]


def test_compressed_variants_shrink_and_record_how(mlpackages: Path) -> None:
    data = load_manifest(mlpackages)
    size = {m["precision"]: m["parity"].get("size_bytes") or m["parity"]["spec"]["size_bytes"] for m in data["models"]}
    assert size["palettize4"] < size["palettize6"] < size["int8"] < size["fp16"] < size["fp32"]
    quant = {m["precision"]: m.get("quantization") for m in data["models"]}
    assert quant["int8"]["dtype"] == "int8" and quant["palettize4"]["nbits"] == 4 and quant["fp16"] is None
    histogram = {m["precision"]: m["parity"].get("op_histogram", {}) for m in data["models"]}
    if sys.platform != "darwin":
        int8_ops = histogram["int8"]
        assert int8_ops.get("constexpr_affine_dequantize", 0) + int8_ops.get("constexpr_blockwise_shift_scale", 0) > 0
        assert histogram["palettize4"].get("constexpr_lut_to_dense", 0) > 0


def test_fp16_records_the_vae_overflow_check(mlpackages: Path) -> None:
    check = load_manifest(mlpackages)["models"][1]["export"]["fp16_overflow_check"]
    assert check["vae_decoder_fp16_finite"] and check["fp32_blocks"] == [] and check["action"] == "none needed: all fp16"
    assert 0 < check["max_abs_activation_fp32"] < 65504


def test_fp16_keeps_overflowing_vae_blocks_in_fp32(tiny_sd: Path, tmp_path: Path) -> None:
    """A VAE block whose activations exceed fp16's range (black images in fp16) is kept fp32 by the op selector."""
    import torch

    from cdx.convert.coreml import export_coreml, fp16_overflow_report
    from cdx.convert.golden import seeded_batches
    from cdx.distill.generator import build_generator
    from cdx.distill.loading import load_latent_pipeline

    generator, _ = build_generator(load_latent_pipeline(tiny_sd))
    with torch.no_grad():
        generator.vae.decoder.up_blocks[1].resnets[0].conv1.weight.mul_(1e5)
    batches = seeded_batches(generator, [0], None)
    report = fp16_overflow_report(generator, batches)
    assert not report["vae_decoder_fp16_finite"]
    assert report["fp32_blocks"] == ["vae.decoder.up_blocks.1"]
    artifact = export_coreml(generator, tmp_path / "g.mlpackage", "fp16", batches=batches)
    check = artifact.export["fp16_overflow_check"]
    assert check["fp32_ops_kept"] > 5 and check["action"].startswith("kept ")
    import coremltools as ct

    spec = ct.models.MLModel(str(tmp_path / "g.mlpackage"), skip_model_load=True).get_spec()
    ops = [op for f in spec.mlProgram.functions.values() for b in f.block_specializations.values() for op in b.operations]
    convs = [op for op in ops if op.type == "conv"]
    fp32_convs = [op for op in convs if op.outputs[0].type.tensorType.dataType == ct.proto.MIL_pb2.DataType.Value("FLOAT32")]
    assert 0 < len(fp32_convs) < len(convs)


def test_spec_gate_refuses_an_mlpackage_that_disagrees_with_the_manifest(mlpackages: Path, tmp_path: Path) -> None:
    if sys.platform == "darwin":
        pytest.skip("numeric gate on macOS")
    folder = tmp_path / "bad"
    shutil.copytree(mlpackages, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    entry = manifest["models"][1]
    entry["outputs"][0]["shape"] = [1, 3, 128, 128]
    from cdx.convert.parity import parity_gate

    with pytest.raises(ParityError, match=r"Core ML spec does not match the manifest: output 'image' shape \[1, 3, 64, 64\]"):
        parity_gate(folder, manifest, entry, [], [])


# ---- --chunks: the UNet step as N sequential .mlpackages ------------------------------------------------------------
def _step_graph(model: Path):
    from cdx.distill.generator import build_generator
    from cdx.distill.graphs import build_components
    from cdx.distill.loading import load_latent_pipeline

    generator, _ = build_generator(load_latent_pipeline(model))
    return build_components(generator)[0]


def _assert_chain(chunks: list[dict], step_inputs: list[dict]) -> None:
    """Chunk 0 takes only step inputs; chunk i+1 takes step inputs plus exactly chunk i's outputs (name, shape, dtype);
    the last one outputs `denoised`."""
    originals = {s["name"]: s for s in step_inputs}
    assert all(s["name"] in originals for s in chunks[0]["inputs"])
    for before, after in itertools.pairwise(chunks):
        carried = [s for s in after["inputs"] if s["name"] not in originals]
        assert [(s["name"], s["shape"], s["dtype"]) for s in carried] == \
            [(s["name"], s["shape"], s["dtype"]) for s in before["outputs"]]
        assert all(s == originals[s["name"]] for s in after["inputs"] if s["name"] in originals)
    assert [s["name"] for s in chunks[-1]["outputs"]] == ["denoised"]


@pytest.mark.parametrize("count", [2, 3])
def test_chunks_chain_and_run_in_order_reproduce_the_step_graph(tiny_sd: Path, count: int) -> None:
    import torch

    from cdx.convert.unet_chunks import chunk_step_graph

    step = _step_graph(tiny_sd)
    chunks = chunk_step_graph(step, count)
    assert len(chunks) == count
    _assert_chain([{"inputs": [s.as_dict() for s in c.input_specs()], "outputs": [s.as_dict() for s in c.output_specs()]}
                   for c in chunks], [s.as_dict() for s in step.input_specs()])
    # every UNet weight is in exactly one chunk
    owned = [id(p) for c in chunks for p in c.parameters()]
    assert len(owned) == len(set(owned)) and set(owned) == {id(p) for p in step.unet.parameters()}
    inputs = step.example_inputs(seed=5)
    with torch.no_grad():
        whole = step(*inputs.values())
        state = dict(inputs)
        for chunk in chunks:
            out = chunk(*(state[s.name] for s in chunk.input_specs()))
            out = out if isinstance(out, tuple) else (out,)
            for spec, value in zip(chunk.output_specs(), out, strict=True):
                assert list(value.shape) == list(spec.shape) and str(value.dtype) == f"torch.{spec.dtype}"
                state[spec.name] = value
    assert float((state["denoised"] - whole).abs().max()) <= 1e-6


def test_chunk_boundaries_balance_weight_bytes() -> None:
    from cdx.convert.unet_chunks import balanced_boundaries
    from cdx.errors import InputError

    assert balanced_boundaries([1, 1, 1, 1], 2) == [2]
    assert balanced_boundaries([5, 1, 1, 1, 1, 1], 2) == [1]  # the largest piece is what must fit: 5 vs 5
    assert balanced_boundaries([1, 2, 3, 4, 5], 3) == [3, 4]  # 6 | 4 | 5
    with pytest.raises(InputError, match="--chunks 6: must be between 2 and 5"):
        balanced_boundaries([1, 2, 3, 4, 5], 6)


def test_convert_chunks_writes_n_mlpackages_and_the_decoder_each_sized_and_spec_checked(tiny_sd: Path,
                                                                                         tmp_path: Path) -> None:
    out = tmp_path / "chunked"
    convert(tiny_sd, out, ConvertOptions(target="coreml", quants=("fp16",), mode="components", chunks=2, seeds=(0,)))
    models = load_manifest(out)["models"]
    chunks = [m for m in models if m["role"] == "unet_chunk"]
    assert [m["role"] for m in models] == ["unet_chunk", "unet_chunk", "vae_decoder"]
    assert [m["chunk"]["index"] for m in chunks] == [0, 1] and {m["chunk"]["count"] for m in chunks} == {2}
    assert {m["chunk"]["of"] for m in chunks} == {"unet_step_16x16"}
    assert "consistency_scaling" in chunks[1]["contains"] and "consistency_scaling" not in chunks[0]["contains"]
    _assert_chain(chunks, [s.as_dict() for s in _step_graph(tiny_sd).input_specs()])
    for model in models:
        folder = out / model["file"]
        assert model["file"].endswith(".mlpackage") and folder.is_dir()
        assert model["size_bytes"] == sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        if sys.platform != "darwin":
            assert model["parity"]["checked"] == "spec" and model["parity"]["io_matches_manifest"]
        assert set(model["golden"]["inputs"]) == {s["name"] for s in model["inputs"]}
    assert max(m["size_bytes"] for m in chunks) < 0.75 * sum(m["size_bytes"] for m in chunks)


@pytest.mark.parametrize(("target", "mode"), [("onnx", "components"), ("coreml", "generator")])
def test_chunks_need_coreml_components_one_line(target: str, mode: str) -> None:
    from cdx.errors import InputError

    with pytest.raises(InputError, match=r"--chunks 2: splitting the UNet needs --target coreml --mode components"):
        ConvertOptions(target=target, quants=("none",), mode=mode, chunks=2).validate()


def test_chunks_refuse_a_unet2dmodel_in_one_line(tiny_unet2d: Path) -> None:
    from cdx.convert.unet_chunks import chunk_step_graph
    from cdx.errors import UnsupportedError

    with pytest.raises(UnsupportedError, match="--chunks: cdx chunks UNet2DConditionModel"):
        chunk_step_graph(_step_graph(tiny_unet2d), 2)
