"""cdx's ONNX components vs 🤗 optimum's ONNX exporter on the same diffusers pipeline: numerics, size, ORT latency.

    python -m cdx.benchmarks.optimum_compare [--model DIR] [--out out/optimum_compare] [--runs 30]

Default model: a tiny random SD-shaped LCM pipeline built here (optimum exports text-to-image pipelines; it has no task
for the class-conditional embedded student, which this command also tries and reports). Both UNets get the same
latents, timestep, text embedding and guidance embedding; optimum's ε is turned into the consistency estimate with the
manifest's constants so the two graphs compute the same thing. Each ONNX Runtime session runs with the same options.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def export_with_optimum(model: str | Path, out: Path) -> None:
    """`optimum-cli export onnx --task text-to-image` as a function call."""
    from optimum.exporters.onnx import main_export

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main_export(model_name_or_path=str(model), output=out, task="text-to-image")


def _median_ms(run, feeds: dict[str, np.ndarray], runs: int) -> float:
    for _ in range(3):
        run(feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.parent.glob(path.name + "*"))


def _nodes(path: Path) -> int:
    import onnx

    return len(onnx.load(str(path), load_external_data=False).graph.node)


def compare(model: str | Path, out: Path, runs: int = 30, threads: int = 2) -> dict[str, Any]:
    """Export `model` both ways and measure the UNet step and the VAE decoder side by side."""
    import onnxruntime as ort
    import torch

    from cdx.convert.export import ConvertOptions, convert
    from cdx.convert.golden import read_golden, unstack
    from cdx.distill.consistency import guidance_scale_embedding, predicted_x0
    from cdx.manifest import load_manifest
    from cdx.runtimes import load_runner
    from cdx.runtimes.ort import session_options

    cdx_dir, optimum_dir = out / "cdx", out / "optimum"
    start = time.perf_counter()
    convert(model, cdx_dir, ConvertOptions(target="onnx", mode="components", overwrite=True, seeds=(0, 1)))
    cdx_seconds = time.perf_counter() - start
    start = time.perf_counter()
    export_with_optimum(model, optimum_dir)
    optimum_seconds = time.perf_counter() - start

    manifest = load_manifest(cdx_dir)
    step = load_runner(cdx_dir, next(m["name"] for m in manifest["models"] if m["role"] == "unet_step"), threads=threads)
    decoder = load_runner(cdx_dir, next(m["name"] for m in manifest["models"] if m["role"] == "vae_decoder"), threads=threads)
    options = session_options(threads)
    opt_unet = ort.InferenceSession(str(optimum_dir / "unet" / "model.onnx"), options, providers=["CPUExecutionProvider"])
    opt_vae = ort.InferenceSession(str(optimum_dir / "vae_decoder" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])
    opt_inputs = {i.name for i in opt_unet.get_inputs()}

    step_inputs, _ = read_golden(cdx_dir, step.model)
    sample = unstack(step_inputs)[0]
    feeds = {"sample": sample["latents"], "timestep": sample["timestep"].astype(np.float32).reshape(()),
             "encoder_hidden_states": sample["text_embedding"]}
    if "timestep_cond" in opt_inputs:
        dim = opt_unet.get_inputs()[[i.name for i in opt_unet.get_inputs()].index("timestep_cond")].shape[1]
        feeds["timestep_cond"] = guidance_scale_embedding(torch.from_numpy(sample["guidance_scale"]) - 1.0, dim).numpy()
    eps = opt_unet.run(None, feeds)[0]
    x0 = predicted_x0(torch.from_numpy(eps), torch.from_numpy(sample["latents"]), float(sample["alpha_cumprod"][0]),
                      manifest["schedule"]["prediction_type"]).numpy()
    optimum_denoised = sample["c_skip"][0] * sample["latents"] + sample["c_out"][0] * x0
    cdx_denoised = step.run(sample)["denoised"]

    latents = {"latents": cdx_denoised}
    schedule = manifest["schedule"]
    scaled = cdx_denoised / schedule["latent_scaling_factor"] + (schedule.get("latent_shift_factor") or 0.0)
    optimum_image = np.clip(opt_vae.run(None, {"latent_sample": scaled.astype(np.float32)})[0] / 2 + 0.5, 0, 1)
    cdx_image = decoder.run(latents)["image"]

    files = {"cdx_unet_step": cdx_dir / step.model["file"], "cdx_vae_decoder": cdx_dir / decoder.model["file"],
             "optimum_unet": optimum_dir / "unet" / "model.onnx",
             "optimum_vae_decoder": optimum_dir / "vae_decoder" / "model.onnx"}
    return {
        "model": str(model), "threads": threads, "runs": runs,
        "export_seconds": {"cdx_components_with_parity_gate": round(cdx_seconds, 1), "optimum": round(optimum_seconds, 1)},
        "max_abs_unet_step": float(np.abs(cdx_denoised - optimum_denoised).max()),
        "max_abs_vae_decoder": float(np.abs(cdx_image - optimum_image).max()),
        "median_ms": {
            "cdx_unet_step": _median_ms(step.run, sample, runs),
            "optimum_unet": _median_ms(lambda f: opt_unet.run(None, f), feeds, runs),
            "cdx_vae_decoder": _median_ms(decoder.run, latents, runs),
            "optimum_vae_decoder": _median_ms(lambda f: opt_vae.run(None, f), {"latent_sample": scaled.astype(np.float32)},
                                              runs),
        },
        "size_bytes": {k: _size(v) for k, v in files.items()},
        "nodes": {k: _nodes(v) for k, v in files.items()},
        "shapes": {"cdx": "static (one graph per resolution)", "optimum": "dynamic batch/height/width"},
    }


def try_embedded_student(out: Path) -> str:
    """What optimum says about the class-conditional embedded student (cdx exports it; optimum has no task for it)."""
    from cdx.defaults import default_student

    try:
        export_with_optimum(default_student(), out / "optimum_embedded")
    except Exception as exc:  # report the exporter's own words
        return f"refused: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    return "exported"


def render_markdown(result: dict[str, Any]) -> str:
    ms, size, nodes = result["median_ms"], result["size_bytes"], result["nodes"]
    lines = [f"Model `{result['model']}`, ONNX Runtime CPU, {result['threads']} threads, median of {result['runs']} runs.", "",
             "| graph | cdx ms | optimum ms | cdx MB | optimum MB | cdx nodes | optimum nodes | max-abs cdx vs optimum |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for graph, key in (("UNet step", "unet"), ("VAE decoder", "vae_decoder")):
        cdx_key = "cdx_unet_step" if key == "unet" else "cdx_vae_decoder"
        diff = result["max_abs_unet_step"] if key == "unet" else result["max_abs_vae_decoder"]
        lines.append(f"| {graph} | {ms[cdx_key]:.2f} | {ms['optimum_' + key]:.2f} | {size[cdx_key] / 1e6:.2f} | "
                     f"{size['optimum_' + key] / 1e6:.2f} | {nodes[cdx_key]} | {nodes['optimum_' + key]} | {diff:.2e} |")
    lines += ["", f"Export time: cdx {result['export_seconds']['cdx_components_with_parity_gate']} s (with golden data and "
              f"parity gate), optimum {result['export_seconds']['optimum']} s.",
              f"Embedded class-conditional student through optimum: {result.get('embedded_student', 'not tried')}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from cdx.atomic import atomic_write_text
    from cdx.tiny_models import build_tiny_sd

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a text-to-image diffusers folder (default: tiny SD-shaped LCM)")
    parser.add_argument("--out", type=Path, default=Path("out/optimum_compare"))
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    model = args.model
    if model is None:
        model = build_tiny_sd(args.out / "tiny_sd") if not (args.out / "tiny_sd" / "model_index.json").exists() \
            else args.out / "tiny_sd"
    result = compare(model, args.out, runs=args.runs, threads=args.threads)
    result["embedded_student"] = try_embedded_student(args.out)
    atomic_write_text(args.out / "optimum_compare.json", json.dumps(result, indent=2) + "\n")
    markdown = render_markdown(result)
    atomic_write_text(args.out / "optimum_compare.md", markdown)
    print(markdown)


if __name__ == "__main__":
    from cdx.quiet import quiet_third_party

    quiet_third_party()
    main()
