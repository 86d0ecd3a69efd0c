"""The one-step generator at Stable Diffusion scale: random-weight SD-1.5 / SD-small pipelines, every target, one table.

    python -m cdx.benchmarks.sd_scale [--config sd-small] [--config sd-1.5] [--work out/sd_scale] [--time-budget 900]
                                      [--targets onnx,executorch,coreml] [--decoder DIR | --no-tiny-decoder]

Per config: `benchmarks/sd_configs.py` writes the pipeline folder (published shapes, random weights, no download);
each target is converted in `--mode generator` and `--mode components` in a fresh process whose process-tree peak
RSS is sampled (`convert_memory.measure_target`), so conversion memory is a multiple of the fp32 weight bytes; then
one `cdx bench` over every folder under `--time-budget` gives per runtime the generator, the UNet step and the
decoder (`report["components"]`: the decoder's share), the runtime peak RSS with the phone-tier verdict
(`memory_tiers.py`) and ExecuTorch / ORT on the same graph. With a tiny decoder (`--decoder DIR`, an AutoencoderTiny
folder; by default a random-weight TAESD-architecture `AutoencoderTiny`, which has the latency of a trained one)
the ONNX generator and components are converted again with `cdx convert --decoder` and the speed-up is measured on
the same runtime. Core ML is converted and spec-checked only (prediction needs macOS). Random weights: latency and
memory are what this measures, not image quality.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cdx.atomic import atomic_write_text

QUANTS: dict[str, tuple[str, ...]] = {"onnx": ("none", "fp16"), "executorch": ("none",), "coreml": ("fp16",)}
MODES: dict[str, tuple[str, ...]] = {"onnx": ("generator", "components"), "executorch": ("generator", "components"),
                                     "coreml": ("generator",)}
Say = Any


def build_pipeline(config: str, work: Path, say: Say) -> Path:
    """The random-weight pipeline folder of `config` (reused when already built)."""
    folder = work / "pipeline"
    if (folder / "model_index.json").is_file():
        return folder
    if config == "tiny":  # a smoke check of this command in a minute (cdx/tiny_models.py)
        from cdx.tiny_models import build_tiny_sd

        return build_tiny_sd(folder)
    try:
        from cdx.benchmarks.sd_configs import build_sd_config_student
    except ImportError:  # an older checkout: the tiny SD-shaped pipeline keeps the command usable
        from cdx.tiny_models import build_tiny_sd

        say(f"benchmarks/sd_configs.py missing: building the tiny SD pipeline instead of {config}")
        return build_tiny_sd(folder)
    return build_sd_config_student(folder, config, say=say)


def random_tiny_decoder(folder: Path, latent_channels: int = 4, seed: int = 0) -> Path:
    """A random-weight `AutoencoderTiny` of TAESD's default architecture (1.2 M decoder parameters), safetensors."""
    if (folder / "config.json").is_file():
        return folder
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    AutoencoderTiny(latent_channels=latent_channels).save_pretrained(folder, safe_serialization=True)
    return folder


def _convert_with_decoder(pipeline: Path, out: Path, target: str, quants: tuple[str, ...], mode: str,
                          decoder: Path) -> dict[str, Any]:
    """`cdx convert --decoder` in its own process; its peak RSS from the kernel (ru_maxrss of that process)."""
    args = [sys.executable, "-m", "cdx.cli", "convert", str(pipeline), "-o", str(out), "--target", target,
            "--mode", mode, "--num-seeds", "2", "--overwrite", "--decoder", str(decoder)]
    for quant in quants:
        args += ["--quant", quant]
    start = time.perf_counter()
    child = subprocess.Popen(args, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(child.pid, 0)
    stderr = child.stderr.read() if child.stderr else ""
    row: dict[str, Any] = {"target": target, "quants": list(quants), "mode": mode, "decoder": str(decoder),
                           "seconds": round(time.perf_counter() - start, 1)}
    if os.waitstatus_to_exitcode(status) != 0:
        row["error"] = " | ".join(stderr.strip().splitlines()[-2:])[-400:]
    else:
        row["worker_vm_hwm_mb"] = round(usage.ru_maxrss / 1024.0, 1)
    return row


def _conversion_line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    peak = row.get("peak_tree_mb") or row.get("peak_tree_rss_mb") or row.get("worker_vm_hwm_mb") or 0.0
    return f"peak {peak / 1024:.2f} GB, {row['seconds']:.0f} s"


def convert_all(pipeline: Path, work: Path, targets: list[str], decoder: Path | None, say: Say,
                skip: frozenset[str] = frozenset(), reuse: bool = False) -> list[dict[str, Any]]:
    """Every target × mode (and the ONNX tiny-decoder variants); one row per conversion with its peak memory.

    Each row is saved to WORK/conversions.json as it lands; with `reuse`, a conversion already there (no error, its
    manifest on disk) is not run again. `skip` holds "target:mode" pairs not to run.
    """
    from cdx.benchmarks.convert_memory import measure_target

    log = work / "conversions.json"
    done = {(r["target"], r["mode"], bool(r.get("decoder"))): r for r in
            (json.loads(log.read_text("utf-8")) if reuse and log.is_file() else [])
            if "error" not in r and (Path(r["folder"]) / "manifest.json").is_file()}
    jobs = [(t, m, None) for t in targets for m in MODES[t] if f"{t}:{m}" not in skip]
    if decoder is not None and "onnx" in targets:
        jobs += [("onnx", m, decoder) for m in MODES["onnx"] if f"onnx:{m}" not in skip]
    rows: list[dict[str, Any]] = []
    for target, mode, tiny in jobs:
        key = (target, mode, tiny is not None)
        if key in done:
            say(f"reuse {done[key]['folder']}")
            rows.append(done[key])
        elif tiny is None:
            out = work / mode
            say(f"convert {target} --mode {mode} ({', '.join(QUANTS[target])})")
            rows.append({**measure_target(str(pipeline), target, QUANTS[target], out, mode=mode, seeds=2), "mode": mode,
                         "folder": str(out / target)})
        else:
            out = work / f"tiny_decoder_{mode}"
            say(f"convert onnx --mode {mode} --decoder {tiny}")
            rows.append({**_convert_with_decoder(pipeline, out, "onnx", ("none",), mode, tiny), "folder": str(out)})
        say(f"  {_conversion_line(rows[-1])}")
        atomic_write_text(log, json.dumps(rows, indent=2) + "\n")
    return rows


def _generator_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in report["results"] if r["role"] == "generator"]


def _decoder_of(row: dict[str, Any]) -> str:
    return "tiny" if Path(row["folder"]).name.startswith("tiny_decoder") or "tiny_decoder" in row["folder"] else "full"


def _image_size(conversions: list[dict[str, Any]]) -> list[int] | None:
    """The generator's image height × width from the first converted folder's manifest (runs without components)."""
    for row in conversions:
        manifest = Path(row.get("folder", "")) / "manifest.json"
        if "error" in row or not manifest.is_file():
            continue
        for model in json.loads(manifest.read_text("utf-8"))["models"]:
            if model.get("role") == "generator":
                return list(model["outputs"][0]["shape"][-2:])
    return None


def summarize(config: str, pipeline: Path, conversions: list[dict[str, Any]], report: dict[str, Any],
              weights: int) -> dict[str, Any]:
    """The table's data: per generator row latency, split, memory; ET/ORT; tiny-decoder speed-up; conversion memory."""
    splits = {(c["runtime"], c["precision"], c.get("generator_folder"), c.get("generator")): c
              for c in report.get("components", [])}
    rows = []
    for r in _generator_rows(report):
        split = splits.get((r["runtime"], r["precision"], r["folder"], r["name"]))
        rows.append({
            "name": r["name"], "runtime": r["runtime"], "precision": r["precision"], "decoder": _decoder_of(r),
            "median_ms": r["latency"]["median_ms"], "runs": r["latency"]["runs"],
            "seeds": (r.get("plan") or {}).get("seeds"),
            "unet_step_ms": split and split["unet_step_ms"], "decoder_ms": split and split["decoder_ms"],
            "decoder_share": split and split["decoder_share"],
            "size_bytes": r.get("file_size_bytes"), "peak_rss_mb": r["peak_rss_mb"],
            "rss_over_size": r.get("memory", {}).get("rss_over_size"), "tiers": r.get("memory", {}).get("tiers"),
        })
    by = {(row["runtime"], row["precision"], row["decoder"]): row for row in rows}
    ort, et = by.get(("onnxruntime", "fp32", "full")), by.get(("executorch", "fp32", "full"))
    tiny = by.get(("onnxruntime", "fp32", "tiny"))
    table: dict[str, Any] = {
        "config": config, "pipeline": str(pipeline), "fp32_weight_bytes": weights,
        "resolution": next((r.get("resolution") for r in report.get("components", [])), None)
        or _image_size(conversions),
        "rows": rows, "splits": report.get("components", []), "settings": report["settings"],
        "et_over_ort": et["median_ms"] / ort["median_ms"] if et and ort else None,
        "et_over_ort_components": {key: et[key] / ort[key] for key in ("unet_step_ms", "decoder_ms")
                                   if et and ort and et[key] and ort[key]},
        "tiny_decoder_speedup": ort["median_ms"] / tiny["median_ms"] if ort and tiny else None,
        "conversions": [{k: v for k, v in c.items() if k != "stages"} for c in conversions],
        "skipped": report.get("skipped", []),
    }
    return table


def run_config(config: str, work: Path, targets: list[str], budget_s: float, decoder: Path | str | None,
               say: Say, skip: frozenset[str] = frozenset(), reuse: bool = False,
               threads: int | None = None) -> dict[str, Any]:
    """Build, convert, bench one config; returns its summary (and writes the bench report under `work`)."""
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.convert_memory import fp32_weight_bytes
    from cdx.benchmarks.report import write_report

    work.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(config, work, say)
    if decoder == "random":
        latent_channels = json.loads((pipeline / "vae" / "config.json").read_text())["latent_channels"]
        decoder = random_tiny_decoder(work / "tiny_decoder_random", latent_channels)
    conversions = convert_all(pipeline, work, targets, decoder if isinstance(decoder, Path) else None, say, skip, reuse)
    folders = [c["folder"] for c in conversions if "error" not in c]
    if not folders:
        raise SystemExit(f"{config}: every conversion failed: {conversions[0].get('error')}")
    say(f"bench {len(folders)} folders, time budget {budget_s:g} s")
    start = time.perf_counter()
    options = BenchOptions(runs=10, warmup=2, seeds=8, teacher="", inception=False, time_budget_s=budget_s)
    if threads:
        options.threads = threads
    report = bench(folders, options, progress=say)
    bench_s = time.perf_counter() - start
    write_report(report, work / "bench", plots=False)
    table = summarize(config, pipeline, conversions, report, fp32_weight_bytes(pipeline))
    table["bench_seconds"] = round(bench_s, 1)
    return table


def rerender(config: str, work: Path) -> dict[str, Any]:
    """A config's summary again from what a run saved (its JSON and its bench report.json)."""
    from cdx.benchmarks.report import load_report

    saved = json.loads((work / f"{config}.json").read_text("utf-8"))
    report = load_report(work / config / "bench" / "report.json")
    table = summarize(config, Path(saved["pipeline"]), saved["conversions"], report, saved["fp32_weight_bytes"])
    table["bench_seconds"] = saved["bench_seconds"]
    return table


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def render_markdown(tables: list[dict[str, Any]], machine: str) -> str:
    """The README section's tables."""
    lines = [f"Machine: {machine}. Random weights, published shapes (`benchmarks/sd_configs.py`); batch 1, one step.", ""]
    for t in tables:
        resolution = "×".join(map(str, t["resolution"] or [])) or "?"
        s = t["settings"]
        speedup = _f(t["tiny_decoder_speedup"], 2, "×") if t["tiny_decoder_speedup"] else "not measured"
        lines += [f"**{t['config']}** ({resolution} px; fp32 generator weights {t['fp32_weight_bytes'] / 1e9:.2f} GB). "
                  f"Bench: {s.get('threads')} thread(s), time budget {s.get('time_budget_s', 0):g} s → {s.get('seeds')} "
                  f"of {s.get('seeds_requested')} "
                  f"seeds, took {t['bench_seconds']:.0f} s; ET / ORT fp32 = {_f(t['et_over_ort'], 2, '×')} "
                  f"(UNet step {_f(t['et_over_ort_components'].get('unet_step_ms'), 2, '×')}, decoder "
                  f"{_f(t['et_over_ort_components'].get('decoder_ms'), 2, '×')}); "
                  f"tiny decoder speed-up on ORT fp32 = {speedup}.", "",
                  "| runtime | precision | decoder | generator ms | UNet step ms | decoder ms | decoder share | size MB "
                  "| runtime peak RSS MB | RSS / size | fits 4 / 6 / 8 / 12 GB |",
                  "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in t["rows"]:
            tiers = " / ".join((r["tiers"] or {}).values()) if r["tiers"] else "—"
            lines.append(f"| {r['runtime']} | {r['precision']} | {r['decoder']} | {_f(r['median_ms'])} | "
                         f"{_f(r['unet_step_ms'])} | {_f(r['decoder_ms'])} | "
                         f"{_f(r['decoder_share'] * 100 if r['decoder_share'] is not None else None, 0, ' %')} | "
                         f"{_f(r['size_bytes'] / 1e6 if r['size_bytes'] else None, 0)} | {_f(r['peak_rss_mb'], 0)} | "
                         f"{_f(r['rss_over_size'], 2, '×')} | {tiers} |")
        lines += ["", "| conversion | mode | --quant | peak RSS GB | × fp32 weights | seconds |", "|---|---|---|---:|---:|---:|"]
        for c in t["conversions"]:
            peak = c.get("peak_tree_mb") or c.get("peak_tree_rss_mb") or c.get("worker_vm_hwm_mb")
            ratio = peak * 2**20 / t["fp32_weight_bytes"] if peak else None
            name = c["target"] + (" --decoder (tiny)" if c.get("decoder") else "")
            cells = f"failed: {c['error'][:120]} | | " if "error" in c else f"{_f(peak / 1024, 2)} | {_f(ratio, 2, '×')} | "
            lines.append(f"| {name} | {c['mode']} | {', '.join(c['quants'])} | {cells}{_f(c.get('seconds'), 0)} |")
        if t["skipped"]:
            lines += ["", "Not run here: " + "; ".join(f"{s['name']} ({s['target']}, {s['file_size_bytes'] / 1e6:.0f} MB): "
                                                       f"{s['reason']}" for s in t["skipped"])]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", choices=("sd-small", "sd-1.5", "tiny"),
                        help="repeat for several (default: sd-small; tiny = a quick smoke check)")
    parser.add_argument("--work", type=Path, default=Path("out/sd_scale"))
    parser.add_argument("--targets", default="onnx,executorch,coreml")
    parser.add_argument("--time-budget", type=float, default=900.0, help="seconds for each config's bench")
    parser.add_argument("--threads", type=int, help="threads per runtime in the bench (default: the bench's own)")
    parser.add_argument("--decoder", type=Path, help="an AutoencoderTiny folder (cdx distill-decoder) to compare")
    parser.add_argument("--no-tiny-decoder", action="store_true",
                        help="skip the tiny-decoder variant (default without --decoder: a random-weight TAESD-shaped one)")
    parser.add_argument("--skip", action="append", default=[], metavar="TARGET:MODE",
                        help="a conversion not to run, e.g. executorch:components (repeat)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse conversions a previous run saved in WORK/<config>/conversions.json")
    parser.add_argument("--render", action="store_true",
                        help="re-render sd_scale.md from the saved WORK/<config>.json and bench reports (no run)")
    args = parser.parse_args(argv)
    from cdx.machine import describe_machine

    def say(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    targets = [t for t in args.targets.split(",") if t]
    decoder: Path | str | None = None if args.no_tiny_decoder else (args.decoder or "random")
    tables = []
    for config in args.config or ["sd-small"]:
        if args.render:
            tables.append(rerender(config, args.work))
            continue
        say(f"== {config}")
        tables.append(run_config(config, args.work / config, targets, args.time_budget, decoder, say,
                                 frozenset(args.skip), args.reuse, args.threads))
        args.work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.work / f"{config}.json", json.dumps(tables[-1], indent=2) + "\n")
    machine = f"{describe_machine()}, load average {os.getloadavg()[0]:.1f} at the end"
    markdown = render_markdown(tables, machine)
    atomic_write_text(args.work / "sd_scale.md", markdown)
    print(markdown)


if __name__ == "__main__":
    from cdx.quiet import quiet_third_party

    quiet_third_party()
    main()
