"""Each convolution of a one-step generator, alone: XNNPACK's kernel time vs ONNX Runtime's, per shape.

`python -m cdx.benchmarks.et_profile` shows where ExecuTorch loses to ORT on the whole generator by op family; at SD
scale it is the convolutions. This narrows that down to shapes: it records every `nn.Conv2d` call of the generator
(input shape, channels, kernel, stride, groups) with forward hooks, builds each distinct shape as a one-conv graph with
seeded random weights, exports it with convert's own exporters (`et_profile.export_artifacts`: ONNX, and the .pte with
cdx's passes and XNNPACK), and profiles both runtimes the way `et_profile` does (ETDump for XNNPACK's operator,
ORT's profiler for its Conv kernel), so the table compares kernel time with kernel time — no graph, no layout
conversion at the graph's edges; PyTorch eager (oneDNN) is timed as a third reference (wall time of the call).
Rows are weighted by how often the generator calls each shape.

    python -m cdx.benchmarks.conv_kernels --config sd-small --threads 1 [--top 12] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdx.atomic import atomic_write_text


@dataclass(frozen=True)
class ConvShape:
    """One convolution call: input (C, H, W) and the layer's hyper-parameters."""

    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    groups: int
    height: int
    width: int

    def output_hw(self) -> tuple[int, int]:
        def side(n: int) -> int:
            return (n + 2 * self.padding - self.kernel) // self.stride + 1

        return side(self.height), side(self.width)

    def flops(self) -> int:
        """Multiply-adds × 2 of one call (bias ignored)."""
        h, w = self.output_hw()
        return 2 * self.out_channels * (self.in_channels // self.groups) * self.kernel ** 2 * h * w

    def label(self) -> str:
        return (f"{self.in_channels}→{self.out_channels} k{self.kernel}"
                + (f" s{self.stride}" if self.stride != 1 else "") + (f" g{self.groups}" if self.groups != 1 else "")
                + f" @ {self.height}×{self.width}")


def conv_calls(graph: nn.Module) -> Counter[ConvShape]:
    """Every Conv2d call of one forward pass of `graph` on its example inputs, counted by shape."""
    calls: Counter[ConvShape] = Counter()

    def record(module: nn.Conv2d, args: tuple[torch.Tensor, ...]) -> None:
        if not (isinstance(module.padding, tuple) and len(set(module.padding)) == 1 and len(set(module.kernel_size)) == 1
                and len(set(module.stride)) == 1):
            return
        _, c, h, w = args[0].shape
        calls[ConvShape(c, module.out_channels, module.kernel_size[0], module.stride[0], module.padding[0],
                        module.groups, h, w)] += 1

    handles = [m.register_forward_pre_hook(record) for m in graph.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            graph(*graph.example_inputs().values())
    finally:
        for handle in handles:
            handle.remove()
    return calls


class ConvGraph(nn.Module):
    """A single convolution as an exportable graph (convert's exporter interface)."""

    role = "conv"

    def __init__(self, shape: ConvShape, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.shape = shape
        self.conv = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, shape.stride, shape.padding,
                              groups=shape.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def input_specs(self) -> list[Any]:
        from cdx.distill.generator import TensorSpec

        s = self.shape
        return [TensorSpec("x", (1, s.in_channels, s.height, s.width), "float32")]

    def output_specs(self) -> list[Any]:
        from cdx.distill.generator import TensorSpec

        h, w = self.shape.output_hw()
        return [TensorSpec("y", (1, self.shape.out_channels, h, w), "float32")]

    def example_inputs(self, seed: int = 0, **_: Any) -> dict[str, torch.Tensor]:
        s = self.shape
        return {"x": torch.randn((1, s.in_channels, s.height, s.width), generator=torch.Generator().manual_seed(seed))}

    def contains(self) -> list[str]:
        return ["conv"]


def kernel_ms(profile: dict[str, Any], pattern: str) -> float:
    """Summed time of the ops whose name contains `pattern` (the conv kernel of a one-conv profile)."""
    return sum(v["ms"] for op, v in profile["ops"].items() if pattern in op.lower())


def eager_ms(graph: ConvGraph, threads: int, runs: int) -> float:
    """PyTorch's own conv (oneDNN on x86), median wall time of `runs` warm calls: a third reference."""
    import statistics
    import time

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    x = graph.example_inputs()["x"]
    times = []
    with torch.no_grad():
        for i in range(runs + 1):
            start = time.perf_counter()
            graph(x)
            if i:
                times.append((time.perf_counter() - start) * 1e3)
    torch.set_num_threads(previous)
    return statistics.median(times)


def measure_shape(shape: ConvShape, work: Path, threads: int, runs: int) -> dict[str, Any]:
    """XNNPACK and ORT kernel time of one conv shape (ms per call), each from its runtime's profiler."""
    from cdx.benchmarks.et_profile import export_artifacts, load_inputs, profile_et, profile_ort

    graph = ConvGraph(shape).eval()
    paths = export_artifacts(graph, work, None, say=lambda _m: None)
    inputs = load_inputs(paths["inputs"])
    et = profile_et(paths["pte"], paths["etrecord"], inputs, threads, runs, work)
    ort = profile_ort(paths["onnx"], inputs, threads, runs, work)
    return {"executorch_ms": kernel_ms(et, "convolution"), "eager_ms": eager_ms(graph, threads, runs),
            "executorch_call_ms": et["total_ms"], "ort_ms": kernel_ms(ort, "conv"), "ort_call_ms": ort["total_ms"],
            "executorch_ops": sorted(et["ops"]), "ort_ops": sorted(ort["ops"])}


def render(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "", "| conv (in→out, kernel @ input) | calls | GFLOP / call | XNNPACK ms | ORT ms | XNNPACK GFLOP/s "
             "| ORT GFLOP/s | torch GFLOP/s | XNNPACK / ORT | share of XNNPACK conv time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total_et = sum(r["calls"] * r["executorch_ms"] for r in rows) or 1.0
    for r in rows:
        gflop = r["flops"] / 1e9
        rates = " | ".join(f"{gflop / r[key] * 1e3:.1f}" for key in ("executorch_ms", "ort_ms", "eager_ms"))
        lines.append(f"| {r['label']} | {r['calls']} | {gflop:.3f} | {r['executorch_ms']:.2f} | {r['ort_ms']:.2f} | "
                     f"{rates} | "
                     f"{r['executorch_ms'] / r['ort_ms']:.2f}× | {r['calls'] * r['executorch_ms'] / total_et:.1%} |")
    et = sum(r["calls"] * r["executorch_ms"] for r in rows)
    ort = sum(r["calls"] * r["ort_ms"] for r in rows)
    lines.append(f"| **all measured convs, weighted by calls** | {sum(r['calls'] for r in rows)} | | {et:.1f} | {ort:.1f} "
                 f"| | | | **{et / ort:.2f}×** | |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="sd-small", help="an SD config of cdx.benchmarks.sd_configs")
    parser.add_argument("--model", type=Path, default=None, help="a pipeline folder instead of building --config")
    parser.add_argument("--graph", choices=("generator", "decoder"), default="generator")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=3, help="profiled warm runs per shape and runtime")
    parser.add_argument("--top", type=int, default=0, help="only the N shapes with the most FLOPs × calls (0 = all)")
    parser.add_argument("--work", type=Path, default=Path("out/conv_kernels"))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)

    from cdx.benchmarks.et_profile import build_graph
    from cdx.machine import describe_machine

    graph = build_graph(args.graph, args.config, args.model, args.work, args.resolution)
    calls = conv_calls(graph)
    del graph
    shapes = sorted(calls, key=lambda s: -s.flops() * calls[s])
    if args.top:
        shapes = shapes[:args.top]
    total_flops = sum(s.flops() * n for s, n in calls.items())
    rows = []
    for i, shape in enumerate(shapes):
        result = measure_shape(shape, args.work / "shapes" / f"{i:03d}", args.threads, args.runs)
        rows.append({**asdict(shape), "label": shape.label(), "calls": calls[shape], "flops": shape.flops(), **result})
        print(f"[{i + 1}/{len(shapes)}] {shape.label()} ×{calls[shape]}: XNNPACK {result['executorch_ms']:.2f} ms, "
              f"ORT {result['ort_ms']:.2f} ms", flush=True)
    covered = sum(r["flops"] * r["calls"] for r in rows)
    header = (f"{args.config if args.model is None else args.model} {args.graph}: {sum(calls.values())} conv calls, "
              f"{len(calls)} distinct shapes, {total_flops / 1e9:.1f} GFLOP per call of the graph; the rows cover "
              f"{covered / total_flops:.0%} of it. {args.threads} thread(s) each, kernel time from each runtime's "
              f"profiler, mean of {args.runs} warm runs; machine: {describe_machine('cpu')}.")
    text = render(rows, header)
    print(text)
    if args.json:
        atomic_write_text(args.json, json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    return text


if __name__ == "__main__":
    main()
