"""ExecuTorch target: fp32 and int8 .pte files run in the real ExecuTorch runtime and match eager PyTorch.

Lowering costs ~0.1 s per graph node on 2 cores (STACK.md: the tiny SD generator takes minutes), so these tests use a
micro class-conditional pipeline built here from the same diffusers classes (UNet2DModel + AutoencoderKL, GroupNorm,
attention, nearest upsample): every pass and the whole driver run on it in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cdx.convert.export import ConvertOptions, convert
from cdx.convert.golden import read_golden, unstack
from cdx.manifest import load_manifest
from cdx.runtimes import load_runner
from cdx.tiny_models import build_tiny_class_pipeline


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1-level UNet2DModel (16 channels, mid attention) + 2-level AutoencoderKL."""
    return build_tiny_class_pipeline(tmp_path_factory.mktemp("models") / "micro")


@pytest.fixture(scope="module")
def pte_export(micro: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exports") / "pte"
    convert(micro, out, ConvertOptions(target="executorch", quants=("none", "int8"), seeds=(0, 1, 2, 3)))
    return out


def test_pte_fp32_matches_eager_within_1e4(pte_export: Path) -> None:
    et = load_runner(pte_export, "generator_8x8", runtime="executorch")
    eager = load_runner(pte_export, "generator_8x8", runtime="torch")
    inputs, golden = read_golden(pte_export, et.model)
    assert sorted(inputs) == ["class_label", "noise"]
    for i, sample in enumerate(unstack(inputs)):
        ours = et.run(sample)["image"]
        assert np.abs(ours - eager.run(sample)["image"]).max() <= 1e-4
        assert np.abs(ours - golden["image"][i : i + 1]).max() <= 1e-4
    assert et.model["parity"]["checked"] == "numeric" and et.model["parity"]["runtime"] == "executorch"


def test_delegation_summary_is_recorded_and_group_norm_is_delegated(pte_export: Path) -> None:
    """fp32: GroupNorm decomposed and delegated. int8: the pass is left out (see convert/executorch.py
    `_NOT_FOR_INT8`), so its GroupNorm runs in the portable kernels and the record says so."""
    for model in load_manifest(pte_export)["models"]:
        export = model["export"]
        summary = export["delegation"]
        int8 = model["precision"].startswith("int8")
        assert summary["delegate_calls"] >= 1 and summary["delegated_ops"] > 10 * summary["portable_ops"]
        allowed = ("group_norm",) if int8 else ()
        assert not any(("group_norm" in op and "group_norm" not in allowed) or "layer_norm" in op or "upsample" in op
                       for op in summary["portable_op_names"])
        assert export["passes"]["plain_attention"] > 0
        assert ("decompose_group_norm" not in export["passes"]) if int8 else export["passes"]["decompose_group_norm"] > 0


def test_int8_pte_is_smaller_passes_the_gate_and_keeps_the_class_signal(pte_export: Path) -> None:
    data = load_manifest(pte_export)
    fp32, int8 = data["models"]
    assert (fp32["precision"], int8["precision"]) == ("fp32", "int8")
    sizes = {f["path"]: f["size_bytes"] for f in data["files"]}
    assert sizes[int8["file"]] < sizes[fp32["file"]]
    parity = int8["parity"]
    assert parity["passed"] and parity["psnr_db"] >= 30 and 0 < parity["ssim"] <= 1
    assert parity["conditioning_sensitivity"]["ratio"] >= 0.5
    assert int8["quantization"]["calibration_samples"] == 8
    runner = load_runner(pte_export, int8["name"])
    assert runner.runtime == "executorch", "pte must default to the ExecuTorch runtime"


def test_passes_can_be_turned_off_and_then_group_norm_stays_portable(micro: Path, tmp_path: Path) -> None:
    out = tmp_path / "nopass"
    convert(micro, out, ConvertOptions(target="executorch", quants=("none",), seeds=(0,), passes=()))
    summary = load_manifest(out)["models"][0]["export"]["delegation"]
    assert any("native_group_norm" in op for op in summary["portable_op_names"])


def test_coreml_delegated_pte_is_written_and_honestly_not_run_here(micro: Path, tmp_path: Path) -> None:
    """The Core ML partitioner lowers on Linux, but only an Apple device has the CoreMLBackend to run the .pte."""
    from cdx.errors import UnsupportedError

    out = tmp_path / "coreml_pte"
    convert(micro, out, ConvertOptions(target="executorch", quants=("coreml",), seeds=(0,)))
    model = load_manifest(out)["models"][0]
    assert model["export"]["delegate"] == "coreml" and model["export"]["delegation"]["delegate_calls"] >= 1
    assert model["parity"]["checked"] == "none" and "CoreMLBackend" in model["parity"]["reason"]
    assert (out / model["file"]).stat().st_size > 10_000
    with pytest.raises(UnsupportedError, match="runs only on Apple devices"):
        load_runner(out, model["name"])
