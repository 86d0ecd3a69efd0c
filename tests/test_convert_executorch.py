"""ExecuTorch target: fp32 and int8 .pte files run in the real ExecuTorch runtime and match eager PyTorch.

Lowering costs ~0.1 s per graph node on 2 cores (STACK.md: the tiny SD generator takes minutes), so these tests use a
micro class-conditional pipeline built here from the same diffusers classes (UNet2DModel + AutoencoderKL, GroupNorm,
attention, nearest upsample): every pass and the whole driver run on it in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

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


@pytest.fixture(scope="module")
def micro_generator(micro: Path):
    from cdx.distill.generator import build_generator
    from cdx.distill.loading import load_latent_pipeline

    generator, _ = build_generator(load_latent_pipeline(micro), 1)
    return generator


def test_lowering_in_a_child_process_writes_the_same_program(micro_generator, tmp_path: Path) -> None:
    """Large models lower in a forked child (its native leftovers leave with it); the .pte and record are the same."""
    from cdx.convert.executorch import export_executorch

    here = export_executorch(micro_generator, tmp_path / "here.pte", isolate=False)
    child = export_executorch(micro_generator, tmp_path / "child.pte", isolate=True)
    assert (tmp_path / "child.pte").read_bytes() == (tmp_path / "here.pte").read_bytes()
    assert child.export["delegation"] == here.export["delegation"] and child.export["passes"] == here.export["passes"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.pte", "here.pte"]  # no result/log files left


def test_a_failure_inside_the_lowering_child_is_one_line_and_leaves_no_file(micro_generator, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import cdx.convert.executorch as et
    from cdx.errors import ConversionError

    def broken_lower(*_args, **_kwargs):
        raise RuntimeError("XNNPACK refused node conv_17")

    monkeypatch.setattr(et, "lower", broken_lower)
    with pytest.raises(ConversionError, match="XNNPACK refused node conv_17") as caught:
        et.export_executorch(micro_generator, tmp_path / "g.pte", isolate=True)
    assert "\n" not in str(caught.value) and list(tmp_path.iterdir()) == []


def test_a_lowering_child_killed_by_a_signal_is_named(micro_generator, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel's OOM killer ends the child with SIGKILL: the parent says so instead of hanging or crashing."""
    import os
    import signal

    import cdx.convert.executorch as et
    from cdx.errors import ConversionError

    def killed_lower(*_args, **_kwargs):
        (tmp_path / "g.pte").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)

    monkeypatch.setattr(et, "lower", killed_lower)
    with pytest.raises(ConversionError, match=r"g\.pte ended without a result: killed by signal 9 \(out of memory\?\)"):
        et.export_executorch(micro_generator, tmp_path / "g.pte", isolate=True)
    assert list(tmp_path.iterdir()) == []


def test_only_large_models_lower_in_a_child_by_default(micro_generator) -> None:
    import sys

    from cdx.convert.executorch import ISOLATE_FROM_BYTES, _isolate_by_default, _weight_bytes

    assert _weight_bytes(micro_generator) < ISOLATE_FROM_BYTES and not _isolate_by_default(micro_generator)
    big = torch.nn.Linear(8192, 8192)  # 256 MiB of fp32 weights
    assert _isolate_by_default(big) == sys.platform.startswith("linux")


def _lowerable(generator) -> torch.export.ExportedProgram:
    from cdx.convert.executorch import export_program
    from cdx.convert.passes import apply_passes, resolve_passes

    module, _ = apply_passes(generator, resolve_passes(None))
    return export_program(module, tuple(generator.example_inputs().values()))


def _lowered_partitions(edge) -> list:
    from executorch.exir.lowered_backend_module import LoweredBackendModule

    graph = edge.exported_program().graph_module
    return [m for m in graph.children() if isinstance(m, LoweredBackendModule)]


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors if isinstance(t, torch.Tensor)}


def test_xnnpack_preprocess_gets_the_partitions_own_weights_and_the_program_is_unchanged(
        micro_generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """ExecuTorch deep-copies every partition before XNNPACK's preprocess (a second copy of all weights at SD scale);
    cdx's lowering makes that copy share the constants. share_constants=False is ExecuTorch's own copy, the control:
    the same .pte, and none of the partitions' tensors reach preprocess."""
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend

    from cdx.convert.executorch import lower

    received: list[set[int]] = []
    preprocess = XnnpackBackend.preprocess  # a staticmethod

    def recording(edge_program, compile_specs):
        received.append(_storages(edge_program.state_dict.values()))
        return preprocess(edge_program, compile_specs)

    monkeypatch.setattr(XnnpackBackend, "preprocess", staticmethod(recording))
    runs = {}
    for share in (True, False):
        received.clear()
        edge = lower(_lowerable(micro_generator), share_constants=share)
        weights = [(t, t.detach().clone()) for m in _lowered_partitions(edge)
                   for t in m.original_module.state_dict.values()]
        program = edge.to_executorch().buffer
        runs[share] = (set().union(*received), _storages(t for t, _ in weights), weights, program)
    (seen, partitions, weights, shared_program), (seen_copy, partitions_copy, _, copied_program) = runs[True], runs[False]
    assert len(seen) > 10 and seen <= partitions  # preprocess read the partitions' own tensors
    assert len(seen_copy) > 10 and not seen_copy & partitions_copy  # ExecuTorch's default: a copy of each
    assert shared_program == copied_program
    assert all(torch.equal(t, before) for t, before in weights)  # preprocess wrote none of them
    assert "copy_exported_program_for_preprocess" not in vars(XnnpackBackend)  # ExecuTorch's own method is back
