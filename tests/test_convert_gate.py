"""The parity gate catches what PSNR alone misses, and bad input fails in one line that lists what is valid."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from cdx.convert.export import QUANTS, ConvertOptions, convert
from cdx.convert.golden import contrast_batches, eager_outputs, seeded_batches
from cdx.convert.parity import parity_gate
from cdx.distill.generator import build_generator
from cdx.distill.loading import load_latent_pipeline
from cdx.errors import CdxError, InputError, ParityError, UnsupportedError
from cdx.manifest import load_manifest


def _mute_input(path: Path, name: str) -> None:
    """Multiply graph input `name` by zero before every consumer: the artifact ignores its conditioning."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "cdx_zero"))
    _feed_consumers_from(proto, name, f"{name}_muted")
    proto.graph.node.insert(0, helper.make_node("Mul", [name, "cdx_zero"], [f"{name}_muted"]))
    onnx.save(proto, str(path))


def _feed_consumers_from(proto, name: str, replacement: str) -> None:
    """Every node that reads graph input `name` reads `replacement` instead (the caller inserts its producer)."""
    for node in proto.graph.node:
        node.input[:] = [replacement if i == name else i for i in node.input]


def test_gate_refuses_an_artifact_whose_conditioning_collapsed_even_with_good_psnr(onnx_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "collapsed"
    shutil.copytree(onnx_export, folder)
    manifest = load_manifest(folder)
    entry = {**manifest["models"][0], "precision": "int8-static"}  # judged as a quantized artifact
    _mute_input(folder / entry["file"], "text_embedding")
    parts = load_latent_pipeline(manifest["source"]["path"])
    generator, _ = build_generator(parts)
    batches = seeded_batches(generator, [0, 1], None)
    other = contrast_batches([s.name for s in generator.input_specs()], batches, None)
    assert other is not None
    contrast = (other, eager_outputs(generator, other))
    with pytest.raises(ParityError, match=r"sensitivity 0\.00× the float model's along its conditional change \(< 0\.5"):
        parity_gate(folder, manifest, entry, batches, eager_outputs(generator, batches), contrast=contrast)
    record = parity_gate(folder, manifest, entry, batches, eager_outputs(generator, batches), force=True, contrast=contrast)
    assert record["psnr_db"] >= 30, "PSNR alone would have passed this artifact"
    assert record["conditioning_sensitivity"]["aligned_ratio"] == 0.0 and record["forced"] and not record["passed"]


@pytest.mark.parametrize(("target", "quant"), [("onnx", "int8"), ("executorch", "fp16"), ("coreml", "int4")])
def test_unknown_quant_lists_the_valid_ones_for_that_target(target: str, quant: str) -> None:
    with pytest.raises(InputError) as err:
        ConvertOptions(target=target, quants=(quant,)).validate()
    assert str(err.value) == f"unknown --quant {quant!r} for --target {target}; valid: {', '.join(QUANTS[target])}"


def test_unknown_target_and_pass_and_deployment_target_are_one_line_errors() -> None:
    for options, pattern in ((ConvertOptions(target="tflite"), "valid: onnx, executorch, coreml"),
                             (ConvertOptions(target="executorch", passes=("nope",)), "unknown graph pass"),
                             (ConvertOptions(target="coreml", coreml_target="iOS15"), "valid: iOS17, iOS18")):
        with pytest.raises(CdxError, match=pattern) as err:
            options.validate()
        assert "\n" not in str(err.value)


def test_an_op_coreml_cannot_take_is_named_with_target_and_workaround(tiny_unet2d: Path, tmp_path: Path) -> None:
    """A VAE activation swapped for an op coremltools has no translation for: one line, nothing written."""
    import torch

    from cdx.convert.coreml import export_coreml
    from cdx.errors import ConversionError

    class Unsupported(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.special.i0e(x)

    generator, _ = build_generator(load_latent_pipeline(tiny_unet2d))
    generator.vae.decoder.conv_act = Unsupported()
    with pytest.raises(ConversionError) as err:
        export_coreml(generator, tmp_path / "x.mlpackage", "fp32")
    message = str(err.value)
    assert message.startswith("coreml: cannot convert op ") and "i0" in message and " — try " in message
    assert "\n" not in message and not (tmp_path / "x.mlpackage").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS Core ML predicts")
def test_coreml_runner_says_it_needs_macos(onnx_export: Path) -> None:
    from cdx.runtimes.base import open_runner

    manifest = load_manifest(onnx_export)
    entry = {**manifest["models"][0], "format": "mlpackage", "target": "coreml", "file": "x.mlpackage"}
    with pytest.raises(UnsupportedError, match="Core ML prediction needs macOS"):
        open_runner(onnx_export, manifest, entry)


def test_failed_quant_in_a_multi_quant_run_leaves_nothing(tiny_sd: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The first variant is written and gated, the second fails: the whole output folder must not appear."""
    from cdx.convert import parity as parity_module

    real = parity_module.parity_gate
    calls = []

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ParityError("generator_16x16_ort (onnx fp32): parity gate failed — forced for the test")
        return real(*args, **kwargs)

    from cdx.convert import export as export_module

    monkeypatch.setattr(export_module, "parity_gate", second_fails)
    out = tmp_path / "out"
    with pytest.raises(ParityError):
        convert(tiny_sd, out, ConvertOptions(target="onnx", quants=("none", "ort"), seeds=(0,)))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _break_at_execute(path: Path, name: str) -> None:
    """Route input `name` through a Reshape to (7, -1): the graph loads, and fails at execute (1,024 % 7 != 0)."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(path))
    shape = [d.dim_value for d in next(i for i in proto.graph.input if i.name == name).type.tensor_type.shape.dim]
    proto.graph.initializer.extend([numpy_helper.from_array(np.array([7, -1], np.int64), "cdx_bad_shape"),
                                    numpy_helper.from_array(np.array(shape, np.int64), "cdx_shape")])
    _feed_consumers_from(proto, name, f"{name}_back")
    proto.graph.node.insert(0, helper.make_node("Reshape", [f"{name}_bad", "cdx_shape"], [f"{name}_back"]))
    proto.graph.node.insert(0, helper.make_node("Reshape", [name, "cdx_bad_shape"], [f"{name}_bad"]))
    onnx.save(proto, str(path))


def test_a_runtime_failure_inside_the_gate_is_one_line_not_a_traceback(onnx_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fails_at_execute"
    shutil.copytree(onnx_export, folder)
    manifest = load_manifest(folder)
    entry = manifest["models"][0]
    _break_at_execute(folder / entry["file"], "noise")
    parts = load_latent_pipeline(manifest["source"]["path"])
    generator, _ = build_generator(parts)
    batches = seeded_batches(generator, [0], None)
    with pytest.raises(ParityError) as caught:  # ONNX Runtime itself fails inside run()
        parity_gate(folder, manifest, entry, batches, eager_outputs(generator, batches))
    message = str(caught.value)
    assert "the runtime could not run it" in message and entry["name"] in message and "\n" not in message
