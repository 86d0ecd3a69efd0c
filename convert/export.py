"""The conversion driver: load a student, build the generator, export per target, gate, write the manifest.

Everything is written into a temp folder that is renamed into place only when every artifact passed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdx.atomic import atomic_directory
from cdx.convert.generator import OneStepGenerator, build_generator
from cdx.convert.golden import eager_outputs, seeded_batches, stack, write_golden
from cdx.convert.parity import parity_gate
from cdx.distill.loading import LatentPipelineParts, load_latent_pipeline
from cdx.errors import InputError, UnsupportedError
from cdx.manifest import new_manifest, write_manifest

TARGETS = ("onnx", "executorch", "coreml")
# Precisions each target can produce in this build (issue #4 extends the lists).
QUANTS: dict[str, tuple[str, ...]] = {"onnx": ("none",), "executorch": (), "coreml": ()}
MODES = ("generator",)

Progress = Callable[[str], None]


@dataclass
class ConvertOptions:
    """What `cdx convert` was asked to do."""

    target: str = "onnx"
    quants: tuple[str, ...] = ("none",)
    mode: str = "generator"
    steps: int = 1
    latent_sizes: tuple[int, ...] = ()
    seeds: tuple[int, ...] = (0, 1, 2, 3)
    exporter: str = "dynamo"
    force: bool = False
    overwrite: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"unknown --target {self.target!r}; valid: {', '.join(TARGETS)}")
        supported = QUANTS[self.target]
        if not supported:
            raise UnsupportedError(f"--target {self.target} is not built yet (tracked in issue #4); available now: onnx")
        for quant in self.quants:
            if quant not in supported:
                raise UnsupportedError(f"--quant {quant!r} is not available for --target {self.target}; "
                                       f"valid: {', '.join(supported)}")
        if self.mode not in MODES:
            raise UnsupportedError(f"--mode {self.mode!r} is not built yet; valid: {', '.join(MODES)}")
        if self.steps < 1:
            raise InputError("--steps must be >= 1")


def _model_entry(name: str, generator: OneStepGenerator, fmt: str, precision: str, file: str,
                 target: str, steps: int) -> dict[str, Any]:
    h, w = generator.output_specs()[0].shape[2:]
    return {
        "name": name,
        "role": "generator",
        "target": target,
        "format": fmt,
        "precision": precision,
        "file": file,
        "contains": ["student_unet", "consistency_scaling", *(["guidance_embedding"] if generator.guidance_dim else []),
                     "vae_decoder"],
        "resolution": [int(h), int(w)],
        "steps": steps,
        "inputs": [s.as_dict() for s in generator.input_specs()],
        "outputs": [s.as_dict() for s in generator.output_specs()],
    }


def _conditioning_section(parts: LatentPipelineParts) -> dict[str, Any]:
    section: dict[str, Any] = {"type": parts.conditioning}
    if parts.num_classes:
        section["num_classes"] = parts.num_classes
    if parts.class_names:
        section["class_names"] = parts.class_names
    if parts.conditioning == "text_embedding":
        section["embedding_shape"] = [1, parts.text_sequence_length, parts.cross_attention_dim]
    dim = parts.guidance_embedding_dim
    section["guidance"] = {"embedded": bool(dim), **({"embedding_dim": dim, "default": 8.0} if dim else {})}
    return section


def _export_one(target: str, generator: OneStepGenerator, staging: Path, stem: str, quant: str,
                options: ConvertOptions) -> tuple[str, str, str, dict[str, Any]]:
    """Export one graph; returns (file, format, precision, export record)."""
    if target == "onnx":
        from cdx.convert.onnx import export_onnx

        file = f"{stem}.onnx"
        record = export_onnx(generator, staging / file, exporter=options.exporter)
        return file, "onnx", "fp32", record
    raise UnsupportedError(f"--target {target} is not built yet (tracked in issue #4)")


def convert(model: str | Path, out: str | Path, options: ConvertOptions, progress: Progress | None = None) -> Path:
    """Convert the student at `model` into `out` (artifacts + golden data + manifest). Returns the manifest path."""
    options.validate()
    say = progress or (lambda _msg: None)
    say(f"loading {model}")
    parts = load_latent_pipeline(model)
    source = Path(model).resolve() if Path(model).exists() else model
    sizes = options.latent_sizes or (None,)
    with atomic_directory(out, overwrite=options.overwrite) as staging:
        models: list[dict[str, Any]] = []
        schedule: dict[str, Any] = {}
        for size in sizes:
            generator, sched = build_generator(parts, options.steps, latent_hw=(size, size) if size else None)
            schedule = schedule or sched
            latent_h, latent_w = generator.latent_shape[2:]
            say(f"golden data for {latent_h}x{latent_w} latents ({len(options.seeds)} seeds)")
            batches = seeded_batches(generator, list(options.seeds), parts.num_classes)
            reference = eager_outputs(generator, batches)
            golden_prefix = f"generator_{latent_h}x{latent_w}"
            golden = write_golden(staging, stack(batches), stack(reference), golden_prefix)
            golden["seeds"] = list(options.seeds)
            for quant in options.quants:
                stem = f"{golden_prefix}_{quant}" if quant != "none" else golden_prefix
                say(f"exporting {stem} to {options.target}")
                file, fmt, precision, record = _export_one(options.target, generator, staging, stem, quant, options)
                entry = _model_entry(stem, generator, fmt, precision, file, options.target, options.steps)
                entry["export"] = record
                entry["golden"] = golden
                say(f"parity gate for {stem}")
                entry["parity"] = parity_gate(staging, {}, entry, batches, reference, force=options.force)
                models.append(entry)
        manifest = new_manifest(
            source={
                "path": str(source),
                "name": Path(str(model)).name,
                "unet_class": type(parts.unet).__name__,
                "vae_class": type(parts.vae).__name__,
                "weights_sha256": parts.weights_sha256,
                "num_parameters": sum(p.numel() for p in parts.unet.parameters())
                + sum(p.numel() for p in parts.vae.decoder.parameters()),
            },
            conditioning=_conditioning_section(parts),
            schedule=schedule,
            rng={"name": "torch.Generator(cpu).manual_seed(seed) → randn, inputs in manifest order"},
            models=models,
        )
        write_manifest(staging, manifest)
    return Path(out) / "manifest.json"
