"""The conversion driver: load a student, build the generator, export per target, gate, write the manifest.

Everything is written into a temp folder that is renamed into place only when every artifact passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx import rng
from cdx.atomic import atomic_directory, refuse_existing
from cdx.convert.artifact import Artifact
from cdx.convert.golden import (
    PromptSet,
    calibration_inputs,
    contrast_batches,
    eager_outputs,
    prompt_set,
    seeded_batches,
    stack,
    write_golden,
    write_prompts,
)
from cdx.convert.parity import parity_gate
from cdx.distill.consistency import check_sampling_steps
from cdx.distill.generator import ExportableGraph as Graph
from cdx.distill.generator import OneStepGenerator, build_generator
from cdx.distill.loading import LatentPipelineParts, load_latent_pipeline
from cdx.distill.loops import RENOISE_MODES
from cdx.errors import InputError, UnsupportedError
from cdx.manifest import new_manifest, write_manifest

TARGETS = ("onnx", "executorch", "coreml")
# --quant values each target can produce (the per-target modules say what each one means).
QUANTS: dict[str, tuple[str, ...]] = {
    "onnx": ("none", "fp16", "int8-dynamic", "int8-static", "ort"),
    "executorch": ("none", "int8", "coreml"),
    "coreml": ("none", "fp32", "fp16", "int8", "palettize6", "palettize4"),
}
CALIBRATION_SAMPLES = 8
MODES = ("generator", "components")

Progress = Callable[[str], None]


@dataclass
class ConvertOptions:
    """What `cdx convert` was asked to do."""

    target: str = "onnx"
    quants: tuple[str, ...] = ("none",)
    mode: str = "generator"
    steps: int = 1
    renoise_with: str = "fresh"  # between the steps of a multi-step generator (see `loops.consistency_loop`)
    latent_sizes: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    exporter: str = "dynamo"
    force: bool = False
    overwrite: bool = False
    passes: tuple[str, ...] | None = None  # ExecuTorch graph rewrites (None = all, see convert/passes.py)
    coreml_target: str = "iOS17"
    calibration_samples: int = CALIBRATION_SAMPLES
    lora: str | None = None  # an LCM-LoRA folder (cdx distill --lora-rank): fused into the base UNet before export
    prompts: str | None = None  # text students: a file of prompts, one a line (default: the student's cdx.json or built-in)
    text_encoder: bool = False  # text students: also export the text encoder graph + tokenizer (`cdx convert` does)
    decoder: str | None = None  # an AutoencoderTiny folder (cdx distill-decoder) in place of the VAE decoder
    chunks: int = 1  # Core ML, components mode: the UNet step as this many sequential .mlpackages (convert/unet_chunks.py)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"unknown --target {self.target!r}; valid: {', '.join(TARGETS)}")
        supported = QUANTS[self.target]
        if not self.quants:
            raise InputError(f"no --quant given; valid for --target {self.target}: {', '.join(supported)}")
        for quant in self.quants:
            if quant not in supported:
                raise InputError(f"unknown --quant {quant!r} for --target {self.target}; valid: {', '.join(supported)}")
        if len(set(self.quants)) != len(self.quants):
            raise InputError(f"--quant given twice: {', '.join(self.quants)}")
        if self.passes is not None:
            from cdx.convert.passes import resolve_passes

            resolve_passes(self.passes)
        if self.coreml_target not in ("iOS17", "iOS18"):
            raise InputError(f"unknown Core ML deployment target {self.coreml_target!r}; valid: iOS17, iOS18")
        if self.mode not in MODES:
            raise UnsupportedError(f"--mode {self.mode!r} is not built yet; valid: {', '.join(MODES)}")
        if self.steps < 1:
            raise InputError("--steps must be >= 1")
        if self.renoise_with not in RENOISE_MODES:
            raise InputError(f"unknown --renoise {self.renoise_with!r}; valid: {', '.join(RENOISE_MODES)}")
        if self.renoise_with != "fresh" and self.steps < 2:
            raise InputError(f"--renoise {self.renoise_with} re-noises between steps: give --steps 2 or more")
        if not self.seeds:
            raise InputError("--num-seeds must be >= 1")
        if self.calibration_samples < 1:
            raise InputError(f"--calibration-samples {self.calibration_samples}: must be >= 1")
        if any(size < 1 for size in self.latent_sizes):
            raise InputError(f"--latent-size {', '.join(map(str, self.latent_sizes))}: sizes must be >= 1")
        if self.chunks < 1:
            raise InputError(f"--chunks {self.chunks}: must be >= 1")
        if self.chunks > 1 and (self.target != "coreml" or self.mode != "components"):
            raise InputError(f"--chunks {self.chunks}: splitting the UNet needs --target coreml --mode components "
                             f"(got --target {self.target} --mode {self.mode}); the decoder is then its own model")
        if self.lora is not None and not (Path(self.lora) / "pytorch_lora_weights.safetensors").is_file():
            raise InputError(f"--lora {self.lora}: no pytorch_lora_weights.safetensors there")
        if self.decoder is not None:
            from cdx.distill.decoder_swap import check_decoder_folder

            check_decoder_folder(self.decoder)
        if self.prompts is not None:
            from cdx.convert.golden import read_prompts_file

            read_prompts_file(self.prompts)


def _model_entry(name: str, graph: Graph, resolution: tuple[int, int] | None, artifact: Artifact, target: str,
                 steps: int) -> dict[str, Any]:
    entry = {
        "name": name,
        "role": graph.role,
        "target": target,
        "format": artifact.format,
        "precision": artifact.precision,
        "file": artifact.file,
        "contains": graph.contains(),
        "resolution": [int(resolution[0]), int(resolution[1])] if resolution else None,
        "steps": steps,
        "inputs": [s.as_dict() for s in graph.input_specs()],
        "outputs": [s.as_dict() for s in graph.output_specs()],
        "export": artifact.export,
    }
    if artifact.quantization:
        entry["quantization"] = artifact.quantization
    if artifact.external_data:
        entry["external_data"] = artifact.external_data
    return entry


def _conditioning_section(parts: LatentPipelineParts, prompts: dict[str, Any] | None = None) -> dict[str, Any]:
    section: dict[str, Any] = {"type": parts.conditioning}
    if prompts is not None:
        section["prompts"] = prompts
    if parts.num_classes:
        section["num_classes"] = parts.num_classes
    if parts.class_names:
        section["class_names"] = parts.class_names
    if parts.conditioning == "text_embedding":
        section["embedding_shape"] = [1, parts.text_sequence_length, parts.cross_attention_dim]
    dim = parts.guidance_embedding_dim
    guidance: dict[str, Any] = {"embedded": bool(dim)}
    if dim:
        guidance.update(embedding_dim=dim, default=parts.default_guidance)
        if parts.guidance_range:
            guidance["range"] = list(parts.guidance_range)
    section["guidance"] = guidance
    return section


@dataclass
class GraphJob:
    """One graph to export at one resolution: the module, its parity inputs and golden slice, its calibration data."""

    stem: str
    graph: Graph
    parity_inputs: list[dict[str, np.ndarray]]
    calibration: list[tuple[torch.Tensor, ...]]
    golden_stride: int = 1  # parity inputs per seed (the step graph sees every step); golden keeps the first of each
    quants: tuple[str, ...] | None = None  # the --quant variants to make (None: all of options.quants)
    golden_extra: dict[str, Any] = field(default_factory=dict)  # recorded in the golden entry (e.g. its prompts)


def _as_tuples(graph: Graph, batches: list[dict[str, np.ndarray]]) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(torch.from_numpy(b[s.name]) for s in graph.input_specs()) for b in batches]


def _graph_jobs(generator: OneStepGenerator, mode: str, batches: list[dict[str, np.ndarray]],
                calibration: list[dict[str, np.ndarray]], prefix: str, chunks: int = 1) -> list[GraphJob]:
    """The generator alone, or its step and decoder graphs with inputs taken along the eager sampler's trajectory
    (the step as `chunks` sequential graphs when chunks > 1)."""
    if mode == "generator":
        return [GraphJob(f"generator_{prefix}", generator, batches, _as_tuples(generator, calibration))]
    from cdx.distill.graphs import build_components, component_batches

    step, decoder = build_components(generator)
    step_inputs, decoder_inputs = component_batches(generator, batches)
    step_calibration, decoder_calibration = component_batches(generator, calibration)
    per_seed = len(generator.steps)
    decoder_job = GraphJob(f"vae_decoder_{prefix}", decoder, decoder_inputs, _as_tuples(decoder, decoder_calibration))
    if chunks > 1:
        from cdx.convert.unet_chunks import chunk_batches, chunk_step_graph

        pieces = chunk_step_graph(step, chunks)
        inputs, calib = chunk_batches(pieces, step_inputs), chunk_batches(pieces, step_calibration)
        return [*(GraphJob(f"unet_step_{prefix}_chunk{c.index + 1}of{c.count}", c, inputs[c.index],
                           _as_tuples(c, calib[c.index]), per_seed) for c in pieces), decoder_job]
    return [GraphJob(f"unet_step_{prefix}", step, step_inputs, _as_tuples(step, step_calibration), per_seed), decoder_job]


def _export_one(target: str, generator: Graph, staging: Path, stem: str, quant: str,
                options: ConvertOptions, context: dict[str, Any]) -> Artifact | Callable[[], Artifact]:
    """Export one graph with the target's module; `context` carries the golden/calibration data and a per-run cache.

    What needs the PyTorch model runs now; ONNX variants derived from the fp32 file come back as a callable that
    the driver runs after it has released the eager weights (`_release_weights`), so they never coexist with them.
    """
    say = context.get("say")
    if target == "onnx":
        from cdx.convert.onnx import QUANTS as ONNX_QUANTS
        from cdx.convert.onnx import derive_onnx_variant, export_onnx_fp32

        suffix = ".ort" if ONNX_QUANTS[quant][1] == "ort" else ".onnx"
        cache = context["cache"]
        key = ("onnx_fp32", id(generator), options.exporter)
        if quant == "none" or key not in cache:
            if quant == "none":
                fp32_path = staging / f"{stem}{suffix}"
            else:
                import tempfile

                tmp = cache["onnx_tmp"] = cache.get("onnx_tmp") or tempfile.TemporaryDirectory(prefix="cdx-onnx-")
                fp32_path = Path(tmp.name) / f"fp32_{len(cache)}.onnx"
            cache[key] = export_onnx_fp32(generator, fp32_path, options.exporter)
            if quant == "none":
                return cache[key]
        base = cache[key]
        source = staging / base.file if base.file and (staging / base.file).exists() else None
        source = source or Path(cache["onnx_tmp"].name) / base.file
        feeds = [dict(zip([s.name for s in generator.input_specs()], (t.numpy() for t in batch), strict=True))
                 for batch in context["calibration"]]
        output_range = generator.output_specs()[0].range
        keep_alive = cache.get("onnx_tmp")  # the temp fp32 file lives until the deferred variant is made

        def derive() -> Artifact:
            _ = keep_alive
            return derive_onnx_variant(source, base.export, staging / f"{stem}{suffix}", quant, feeds, output_range)

        return derive
    if target == "executorch":
        from cdx.convert.executorch import export_executorch

        return export_executorch(generator, staging / f"{stem}.pte", quant, passes=options.passes,
                                 calibration=context["calibration"], say=say)
    if target == "coreml":
        from cdx.convert.coreml import export_coreml

        return export_coreml(generator, staging / f"{stem}.mlpackage", quant, deployment_target=options.coreml_target,
                             batches=context["batches"], say=say, cache=context["cache"])
    raise UnsupportedError(f"unknown --target {target!r}; valid: {', '.join(TARGETS)}")


def _contrast(generator: Graph, batches: list[dict[str, Any]], num_classes: int | None,
              embeddings: np.ndarray | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """The golden inputs with another conditioning (the next prompt, for text students), and the float model's outputs
    on them (None if unconditional)."""
    other = contrast_batches([s.name for s in generator.input_specs()], batches, num_classes, embeddings)
    return None if other is None else (other, eager_outputs(generator, other))


def parity_line(record: dict[str, Any]) -> str:
    """One line of what the parity gate measured (or why it could only check the spec)."""
    if record["checked"] != "numeric":
        return f"parity: {record['checked']} check only — {record.get('reason', '')}"
    line = f"parity: PSNR {record['psnr_db']:.1f} dB, max-abs {record['max_abs']:.2e}"
    if "ssim" in record:
        line += f", SSIM {record['ssim']:.4f}"
    if "conditioning_sensitivity" in record:
        line += f", conditioning sensitivity {record['conditioning_sensitivity']['aligned_ratio']:.2f}× (aligned)"
    return line


@dataclass
class PendingGate:
    """What is left of one artifact after the export phase: (maybe) deriving it, then its parity gate. It holds
    numpy data and the graph's specs only; the graph's weights are released before it runs."""

    stem: str
    graph: Graph
    resolution: tuple[int, int] | None
    make: Artifact | Callable[[], Artifact]
    inputs: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    contrast: tuple[list[dict[str, Any]], list[dict[str, Any]]] | None
    golden: dict[str, Any]


PENDING = "_pending"  # key of the PendingGate inside a not-yet-gated manifest entry


def _export_graph(job: GraphJob, staging: Path, options: ConvertOptions, num_classes: int | None,
                  resolution: tuple[int, int] | None, cache: dict[Any, Any], say: Progress,
                  embeddings: np.ndarray | None = None) -> list[dict[str, Any]]:
    """Golden data, then every --quant variant of one graph that needs the PyTorch model; the entries carry their
    pending derivation and parity gate (`finish_entries` runs them once the eager weights are released)."""
    reference = eager_outputs(job.graph, job.parity_inputs)
    stride = job.golden_stride
    golden = write_golden(staging, stack(job.parity_inputs[::stride]), stack(reference[::stride]), job.stem)
    golden["seeds"] = list(options.seeds)
    golden.update(job.golden_extra)
    context: dict[str, Any] = {"say": say, "batches": job.parity_inputs, "cache": cache, "calibration": job.calibration}
    contrast = _contrast(job.graph, job.parity_inputs, num_classes, embeddings)
    entries = []
    for quant in job.quants or options.quants:
        stem = f"{job.stem}_{quant}" if quant != "none" else job.stem
        artifact = _export_one(options.target, job.graph, staging, stem, quant, options, context)
        if isinstance(artifact, Artifact):
            say(f"exported {stem} to {options.target}")
        placeholder: dict[str, Any] = {"name": stem}
        if hasattr(job.graph, "chunk_record"):
            placeholder["chunk"] = job.graph.chunk_record(of=job.stem.rsplit("_chunk", 1)[0])
        entries.append({**placeholder, PENDING: PendingGate(stem, job.graph, resolution, artifact, job.parity_inputs,
                                                           reference, contrast, golden)})
    for key in [k for k in cache if isinstance(k, tuple) and k[0] == "coreml"]:
        del cache[key]  # a converted Core ML program holds the weights: drop it once its variants are saved
    return entries


def _eager_modules(*all_parts: LatentPipelineParts | None) -> list[torch.nn.Module]:
    """The PyTorch modules of the loaded pipeline(s), each once."""
    found: dict[int, torch.nn.Module] = {}
    for parts in all_parts:
        if parts is not None:
            for module in (parts.unet, parts.vae, parts.text_encoder):
                if module is not None:
                    found[id(module)] = module
    return list(found.values())


def _release_weights(*modules: torch.nn.Module | None) -> None:
    """Move the eager models' weights to the meta device (shapes stay, so parameter counts still work) and hand the
    freed memory back to the OS: the parity gates then run beside the artifact only, not beside the PyTorch model."""
    import gc

    for module in modules:
        if module is not None:
            module.to("meta")
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """glibc keeps freed small blocks (most weight tensors are < its 32 MB mmap threshold) in its heap: return them."""
    import contextlib
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not glibc (e.g. musl): nothing to trim
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def finish_entries(staging: Path, models: list[dict[str, Any]], options: ConvertOptions,
                   say: Progress) -> list[dict[str, Any]]:
    """Derive the deferred artifacts and run every parity gate; returns the finished manifest entries."""
    finished = []
    for placeholder in models:
        pending: PendingGate | None = placeholder.get(PENDING)
        if pending is None:
            finished.append(placeholder)
            continue
        if not isinstance(pending.make, Artifact):
            say(f"exporting {pending.stem} to {options.target}")
        artifact = pending.make if isinstance(pending.make, Artifact) else pending.make()
        entry = _model_entry(pending.stem, pending.graph, pending.resolution, artifact, options.target, options.steps)
        if pending.resolution is None:  # the text encoder: no image size, no sampling steps
            entry.pop("resolution"), entry.pop("steps")
        entry["size_bytes"] = artifact_bytes(staging, artifact)
        entry["golden"] = pending.golden
        for key, value in placeholder.items():  # what callers added to the placeholder (e.g. the text encoder's name)
            if key != PENDING:
                entry[key] = value
        say(f"parity gate for {entry['name']}")
        entry["parity"] = parity_gate(staging, {}, entry, pending.inputs, pending.reference, force=options.force,
                                      contrast=pending.contrast)
        say(parity_line(entry["parity"]))
        finished.append(entry)
        trim_heap()
    return finished


def artifact_bytes(staging: Path, artifact: Artifact) -> int:
    """Bytes on disk of one artifact: its file (or .mlpackage folder) and its external data files."""
    total = 0
    for name in (artifact.file, *artifact.external_data):
        path = staging / name
        total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    return total


def _fuse_lora(parts: LatentPipelineParts, folder: str, say: Progress) -> dict[str, Any]:
    """Fuse an LCM-LoRA into the base UNet; the LoRA's own record (cdx.json) supplies the parameterization, the
    guidance range and the distillation grid (LCMScheduler's original_inference_steps)."""
    from cdx.atomic import sha256_file
    from cdx.distill.lora import LORA_WEIGHTS, fuse_lora, read_lora_info

    say(f"fusing LoRA {folder}")
    fuse_lora(parts.unet, folder)
    info = read_lora_info(Path(folder))
    parts.parameterization = str(info.get("parameterization", "lcm"))
    if info.get("guidance_range") and parts.guidance_embedding_dim:
        parts.guidance_range = (float(info["guidance_range"][0]), float(info["guidance_range"][1]))
    grid = (info.get("distill") or {}).get("num_solver_steps")
    if grid:
        parts.scheduler_config = {**parts.scheduler_config, "original_inference_steps": int(grid)}
    return {"path": str(Path(folder).resolve()), "sha256": sha256_file(Path(folder) / LORA_WEIGHTS),
            "parameterization": parts.parameterization}


# the text encoder is exported once per convert, in float (the generator carries the --quant variants)
TEXT_ENCODER_QUANT = {"onnx": "none", "executorch": "none", "coreml": "fp32"}


def _prompts(parts: LatentPipelineParts, options: ConvertOptions,
             say: Progress) -> tuple[PromptSet | None, np.ndarray | None]:
    """A text student's prompt set and its encoding by the student's own text encoder; (None, None) otherwise."""
    if parts.conditioning != "text_embedding":
        if options.prompts is not None:
            raise InputError(f"--prompts {options.prompts}: {parts.path} is not text-conditioned ({parts.conditioning})")
        return None, None
    if parts.text_encoder is None or parts.tokenizer is None:
        if options.prompts is not None:
            raise InputError(f"--prompts {options.prompts}: {parts.path} has no text_encoder/ and tokenizer/ to encode them")
        return None, None  # a bare UNet: golden data keeps seeded stand-in embeddings
    from cdx.distill.text_encoder_graph import encode

    prompts = prompt_set(parts.class_names, options.prompts)
    say(f"encoding {len(prompts.texts)} prompts ({prompts.source}) with the student's text encoder")
    return prompts, encode(parts, list(prompts.texts))


def _write_prompts(parts: LatentPipelineParts, prompts: PromptSet | None, embeddings: np.ndarray | None,
                   staging: Path) -> dict[str, Any] | None:
    """The encoded prompts' files (every text input is rebuilt from them) and the manifest's record of them."""
    if prompts is None or embeddings is None:
        return None
    from cdx.distill.text_encoder_graph import tokenize

    return write_prompts(staging, prompts, tokenize(parts, list(prompts.texts)), embeddings)


def _export_text_encoder(parts: LatentPipelineParts, prompts: PromptSet, staging: Path, options: ConvertOptions,
                         say: Progress) -> list[dict[str, Any]]:
    """The text encoder graph (float), gated on the prompts' token ids, with the tokenizer section and files."""
    from cdx.distill.text_encoder_graph import TextEncoderGraph, tokenize, tokenizer_section

    ids = tokenize(parts, list(prompts.texts))
    graph = TextEncoderGraph(parts, example_ids=ids).eval()
    inputs = [{"input_ids": ids[i : i + 1]} for i in range(len(ids))]
    job = GraphJob("text_encoder", graph, inputs, _as_tuples(graph, inputs),
                   quants=(TEXT_ENCODER_QUANT[options.target],), golden_extra={"prompts": list(prompts.texts)})
    entries = _export_graph(job, staging, replace(options, seeds=tuple(range(len(ids)))), None, None, {}, say)
    section = tokenizer_section(parts, staging)
    for entry in entries:
        entry["name"] = "text_encoder"
        entry["tokenizer"] = section
    return entries


def convert(model: str | Path, out: str | Path, options: ConvertOptions, progress: Progress | None = None) -> Path:
    """Convert the student at `model` into `out` (artifacts + golden data + manifest). Returns the manifest path."""
    options.validate()
    refuse_existing(out, options.overwrite)  # before minutes of loading, not after
    say = progress or (lambda _msg: None)
    say(f"loading {model}")
    parts = load_latent_pipeline(model)
    lora = _fuse_lora(parts, options.lora, say) if options.lora else None
    full_parts, decoder = parts, None
    if options.decoder:
        from cdx.distill.decoder_swap import decoder_mismatch_warning, generator_drift, with_decoder

        say(f"decoder: {options.decoder}")
        parts, decoder = with_decoder(parts, options.decoder)
        if warning := decoder_mismatch_warning(options.decoder, decoder, model):
            say(warning)
    check_sampling_steps(parts.scheduler_config, options.steps)
    prompts, embeddings = _prompts(parts, options, say)
    source = Path(model).resolve() if Path(model).exists() else model
    sizes = options.latent_sizes or (None,)
    with atomic_directory(out, overwrite=options.overwrite) as staging:
        prompt_record = _write_prompts(parts, prompts, embeddings, staging)
        models: list[dict[str, Any]] = []
        schedule: dict[str, Any] = {}
        for size in sizes:
            generator, sched = build_generator(parts, options.steps, parameterization=parts.parameterization,
                                               latent_hw=(size, size) if size else None,
                                               renoise_with=options.renoise_with)
            schedule = schedule or sched
            latent_h, latent_w = generator.latent_shape[2:]
            resolution = generator.output_specs()[0].shape[2:]
            say(f"golden data for {latent_h}x{latent_w} latents ({len(options.seeds)} seeds)")
            batches = seeded_batches(generator, list(options.seeds), parts.num_classes, embeddings)
            if decoder is not None:
                drift = decoder.setdefault("drift_vs_full_decoder", {})
                drift[f"{latent_h}x{latent_w}"] = generator_drift(full_parts, generator, sched, batches)
            names = [s.name for s in generator.input_specs()]
            calibration = [{n: t.numpy() for n, t in zip(names, b, strict=True)}
                           for b in calibration_inputs(generator, options.calibration_samples, parts.num_classes,
                                                       parts.calibration_guidance, embeddings)]
            cache: dict[Any, Any] = {}
            for job in _graph_jobs(generator, options.mode, batches, calibration, f"{latent_h}x{latent_w}", options.chunks):
                if prompts is not None:
                    job.golden_extra["prompts"] = [prompts.texts[i % len(prompts.texts)] for i in range(len(batches))]
                models += _export_graph(job, staging, options, parts.num_classes, resolution, cache, say, embeddings)
        if prompts is not None and options.text_encoder:
            models += _export_text_encoder(parts, prompts, staging, options, say)
        _release_weights(*_eager_modules(parts, full_parts))
        models = finish_entries(staging, models, options, say)
        manifest = new_manifest(
            source={
                "path": str(source),
                "name": Path(str(model)).name,
                "unet_class": type(parts.unet).__name__,
                "vae_class": type(full_parts.vae).__name__,
                **({"decoder": decoder} if decoder else {}),
                "weights_sha256": parts.weights_sha256,
                **({"lora": lora} if lora else {}),
                "num_parameters": sum(p.numel() for p in parts.unet.parameters())
                + sum(p.numel() for p in parts.vae.decoder.parameters()),
            },
            conditioning=_conditioning_section(parts, prompt_record),
            schedule=schedule,
            rng=rng.describe(),
            models=models,
        )
        write_manifest(staging, manifest)
    return Path(out) / "manifest.json"
