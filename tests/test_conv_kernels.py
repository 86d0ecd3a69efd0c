"""The per-shape conv benchmark: shapes recorded from a graph, FLOPs, and real kernel times from both profilers."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cdx.benchmarks.conv_kernels import ConvShape, conv_calls, measure_shape, render


class TwoConvs(nn.Module):
    """conv a (3→3, 3×3) twice on 16×16, then a strided 1×1 (3→4) once: the counts and shapes are known."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 3, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 1, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(self.a(x)))

    def example_inputs(self) -> dict[str, torch.Tensor]:
        return {"x": torch.zeros(1, 3, 16, 16)}


def test_conv_calls_counts_each_shape_per_forward_pass() -> None:
    calls = conv_calls(TwoConvs())
    assert calls == {ConvShape(3, 3, 3, 1, 1, 1, 16, 16): 2, ConvShape(3, 4, 1, 2, 0, 1, 16, 16): 1}


def test_flops_are_two_multiply_adds_per_output_tap() -> None:
    shape = ConvShape(in_channels=8, out_channels=16, kernel=3, stride=2, padding=1, groups=2, height=10, width=10)
    assert shape.output_hw() == (5, 5)
    assert shape.flops() == 2 * 16 * (8 // 2) * 9 * 25
    assert shape.label() == "8→16 k3 s2 g2 @ 10×10"


def test_measure_shape_times_the_conv_kernel_in_xnnpack_and_onnx_runtime(tmp_path: Path) -> None:
    shape = ConvShape(8, 8, 3, 1, 1, 1, 16, 16)
    result = measure_shape(shape, tmp_path, threads=1, runs=1)
    assert any("convolution" in op.lower() for op in result["executorch_ops"]), result["executorch_ops"]
    assert any("conv" in op.lower() for op in result["ort_ops"]), result["ort_ops"]
    assert result["executorch_ms"] > 0 and result["ort_ms"] > 0 and result["eager_ms"] > 0
    assert result["executorch_ms"] <= result["executorch_call_ms"] + 1e-6
    row = {"label": shape.label(), "calls": 2, "flops": shape.flops(), **result}
    table = render([row], "header")
    assert "8→8 k3 @ 16×16 | 2 |" in table
    assert f"{result['executorch_ms'] / result['ort_ms']:.2f}×" in table
