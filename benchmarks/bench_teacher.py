"""The teacher on every runtime the artifacts run on, so each "× teacher" is a ratio within one runtime.

Its guided UNet step (the CFG batch of 2 inside the graph) and its VAE decoder are exported with convert's public
per-target functions, the same ones `cdx convert` calls, and looped with the DDIM schedule read from the teacher's
own scheduler config (`sampling.ddim_schedule`) by `loops.run_teacher`, the sampler an app would run. The teacher
starts from the student's initial latents (cdx-normal-v1, the manifest's `noise` input) and conditioning per seed,
so the grid's columns and the distribution scores compare samplers on the same draws.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cdx.errors import CdxError

EXPORTED_RUNTIMES = ("onnxruntime", "executorch")  # the runtimes the teacher is exported for (torch runs it eagerly)
MANIFEST_NAME = "teacher.json"


@dataclass
class TeacherGraphs:
    """Per runtime, the folder + manifest-like file the worker loads the teacher's two graphs from."""

    manifests: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)


def teacher_inputs(samples: list[dict[str, np.ndarray]], input_names: list[str],
                   guidance: float) -> list[dict[str, np.ndarray]]:
    """The teacher step's inputs per seed: the student's own initial latents and conditioning, and w."""
    out = []
    for sample in samples:
        inputs = {"latents": sample["noise"]}
        for name in ("class_label", "text_embedding"):
            if name in input_names:
                inputs[name] = sample[name]
        if "guidance_scale" in input_names:
            inputs["guidance_scale"] = np.array([guidance], dtype=np.float32)
        out.append(inputs)
    return out


def _entry(graph: Any, stem: str) -> dict[str, Any]:
    return {"name": stem, "role": graph.role, "precision": "fp32", "contains": graph.contains(),
            "inputs": [s.as_dict() for s in graph.input_specs()], "outputs": [s.as_dict() for s in graph.output_specs()]}


def _export(graph: Any, folder: Path, stem: str, runtime: str, passes: list[str] | None) -> dict[str, Any]:
    """One graph for one runtime, through convert's public exporter of that target (torch: nothing to export)."""
    entry = _entry(graph, stem)
    if runtime == "torch":
        return {**entry, "target": "torch", "format": "eager", "file": None}
    if runtime == "onnxruntime":
        from cdx.convert.onnx import export_onnx_variant

        artifact = export_onnx_variant(graph, folder / f"{stem}.onnx", "none")
        target = "onnx"
    elif runtime == "executorch":
        from cdx.convert.executorch import export_executorch

        artifact = export_executorch(graph, folder / f"{stem}.pte", "none", passes=passes)
        target = "executorch"
    else:
        raise CdxError(f"no teacher export for runtime {runtime!r}")
    return {**entry, "target": target, "format": artifact.format, "file": artifact.file, "export": artifact.export}


def prepare_teacher(teacher: str, latent_shape: tuple[int, ...], guidance: float, runtimes: list[str],
                    steps: tuple[int, ...], scratch: Path, passes: list[str] | None = None,
                    say: Callable[[str], None] = lambda _m: None) -> TeacherGraphs:
    """Export the teacher's step and decoder graphs for `runtimes` (plus eager torch) into `scratch`.

    A runtime whose export fails gets a note instead of rows; a teacher whose latents differ from the student's
    gets no rows at all (it would not be the same sampling problem).
    """
    from cdx.distill.graphs import DecoderGraph, TeacherStepGraph
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sampling import ddim_schedule

    parts = load_latent_pipeline(teacher)
    size = parts.unet.config.sample_size
    hw = tuple(size) if isinstance(size, list | tuple) else (int(size), int(size))
    result = TeacherGraphs()
    if (parts.latent_channels, *hw) != tuple(latent_shape[1:]):
        result.notes.append(f"teacher {teacher}: latents {[parts.latent_channels, *hw]} differ from the student's "
                            f"{list(latent_shape[1:])}; no teacher rows")
        return result
    step = TeacherStepGraph(parts, latent_shape, guidance).eval()
    decoder = DecoderGraph.of(parts, latent_shape).eval()
    result.input_names = [s.name for s in step.input_specs()]
    schedule = {"scheduler_class": "DDIMScheduler", "eta": 0.0, "latent_shape": list(latent_shape), "steps": [],
                "prediction_type": str(parts.scheduler_config.get("prediction_type", "epsilon")),
                "ddim": {str(n): ddim_schedule(parts.scheduler_config, n) for n in steps}}
    source = {"path": str(Path(teacher).resolve()), "weights_sha256": parts.weights_sha256}
    for runtime in ["torch", *runtimes]:
        folder = scratch / f"teacher.{runtime}"
        folder.mkdir(parents=True, exist_ok=True)
        if runtime != "torch":
            say(f"exporting the teacher's guided UNet step and decoder for {runtime}")
        try:
            models = [_export(step, folder, "teacher_step", runtime, passes),
                      _export(decoder, folder, "teacher_decoder", runtime, passes)]
        except CdxError as exc:
            result.notes.append(f"teacher on {runtime}: not exported ({exc}); no same-runtime teacher ratio")
            continue
        path = folder / MANIFEST_NAME
        path.write_text(json.dumps({"source": source, "schedule": schedule, "models": models}), "utf-8")
        result.manifests[runtime] = path
    return result


def teacher_row_name(steps: int, full: bool) -> str:
    return f"teacher DDIM {steps}" + (" (full)" if full else "")
