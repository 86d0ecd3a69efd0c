"""An artifact's seeded inputs and golden files, from the manifest alone and without torch (numpy only).

Core, not convert: the bundle, the runtimes, the bench workers and the apps read golden files and regenerate the
inputs by the manifest's rule; none of them should import torch or the converter (`convert/golden.py` writes them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cdx import rng
from cdx.errors import InputError

GOLDEN_DIR = "golden"
CONTRAST_SEED_BASE = 20_000  # far from golden and calibration seeds: another text embedding per seed


def stack(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack per-seed dicts along the batch axis (the golden file layout)."""
    return {key: np.concatenate([b[key] for b in batches], axis=0) for key in batches[0]}


def unstack(stacked: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Inverse of `stack`: one batch-1 dict per sample."""
    count = next(iter(stacked.values())).shape[0]
    return [{key: value[i : i + 1] for key, value in stacked.items()} for i in range(count)]


def read_golden(folder: Path, model: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Read a model's golden inputs and outputs back, shaped as [count, *shape[1:]]."""
    from cdx.manifest import resolve_inside

    golden = model["golden"]
    count = len(golden["seeds"])

    def load(specs: list[dict[str, Any]], files: dict[str, str]) -> dict[str, np.ndarray]:
        out = {}
        for spec in specs:
            path = resolve_inside(folder, files[spec["name"]])
            dtype = np.dtype(spec["dtype"]).newbyteorder("<")
            out[spec["name"]] = np.fromfile(path, dtype=dtype).reshape(count, *spec["shape"][1:]).astype(spec["dtype"])
        return out

    return load(model["inputs"], golden["inputs"]), load(model["outputs"], golden["outputs"])


def contrast_batches(input_names: list[str], batches: list[dict[str, np.ndarray]],
                     num_classes: int | None, embeddings: np.ndarray | None = None) -> list[dict[str, np.ndarray]] | None:
    """The same noise with a different conditioning (next class label / the next prompt's text embedding, or another
    seeded embedding when no prompts are given), or None if unconditional.

    The parity gate compares how far outputs move between the two conditionings in the artifact vs the float model,
    so a quantized artifact whose conditional signal collapsed is caught even when its PSNR looks fine. With
    `embeddings` (the encoded prompts, one row each) two real prompts are compared: each batch's prompt and the next.
    """
    if "class_label" in input_names and num_classes and num_classes > 1:
        return [{**b, "class_label": (b["class_label"] + 1) % num_classes} for b in batches]
    if "text_embedding" in input_names:
        out = []
        for i, b in enumerate(batches):
            if embeddings is not None:
                j = next((k for k, row in enumerate(embeddings) if np.array_equal(row, b["text_embedding"][0])), i)
                other = embeddings[(j + 1) % len(embeddings)][None].copy()
            else:
                other = rng.normal(CONTRAST_SEED_BASE + i, b["text_embedding"].shape, input_names.index("text_embedding"))
            out.append({**b, "text_embedding": other.astype(np.float32)})
        return out
    return None


def prompt_tensors(folder: Path, manifest: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(input_ids [P, L], text_embedding [P, L, D]) of the manifest's prompts (`conditioning.prompts`): what every
    graph's `text_embedding` input is built from, or None for a manifest without prompts."""
    from cdx.manifest import resolve_inside

    conditioning = manifest["conditioning"]
    prompts = conditioning.get("prompts")
    if not prompts:
        return None
    count = len(prompts["texts"])
    shape = conditioning["embedding_shape"]
    ids = np.fromfile(resolve_inside(folder, prompts["input_ids"]), dtype="<i8").reshape(count, shape[1])
    embeddings = np.fromfile(resolve_inside(folder, prompts["text_embedding"]), dtype="<f4").reshape(count, *shape[1:])
    return ids.astype(np.int64), embeddings.astype(np.float32)


def manifest_inputs(model: dict[str, Any], manifest: dict[str, Any], seeds: list[int],
                    folder: Path | None = None) -> list[dict[str, np.ndarray]]:
    """Seeded inputs for a manifest entry, built from the manifest alone (the rule in `manifest["rng"]`).

    Random tensors are drawn from cdx-normal-v1 (`cdx/rng.py`) with stream = input index; class labels cycle with the
    seed's index; w is the manifest's default; step-graph constants are the first schedule step. For the generator
    this is exactly what `example_inputs` gives, so any runtime (or app) can regenerate the golden inputs.
    A text student converted with prompts (`conditioning.prompts`) takes, for the seed at index i, the encoded prompt
    i % P (`text_embedding`) or its token ids (`input_ids`), read from the files `conditioning.prompts` names in `folder`.
    """
    conditioning = manifest["conditioning"]
    first_step = manifest["schedule"]["steps"][0]
    names = {spec["name"] for spec in model["inputs"]}
    prompts = None
    if conditioning.get("prompts") and names & {"text_embedding", "input_ids"}:
        if folder is None:
            raise InputError(f"{model['name']}: its text inputs are the manifest's encoded prompts; "
                             "pass the artifact folder to read them")
        prompts = prompt_tensors(Path(folder), manifest)
    batches = []
    for i, seed in enumerate(seeds):
        batch: dict[str, np.ndarray] = {}
        for stream, spec in enumerate(model["inputs"]):
            name, shape, dtype = spec["name"], spec["shape"], np.dtype(spec["dtype"])
            if prompts is not None and name in ("input_ids", "text_embedding"):
                rows = prompts[0] if name == "input_ids" else prompts[1]
                value = rows[i % len(rows)][None].copy()
            elif name == "class_label":
                value = np.full(shape, i % (conditioning.get("num_classes") or 1))
            elif name == "guidance_scale":
                value = np.full(shape, conditioning["guidance"].get("default", 8.0))
            elif name in first_step:
                value = np.full(shape, first_step[name])
            else:
                value = rng.normal(seed, shape, stream)
            batch[name] = value.astype(dtype)
        batches.append(batch)
    return batches
