"""What a distilled tiny decoder (`cdx distill-decoder`) costs and buys: drift vs the full decoder on the same latents,
and eager / ONNX Runtime latency of the decoder alone and of the whole one-step generator with each decoder.

`python -m cdx.benchmarks.tiny_decoder [--student DIR] [--decoder DIR] [--n 1000] [--first-seed 0] [--no-inception] [-o OUT]`

- drift: n one-step student samples (cdx-normal-v1 noise of seeds 0..n-1, or from `--first-seed` on: a held-out
  set; labels i mod classes, the manifest's default w) decoded by both decoders: PSNR / SSIM / max |Δ| (cdx.metrics)
  of the tiny decoder's images against the full decoder's; the FD of each decoder's images against the real test
  images under the Fashion classifier (and Inception-v3 FID + KID at the same n when its weights are installed, as
  `cdx evaluate`), and FD between the two.
- latency: median of `--runs` warm batch-1 calls, eager PyTorch and ORT fp32 (exported with convert's ONNX exporter),
  decoder graph and generator graph, each with both decoders; MACs of each decoder counted from its convolutions.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from cdx.errors import CdxError


def conv_macs(module: torch.nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of every Conv2d/Linear in one call (the bulk of a VAE decoder's work)."""
    total = 0

    def hook(layer: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, torch.nn.Conv2d):
            k = layer.kernel_size[0] * layer.kernel_size[1] * layer.in_channels // layer.groups
            total += output.numel() * k
        elif isinstance(layer, torch.nn.Linear):
            total += output.numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)]
    with torch.inference_mode():
        module(example)
    for handle in handles:
        handle.remove()
    return total


@torch.inference_mode()
def student_latents(generator, n: int, num_classes: int | None, batch: int = 250, first_seed: int = 0) -> torch.Tensor:
    """The latents the one-step generator hands its decoder for seeds first_seed..first_seed+n-1 (the artifacts' own
    inputs)."""
    out = []
    for start in range(first_seed, first_seed + n, batch):
        seeds = range(start, min(first_seed + n, start + batch))
        inputs = [generator.example_inputs(seed, class_label=seed % (num_classes or 1)) for seed in seeds]
        stacked = {k: torch.cat([i[k] for i in inputs]) for k in inputs[0]}
        out.append(generator.decoder_latents(stacked))
    return torch.cat(out)


@torch.inference_mode()
def decode_all(decoder_graph, latents: torch.Tensor, batch: int = 250) -> torch.Tensor:
    return torch.cat([decoder_graph(latents[i : i + batch]) for i in range(0, len(latents), batch)])


def _time(call, runs: int, warmup: int) -> dict[str, float]:
    from cdx.metrics import percentile_stats

    for _ in range(warmup):
        call()
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        samples.append((time.perf_counter() - start) * 1e3)
    return percentile_stats(samples)


def latency(graphs: dict[str, Any], runs: int, warmup: int, threads: int) -> dict[str, dict[str, float]]:
    """Median batch-1 latency of each graph, eager and ORT fp32 (convert's exporter, ORT's default CPU session)."""
    import onnxruntime as ort

    from cdx.convert.onnx import export_onnx_fp32
    from cdx.runtimes.ort import session_options

    torch.set_num_threads(threads)
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cdx-tiny-decoder-") as tmp:
        for name, graph in graphs.items():
            feeds = {k: v.numpy() for k, v in graph.example_inputs(0).items()}
            args = [torch.from_numpy(feeds[s.name]) for s in graph.input_specs()]
            with torch.inference_mode():
                eager = _time(lambda g=graph, a=args: g(*a), runs, warmup)
            path = Path(tmp) / f"{name}.onnx"
            export_onnx_fp32(graph, path)
            session = ort.InferenceSession(str(path), session_options(threads), providers=["CPUExecutionProvider"])
            onnx = _time(lambda s=session, f=feeds: s.run(None, f), runs, warmup)
            out[name] = {"eager_ms": eager["median_ms"], "ort_ms": onnx["median_ms"],
                         "ort_size_bytes": path.stat().st_size}
    return out


def distribution(full01: torch.Tensor, tiny01: torch.Tensor, inception: bool, say) -> dict[str, Any]:
    """FD of each decoder's images vs the real test images (classifier; Inception when installed) and between them."""
    from cdx.benchmarks.distill_eval import load_references
    from cdx.benchmarks.quality import InceptionFeatures, classifier_features, load_classifier
    from cdx.errors import UnsupportedError
    from cdx.metrics import frechet_distance, kid, kid_subset_size

    n = len(full01)
    notes: list[str] = []
    model = None
    if inception:
        try:
            model = InceptionFeatures()
        except UnsupportedError as err:
            notes.append(f"Inception FID skipped: {err}")
    real, _ = load_references(n, model, say)
    classifier = load_classifier()
    out: dict[str, Any] = {"n": n, "notes": notes}
    feats = {name: classifier_features(classifier, images)[0] for name, images in (("full", full01), ("tiny", tiny01))}
    out["classifier_fd"] = {"full_vs_real": frechet_distance(feats["full"], real.classifier),
                            "tiny_vs_real": frechet_distance(feats["tiny"], real.classifier),
                            "tiny_vs_full": frechet_distance(feats["tiny"], feats["full"])}
    if model is not None and real.inception is not None:
        inc = {}
        for name, images in (("full", full01), ("tiny", tiny01)):
            say(f"Inception features of the {name} decoder's {n} images")
            inc[name] = model(images)
        size = kid_subset_size(n)
        out["inception"] = {"fid_full_vs_real": frechet_distance(inc["full"], real.inception),
                            "fid_tiny_vs_real": frechet_distance(inc["tiny"], real.inception),
                            "fid_tiny_vs_full": frechet_distance(inc["tiny"], inc["full"]),
                            "kid_full_vs_real": kid(inc["full"], real.inception, subset_size=size),
                            "kid_tiny_vs_real": kid(inc["tiny"], real.inception, subset_size=size)}
    return out


def run(student: str, decoder: str, n: int, inception: bool, runs: int, warmup: int, threads: int, say,
        first_seed: int = 0) -> dict[str, Any]:
    from cdx.distill.decoder_swap import image_drift, with_decoder
    from cdx.distill.generator import build_generator
    from cdx.distill.graphs import DecoderGraph
    from cdx.distill.loading import load_latent_pipeline
    from cdx.machine import describe_machine

    full_parts = load_latent_pipeline(student)
    tiny_parts, record = with_decoder(load_latent_pipeline(student), decoder)
    full_gen, _ = build_generator(full_parts)
    tiny_gen, _ = build_generator(tiny_parts)
    shape = full_gen.latent_shape
    decoders = {"full": DecoderGraph.of(full_parts, shape).eval(), "tiny": DecoderGraph.of(tiny_parts, shape).eval()}
    say(f"{n} one-step student latents")
    latents = student_latents(full_gen, n, full_parts.num_classes, first_seed=first_seed)
    say("decoding them with both decoders")
    images = {name: decode_all(graph, latents) for name, graph in decoders.items()}
    drift = image_drift(images["full"].numpy(), images["tiny"].numpy())
    example = torch.zeros(shape)
    result: dict[str, Any] = {
        "student": student, "decoder": decoder, "decoder_record": record, "machine": describe_machine(),
        "threads": threads, "runs": runs, "latent_shape": list(shape),
        "drift": {"n": n, "first_seed": first_seed, **drift},
        "macs": {name: conv_macs(graph, example) for name, graph in decoders.items()},
        "parameters": {"full": record["replaces"]["num_parameters"], "tiny": record["num_parameters"]},
    }
    if images["full"].shape[1] == 1 and images["full"].shape[-1] == 32:  # the Fashion classifier's input
        say("distribution distances")
        result["distribution"] = distribution(images["full"], images["tiny"], inception, say)
    else:
        result["distribution"] = {"notes": ["FD needs the Fashion-MNIST feature networks (1×32×32 images)"]}
    say("latency (eager, ORT fp32)")
    result["latency"] = latency({"decoder_full": decoders["full"], "decoder_tiny": decoders["tiny"],
                                 "generator_full": full_gen, "generator_tiny": tiny_gen}, runs, warmup, threads)
    return result


def render_markdown(result: dict[str, Any]) -> str:
    """The README table: drift, distribution distances, work and latency, full vs tiny decoder."""
    d, lat, dist = result["drift"], result["latency"], result["distribution"]
    lines = [f"Tiny decoder `{result['decoder']}` vs the full decoder of `{result['student']}` "
             f"(latents {result['latent_shape']}; {result['machine']}, {result['threads']} threads, "
             f"median of {result['runs']} batch-1 runs).", "",
             f"Drift on the same {d['n']} one-step student latents (seeds {d.get('first_seed', 0)}–"
             f"{d.get('first_seed', 0) + d['n'] - 1}): **PSNR {d['psnr_db']:.2f} dB**, SSIM {d['ssim']:.4f}, "
             f"max |Δ| {d['max_abs']:.3f} (images in [0, 1]).", "",
             "| | full decoder | tiny decoder | tiny / full |", "|---|---:|---:|---:|",
             f"| decoder parameters | {result['parameters']['full']:,} | {result['parameters']['tiny']:,} | "
             f"{result['parameters']['tiny'] / result['parameters']['full']:.2f}× |",
             f"| decoder MACs per image | {result['macs']['full'] / 1e6:.1f} M | {result['macs']['tiny'] / 1e6:.1f} M | "
             f"{result['macs']['tiny'] / result['macs']['full']:.2f}× |"]
    for key, label in (("decoder", "decoder alone"), ("generator", "whole generator")):
        for runtime, name in (("eager_ms", "eager"), ("ort_ms", "ORT fp32")):
            full, tiny = lat[f"{key}_full"][runtime], lat[f"{key}_tiny"][runtime]
            lines.append(f"| {label}, {name} | {full:.2f} ms | {tiny:.2f} ms | {tiny / full:.2f}× |")
    if "classifier_fd" in dist:
        fd = dist["classifier_fd"]
        lines.append(f"| classifier FD vs real test images (n = {dist['n']}) | {fd['full_vs_real']:.2f} | "
                     f"{fd['tiny_vs_real']:.2f} | {fd['tiny_vs_real'] / fd['full_vs_real']:.3f}× |")
    if "inception" in dist:
        inc = dist["inception"]
        lines.append(f"| Inception FID vs real test images (n = {dist['n']}) | {inc['fid_full_vs_real']:.2f} | "
                     f"{inc['fid_tiny_vs_real']:.2f} | {inc['fid_tiny_vs_real'] / inc['fid_full_vs_real']:.3f}× |")
        lines.append(f"| Inception KID ×10³ vs real | {1e3 * inc['kid_full_vs_real']['mean']:.1f} ± "
                     f"{1e3 * inc['kid_full_vs_real']['std']:.1f} | {1e3 * inc['kid_tiny_vs_real']['mean']:.1f} ± "
                     f"{1e3 * inc['kid_tiny_vs_real']['std']:.1f} | |")
    extra = []
    if "classifier_fd" in dist:
        extra.append(f"classifier FD tiny vs full {dist['classifier_fd']['tiny_vs_full']:.2f}")
    if "inception" in dist:
        extra.append(f"Inception FID tiny vs full {dist['inception']['fid_tiny_vs_full']:.2f}")
    if extra:
        lines += ["", "Between the two decoders' images: " + ", ".join(extra) + "."]
    lines += [f"- {note}" for note in dist.get("notes", [])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from cdx.atomic import atomic_write_text
    from cdx.defaults import ASSETS, default_student
    from cdx.quiet import quiet_third_party

    quiet_third_party()
    parser = argparse.ArgumentParser(prog="python -m cdx.benchmarks.tiny_decoder", description=__doc__.split("\n")[0])
    parser.add_argument("--student", default=None, help="student pipeline (default: the embedded one)")
    parser.add_argument("--decoder", default=str(ASSETS / "fashion_tiny_decoder"), help="AutoencoderTiny folder")
    parser.add_argument("--n", type=int, default=1000, help="student latents for drift and FD")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="latents of seeds FIRST..FIRST+n-1 (another set than the default 0..n-1: a held-out check)")
    parser.add_argument("--no-inception", action="store_true", help="skip Inception FID (classifier FD only)")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--out", type=Path, default=Path("out/tiny_decoder_bench"))
    args = parser.parse_args(argv)
    from cdx.rng import NAME, SEED_COUNT

    if not 0 <= args.first_seed <= SEED_COUNT - args.n:  # beyond, the seeds wrap onto 0.. (not a held-out set)
        parser.error(f"--first-seed {args.first_seed}: must be in 0..{SEED_COUNT - args.n} with --n {args.n} "
                     f"({NAME} seeds are taken mod 2^32)")
    try:
        result = run(args.student or default_student(), args.decoder, args.n, not args.no_inception, args.runs,
                     args.warmup, args.threads, lambda m: print(f"  {m}", flush=True), first_seed=args.first_seed)
    except CdxError as err:
        raise SystemExit(f"error: {err}") from None
    markdown = render_markdown(result)
    atomic_write_text(args.out / "tiny_decoder.json", json.dumps(result, indent=2, default=float) + "\n")
    atomic_write_text(args.out / "tiny_decoder.md", markdown)
    print(markdown)
    print(f"wrote {args.out / 'tiny_decoder.json'} and {args.out / 'tiny_decoder.md'}")


if __name__ == "__main__":
    main()
