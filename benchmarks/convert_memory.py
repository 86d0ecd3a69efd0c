"""Peak memory of `cdx convert` per target, as a multiple of the fp32 weight bytes it converts.

    python -m cdx.benchmarks.convert_memory --model DIR [--targets onnx,executorch,coreml] [--out out/convert_memory]

Each target's conversion runs in its own fresh process (`--worker`), so one target's leftovers never count against
the next. This process samples the worker's whole process tree (the worker plus anything it starts, e.g. the forked
ExecuTorch lowering process) with psutil every 50 ms from outside, as summed PSS (the RSS sum, also kept, counts
the pages a forked child shares with its parent twice), so long C++ calls that hold the GIL cannot hide a peak; the worker
marks each stage (its progress lines) with a timestamp, so every stage gets its own peak. The kernel's exact
per-process high-water mark (VmHWM, ru_maxrss of the children) is reported next to the sampled tree peak.

tracemalloc cannot see torch/ONNX/protobuf buffers, which is why this measures resident memory instead.
Writes convert_memory.json and convert_memory.md in --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cdx.atomic import atomic_write_text

# The precisions issue 13 measured (SD-1.5: ONNX fp32+fp16, ExecuTorch fp32, Core ML fp16 + palettize6).
DEFAULT_QUANTS: dict[str, tuple[str, ...]] = {
    "onnx": ("none", "fp16"),
    "executorch": ("none",),
    "coreml": ("fp16", "palettize6"),
}
SAMPLE_SECONDS = 0.05
TARGET_RATIO = 2.5  # issue 13: conversion peak RSS <= 2.5x the fp32 weight bytes


def fp32_weight_bytes(model: str | Path) -> int:
    """fp32 bytes of what the generator exports: every UNet tensor plus the VAE's decoder half (decoder.*,
    post_quant_conv.*), read from the safetensors headers without loading any weight."""
    import struct

    folder = Path(model)
    total = 0
    for component, keep in (("unet", lambda _k: True),
                            ("vae", lambda k: k.startswith(("decoder.", "post_quant_conv.")))):
        for file in sorted((folder / component).glob("*.safetensors")):
            with file.open("rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                header = json.loads(handle.read(length))
            for key, info in header.items():
                if key != "__metadata__" and keep(key):
                    count = 1
                    for dim in info["shape"]:
                        count *= int(dim)
                    total += 4 * count
    return total


# ---- the worker: one conversion, stages time-stamped ------------------------------------------------------------
def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def run_worker(spec_path: Path) -> None:
    """Convert as `spec` says, appending {"t", "stage"} lines to spec['events'] and the result to spec['result']."""
    spec = json.loads(spec_path.read_text())
    events = open(spec["events"], "a", buffering=1)  # noqa: SIM115 - line-buffered for the sampling parent

    def mark(stage: str) -> None:
        events.write(json.dumps({"t": time.time(), "stage": stage, "rss_mb": _rss_mb()}) + "\n")

    from cdx.convert.export import ConvertOptions, convert  # imports first: the baseline is what cdx needs loaded

    options = ConvertOptions(target=spec["target"], quants=tuple(spec["quants"]), mode=spec["mode"],
                             seeds=tuple(range(spec["seeds"])), overwrite=True, force=spec.get("force", False),
                             **({"latent_sizes": (spec["latent_size"],)} if spec.get("latent_size") else {}))
    mark("imports")
    baseline = _rss_mb()
    start = time.perf_counter()
    convert(spec["model"], spec["out"], options, progress=mark)
    mark("done")
    result = {"baseline_rss_mb": baseline, "vm_hwm_mb": _vm_hwm_mb(), "seconds": time.perf_counter() - start}
    Path(spec["result"]).write_text(json.dumps(result))


# ---- the parent: sample the worker's process tree ---------------------------------------------------------------
def _tree_memory_bytes(process: Any) -> tuple[int, int]:
    """(RSS, PSS) summed over the process tree. PSS splits each shared page between the processes that map it, so
    its sum is what the tree costs in RAM even when a child was forked and shares the parent's weights (the RSS sum
    counts those twice)."""
    import psutil

    rss = pss = 0
    try:
        procs = [process, *process.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss, pss = rss + info.rss, pss + getattr(info, "pss", info.rss)
    return rss, pss


def _stage_peaks(samples: list[tuple[float, int, int]], events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Peak tree PSS (and RSS) between consecutive stage marks (stage = the progress line that started it)."""
    stages = []
    for i, event in enumerate(events):
        end = events[i + 1]["t"] if i + 1 < len(events) else float("inf")
        inside = [(rss, pss) for t, rss, pss in samples if event["t"] <= t < end]
        stages.append({"stage": event["stage"], "seconds": round(min(end, samples[-1][0] if samples else end) - event["t"], 1),
                       "peak_mb": round(max((p for _, p in inside), default=0) / 2**20, 1),
                       "peak_rss_mb": round(max((r for r, _ in inside), default=0) / 2**20, 1)})
    return stages


def measure_target(model: str, target: str, quants: tuple[str, ...], out: Path, mode: str = "generator", seeds: int = 2,
                   latent_size: int | None = None, force: bool = False) -> dict[str, Any]:
    """One conversion in a fresh worker process; returns peaks (sampled tree, VmHWM), stages and seconds."""
    import psutil

    with tempfile.TemporaryDirectory(prefix="cdx-convmem-") as tmp:
        spec = {"model": str(model), "target": target, "quants": list(quants), "mode": mode, "seeds": seeds,
                "latent_size": latent_size, "force": force, "out": str(out / target),
                "events": str(Path(tmp) / "events.jsonl"), "result": str(Path(tmp) / "result.json")}
        spec_path = Path(tmp) / "spec.json"
        spec_path.write_text(json.dumps(spec))
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        child = subprocess.Popen([sys.executable, "-m", "cdx.benchmarks.convert_memory", "--worker", str(spec_path)],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc = psutil.Process(child.pid)
        samples: list[tuple[float, int, int]] = []
        while child.poll() is None:
            samples.append((time.time(), *_tree_memory_bytes(proc)))
            time.sleep(SAMPLE_SECONDS)
        stderr = child.stderr.read() if child.stderr else ""
        children_hwm = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
        if child.returncode != 0:
            tail = " | ".join(line for line in stderr.strip().splitlines()[-3:])
            return {"target": target, "quants": list(quants), "error": f"exit {child.returncode}: {tail[-400:]}"}
        events = [json.loads(line) for line in Path(spec["events"]).read_text().splitlines()]
        result = json.loads(Path(spec["result"]).read_text())
    peak = max((pss for _, _, pss in samples), default=0)
    peak_rss = max((rss for _, rss, _ in samples), default=0)
    return {"target": target, "quants": list(quants), "peak_tree_mb": round(peak / 2**20, 1),
            "peak_tree_rss_mb": round(peak_rss / 2**20, 1),
            "worker_vm_hwm_mb": round(result["vm_hwm_mb"], 1), "children_max_rss_mb": round(children_hwm, 1),
            "baseline_rss_mb": round(result["baseline_rss_mb"], 1), "seconds": round(result["seconds"], 1),
            "stages": _stage_peaks(samples, events)}


def _machine() -> str:
    import psutil

    from cdx.machine import describe_machine

    return f"{describe_machine()}, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM"


def markdown(report: dict[str, Any]) -> str:
    """The README table: one row per target, peak / fp32 weight bytes."""
    weights = report["fp32_weight_bytes"]
    lines = [f"Model: {report['model']} (fp32 weights {weights / 1e9:.3f} GB); {report['machine']}.", "",
             "| target | --quant | peak GB (process tree, PSS) | × fp32 weights | RSS sum GB | baseline after imports GB | "
             "seconds | ≤ 2.5× |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in report["rows"]:
        if "error" in row:
            lines.append(f"| {row['target']} | {', '.join(row['quants'])} | failed: {row['error']} | | | | | |")
            continue
        ratio = row["peak_tree_mb"] * 2**20 / weights
        lines.append(f"| {row['target']} | {', '.join(row['quants'])} | {row['peak_tree_mb'] / 1024:.2f} | "
                     f"{ratio:.2f}× | {row['peak_tree_rss_mb'] / 1024:.2f} | {row['baseline_rss_mb'] / 1024:.2f} | "
                     f"{row['seconds']:.0f} | "
                     f"{'yes' if ratio <= TARGET_RATIO else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="a diffusers latent pipeline folder")
    parser.add_argument("--targets", default="onnx,executorch,coreml")
    parser.add_argument("--quant", action="append", default=[],
                        help="TARGET=Q1,Q2 (default: onnx=none,fp16 executorch=none coreml=fp16,palettize6)")
    parser.add_argument("--mode", default="generator")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--latent-size", type=int)
    parser.add_argument("--out", type=Path, default=Path("out/convert_memory"))
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return 0
    if not args.model:
        parser.error("--model is required")
    quants = dict(DEFAULT_QUANTS)
    for item in args.quant:
        target, _, values = item.partition("=")
        quants[target] = tuple(v for v in values.split(",") if v)
    weights = fp32_weight_bytes(args.model)
    rows = []
    for target in [t for t in args.targets.split(",") if t]:
        print(f"converting → {target} ({', '.join(quants[target])})", flush=True)
        row = measure_target(args.model, target, quants[target], args.out, args.mode, args.seeds, args.latent_size)
        rows.append(row)
        if "error" in row:
            print(f"  {row['error']}", flush=True)
            continue
        print(f"  peak {row['peak_tree_mb'] / 1024:.2f} GB (PSS) = {row['peak_tree_mb'] * 2**20 / weights:.2f}× fp32 weights "
              f"({row['seconds']:.0f} s)", flush=True)
        for stage in row["stages"]:
            print(f"    {stage['peak_mb']:9.1f} MB  {stage['seconds']:6.1f} s  {stage['stage']}", flush=True)
    report = {"model": str(args.model), "fp32_weight_bytes": weights, "machine": _machine(), "mode": args.mode, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "convert_memory.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(args.out / "convert_memory.md", markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
