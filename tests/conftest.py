"""Shared fixtures: tiny models built locally (no hub), and one ONNX export reused by several tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from cdx.quiet import quiet_third_party

quiet_third_party()

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny_sd")


@pytest.fixture(scope="session")
def tiny_unet2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.tiny_models import build_tiny_unet2d

    return build_tiny_unet2d(tmp_path_factory.mktemp("models") / "tiny_unet2d")


@pytest.fixture(scope="session")
def onnx_export(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD-shaped student converted to ONNX (dynamo exporter) with the parity gate."""
    from cdx.convert.export import ConvertOptions, convert

    out = tmp_path_factory.mktemp("exports") / "onnx"
    convert(tiny_sd, out, ConvertOptions(target="onnx"))
    return out


@pytest.fixture(scope="session")
def embedded_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded Fashion-MNIST student as ONNX fp32 + int8-dynamic (class-conditional, 1×32×32 images)."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.defaults import default_student

    out = tmp_path_factory.mktemp("exports") / "embedded_onnx"
    convert(default_student(), out, ConvertOptions(target="onnx", quants=("none", "int8-dynamic"), seeds=(0, 1)))
    return out
