"""Where ExecuTorch XNNPACK spends its time vs ONNX Runtime on the same one-step generator, per op type.

`python -m cdx.benchmarks.et_profile --config sd-small` builds the random-weight SD-small pipeline
(`cdx.benchmarks.sd_configs`), exports its one-step generator once per runtime with convert's own exporters (ONNX:
the original graph, ORT optimises it at load; ExecuTorch: cdx's graph passes, then XNNPACK lowering), and then:

1. times both runtimes on the same input, runs interleaved (ET, ORT, ET, ORT, …) so machine load hits both alike;
2. profiles one warm run of each: ExecuTorch with ETDump (the wheel's event tracer + XNNPACK's per-operator
   profiling, read by `executorch.devtools.Inspector`), ORT with `SessionOptions.enable_profiling` (per-node
   kernel times from its JSON trace);
3. prints per-op-type tables for both (ms per run, share, count) and a side-by-side by op family (conv, matmul, …).

Thread counts are set explicitly on both sides (ORT intra-op threads, ExecuTorch's XNNPACK threadpool) and printed.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

# op family of an ORT op type / an XNNPACK operator name / an ExecuTorch portable kernel (first match wins)
_FAMILIES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("conv", re.compile(r"conv|deconvolution", re.I)),
    ("matmul", re.compile(r"matmul|gemm|fully connected|batch matrix|\bbmm\b|addmm|\bmm\b|linear", re.I)),
    ("softmax", re.compile(r"softmax", re.I)),
    ("norm", re.compile(r"norm|mean|reduce|rsqrt|sqrt|average pooling", re.I)),
    ("activation", re.compile(r"sigmoid|silu|swish|gelu|tanh|erf|relu|clamp|hardswish", re.I)),
    ("elementwise", re.compile(r"add|sub|mul|div|pow|neg|exp|sin|cos|square|maximum|minimum|where", re.I)),
    ("layout", re.compile(r"transpose|permute|reshape|copy|concat|cat\b|slice|split|view|expand|squeeze|gather"
                          r"|resize|upsample|pad|constant|shape|cast|dim_order|unary", re.I)),
)


def family(op: str) -> str:
    """Coarse op family, so ORT's and XNNPACK's names can be compared row by row."""
    return next((name for name, pattern in _FAMILIES if pattern.search(op)), "other")


# ---- artifacts ---------------------------------------------------------------------------------------------------
def build_graph(kind: str, config: str, model: Path | None, work: Path, resolution: int | None) -> Any:
    """The graph to profile: the one-step generator of `model` (built from `config` when None), or only its VAE
    decoder (`kind="decoder"`; from `config` it needs no UNet at all, so SD-1.5's decoder fits a small machine)."""
    from cdx.benchmarks.sd_configs import CONFIGS, build_sd_config_student, sd_config_vae
    from cdx.distill.generator import build_generator
    from cdx.distill.graphs import DecoderGraph, build_components
    from cdx.distill.loading import load_latent_pipeline

    if kind == "decoder" and model is None:
        side = int(resolution or CONFIGS[config]["resolution"])
        vae = sd_config_vae(config, side)
        return DecoderGraph(vae, vae.config.scaling_factor, None, (1, 4, side // 8, side // 8)).eval()
    if model is None:
        model = work / "pipeline"
        if not model.exists():
            build_sd_config_student(model, config, resolution, say=print)
    parts = load_latent_pipeline(model)
    latent_hw = None if resolution is None else (resolution // parts.vae_scale_factor,) * 2
    generator, _ = build_generator(parts, 1, latent_hw=latent_hw)
    return build_components(generator)[1] if kind == "decoder" else generator


def export_artifacts(graph: Any, work: Path, passes: tuple[str, ...] | None, say: Any = print) -> dict[str, Path]:
    """`graph` as .onnx (original graph) and .pte (+ ETRecord) in `work`, each built once and reused."""
    from cdx.convert.executorch import delegation_summary, export_program, format_summary, lower
    from cdx.convert.onnx import export_onnx
    from cdx.convert.passes import apply_passes

    work.mkdir(parents=True, exist_ok=True)
    paths = {"onnx": work / "graph.onnx", "pte": work / "graph.pte", "etrecord": work / "graph.etrecord",
             "inputs": work / "inputs.npz", "summary": work / "delegation.json"}
    if all(p.exists() for p in paths.values()):
        say(f"reusing the exported graphs in {work}")
        return paths
    inputs = graph.example_inputs()
    np.savez(paths["inputs"], **{k: v.numpy() for k, v in inputs.items()})
    if not paths["onnx"].exists():  # the original graph: passes are ExecuTorch's, so a pass change keeps this one
        start = time.perf_counter()
        export_onnx(graph, paths["onnx"])
        say(f"ONNX export: {time.perf_counter() - start:.0f} s")
    start = time.perf_counter()
    module, counts = apply_passes(graph, passes)
    edge = lower(export_program(module, tuple(inputs.values())), "xnnpack", etrecord=True)
    summary = delegation_summary(edge)
    program = edge.to_executorch()
    paths["pte"].write_bytes(program.buffer)
    program.get_etrecord().save(str(paths["etrecord"]))
    paths["summary"].write_text(json.dumps({"passes": counts, **summary}, indent=2) + "\n", "utf-8")
    say(f"ExecuTorch export: {time.perf_counter() - start:.0f} s; {format_summary(summary)}")
    del edge, program, module
    gc.collect()
    return paths


def load_inputs(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


# ---- runtimes ----------------------------------------------------------------------------------------------------
def ort_session(path: Path, threads: int, profile_prefix: Path | None = None) -> Any:
    import onnxruntime as ort

    from cdx.runtimes.ort import session_options

    options = session_options(threads)
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(profile_prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def et_method(path: Path, threads: int, etdump: bool = False) -> tuple[Any, Any]:
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    from cdx.quiet import filtered_stderr

    portable_lib._unsafe_reset_threadpool(threads)
    with filtered_stderr():
        program = Runtime.get().load_program(str(path), enable_etdump=etdump)
        return program, program.load_method("forward")


def interleaved_timing(session: Any, method: Any, inputs: dict[str, np.ndarray], runs: int) -> dict[str, list[float]]:
    """Wall time of each runtime's warm runs, alternating so load drifts hit both alike (one warm-up each first)."""
    import torch

    et_inputs = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]
    times: dict[str, list[float]] = {"executorch": [], "onnxruntime": []}
    outputs = {}
    for i in range(runs + 1):
        start = time.perf_counter()
        outputs["executorch"] = method.execute(et_inputs)[0].numpy()
        et = time.perf_counter() - start
        start = time.perf_counter()
        outputs["onnxruntime"] = session.run(None, inputs)[0]
        ort = time.perf_counter() - start
        if i:
            times["executorch"].append(et * 1e3)
            times["onnxruntime"].append(ort * 1e3)
    times["max_abs_diff"] = [float(np.abs(outputs["executorch"] - outputs["onnxruntime"]).max())]
    return times


def profile_ort(path: Path, inputs: dict[str, np.ndarray], threads: int, runs: int, work: Path) -> dict[str, Any]:
    """ORT per-op-type kernel time (ms per run) over `runs` warm runs, from its profiler's JSON trace."""
    session = ort_session(path, threads, work / "ort_profile")
    session.run(None, inputs)  # warm-up (its events are dropped below)
    for _ in range(runs):
        session.run(None, inputs)
    trace = json.loads(Path(session.end_profiling()).read_text())
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("cat") == "Session" and e["name"] == "model_run")
    warm = windows[1:]
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for event in trace:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        if not any(lo <= event["ts"] <= hi for lo, hi in warm):
            continue
        row = per_op[event["args"]["op_name"]]
        row[0] += event["dur"] / 1e3 / len(warm)
        row[1] += 1 / len(warm)
    total = statistics.mean(hi - lo for lo, hi in warm) / 1e3
    return {"total_ms": total, "ops": {op: {"ms": ms, "count": round(n)} for op, (ms, n) in per_op.items()}}


_INSTANCE = re.compile(r"\s*#\d+$")


def profile_et(path: Path, etrecord: Path, inputs: dict[str, np.ndarray], threads: int, runs: int,
               work: Path) -> dict[str, Any]:
    """ExecuTorch per-op-type time (ms per run) from ETDump: XNNPACK's operators inside each delegate call, portable
    kernels outside, and the delegate-call overhead (delegate call time minus the XNNPACK operators it ran)."""
    import torch
    from executorch.devtools import Inspector

    program, method = et_method(path, threads, etdump=True)
    tensors = [torch.from_numpy(np.ascontiguousarray(v)) for v in inputs.values()]
    for _ in range(runs + 1):
        method.execute(tensors)
    etdump = work / "generator.etdp"
    program.write_etdump_result_to_file(str(etdump), str(work / "generator.debug.bin"))
    inspector = Inspector(etdump_path=str(etdump), etrecord=str(etrecord))
    per_op: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    delegate_ms = xnn_ms = total = 0.0
    delegate_calls = 0
    for block in inspector.event_blocks:
        if block.name != "Execute":
            continue
        for event in block.events:
            if not event.perf_data:
                continue
            warm = event.perf_data.raw[1:] or event.perf_data.raw
            ms = float(np.mean(warm))
            if event.name == "Method::execute":
                total += ms
            elif event.name == "DELEGATE_CALL":
                delegate_ms += ms
                delegate_calls += 1
            elif event.is_delegated_op:
                name = "xnnpack: " + _INSTANCE.sub("", event.name)
                per_op[name][0] += ms
                per_op[name][1] += 1
                xnn_ms += ms
            else:
                name = "portable: " + (event.op_types[0] if event.op_types else event.name)
                per_op[name][0] += ms
                per_op[name][1] += 1
    per_op["delegate call overhead"] = [delegate_ms - xnn_ms, delegate_calls]
    return {"total_ms": total, "delegate_calls": delegate_calls,
            "ops": {op: {"ms": ms, "count": n} for op, (ms, n) in per_op.items()}}


# ---- report ------------------------------------------------------------------------------------------------------
def op_table(profile: dict[str, Any], title: str, top: int = 25) -> str:
    rows = sorted(profile["ops"].items(), key=lambda kv: -kv[1]["ms"])
    accounted = sum(v["ms"] for _, v in rows)
    lines = [f"{title}: {profile['total_ms']:.1f} ms per run ({accounted:.1f} ms in ops)",
             "| op type | family | count | ms / run | share |", "|---|---|---:|---:|---:|"]
    for op, value in rows[:top]:
        lines.append(f"| {op} | {family(op.split(': ', 1)[-1])} | {value['count']} | {value['ms']:.1f} | "
                     f"{value['ms'] / profile['total_ms']:.1%} |")
    if len(rows) > top:
        rest = sum(v["ms"] for _, v in rows[top:])
        lines.append(f"| ({len(rows) - top} more) | | | {rest:.1f} | {rest / profile['total_ms']:.1%} |")
    return "\n".join(lines)


def family_table(et: dict[str, Any], ort: dict[str, Any]) -> str:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for op, value in et["ops"].items():
        key = "delegate overhead" if op == "delegate call overhead" else family(op.split(": ", 1)[-1])
        sums[key][0] += value["ms"]
    for op, value in ort["ops"].items():
        sums[family(op)][1] += value["ms"]
    lines = ["| op family | ExecuTorch ms | ORT ms | ET / ORT |", "|---|---:|---:|---:|"]
    for key, (e, o) in sorted(sums.items(), key=lambda kv: -kv[1][0]):
        ratio = f"{e / o:.2f}×" if o > 0.05 else "—"
        lines.append(f"| {key} | {e:.1f} | {o:.1f} | {ratio} |")
    lines.append(f"| **whole run (profiled)** | {et['total_ms']:.1f} | {ort['total_ms']:.1f} | "
                 f"{et['total_ms'] / ort['total_ms']:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sd-small", help="an SD config of cdx.benchmarks.sd_configs (default sd-small)")
    parser.add_argument("--model", default=None, help="profile this pipeline folder instead of building --config")
    parser.add_argument("--graph", choices=("generator", "decoder"), default="generator",
                        help="the one-step generator (default) or only its VAE decoder")
    parser.add_argument("--resolution", type=int, default=None, help="image side (default: the config's)")
    parser.add_argument("--work", default=None, help="folder for the pipeline, exports and traces "
                        "(default ./et_profile/<config>; reused when present)")
    parser.add_argument("--passes", default=None, help="comma-separated ExecuTorch graph passes (default: all)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both runtimes (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="interleaved timed runs per runtime (default 5)")
    parser.add_argument("--profile-runs", type=int, default=2, help="profiled warm runs per runtime (default 2)")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)

    from cdx.errors import CdxError
    from cdx.quiet import quiet_third_party

    quiet_third_party()
    work = Path(args.work or Path("et_profile") / "-".join([args.config, args.graph, *([str(args.resolution)]
                                                                                          if args.resolution else [])]))
    passes = None if args.passes is None else tuple(p for p in args.passes.split(",") if p)
    try:
        graph = build_graph(args.graph, args.config, Path(args.model) if args.model else None, work, args.resolution)
        paths = export_artifacts(graph, work, passes)
        del graph
        gc.collect()
    except CdxError as err:
        raise SystemExit(f"error: {err}") from None
    inputs = load_inputs(paths["inputs"])

    from executorch.extension.pybindings import portable_lib

    session = ort_session(paths["onnx"], args.threads)
    _, method = et_method(paths["pte"], args.threads)
    print(f"threads: ORT intra-op {args.threads}, ExecuTorch threadpool {portable_lib._threadpool_get_thread_count()}")
    times = interleaved_timing(session, method, inputs, args.runs)
    del session, method
    gc.collect()
    et_ms, ort_ms = statistics.median(times["executorch"]), statistics.median(times["onnxruntime"])
    print(f"interleaved wall time, median of {args.runs}: ExecuTorch {et_ms:.1f} ms, ORT {ort_ms:.1f} ms "
          f"→ ET / ORT {et_ms / ort_ms:.2f}× (outputs differ by max-abs {times['max_abs_diff'][0]:.2e})")
    ort_profile = profile_ort(paths["onnx"], inputs, args.threads, args.profile_runs, work)
    et_profile = profile_et(paths["pte"], paths["etrecord"], inputs, args.threads, args.profile_runs, work)
    summary = json.loads(paths["summary"].read_text())
    print()
    print(op_table(et_profile, f"ExecuTorch XNNPACK fp32 ({summary['delegate_calls']} delegate calls, "
                                f"{summary['portable_ops']} portable ops)"))
    print()
    print(op_table(ort_profile, "ONNX Runtime CPU fp32"))
    print()
    print(family_table(et_profile, ort_profile))
    if args.json:
        record = {"config": args.config, "graph": args.graph, "resolution": args.resolution, "threads": args.threads,
                  "timing_ms": times, "delegation": summary, "executorch": et_profile, "onnxruntime": ort_profile}
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n", "utf-8")


if __name__ == "__main__":
    main()
