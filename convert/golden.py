"""Golden data: seeded inputs and the float model's outputs, as raw little-endian files any runtime can read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdx.distill.generator import ExportableGraph
from cdx.errors import InputError

# numpy-only helpers live in the core (cdx.golden_io, no torch import); re-exported for the callers of this module
from cdx.golden_io import GOLDEN_DIR, contrast_batches, manifest_inputs, read_golden, stack, unstack  # noqa: F401
from cdx.images import save_image_grid


def seeded_batches(generator: ExportableGraph, seeds: list[int], num_classes: int | None,
                   prompt_embeddings: np.ndarray | None = None) -> list[dict[str, np.ndarray]]:
    """One input dict per seed; class labels cycle through the classes and encoded prompts through the prompt set
    (seed index i takes prompt i % P), so conditioning is exercised with what a user would feed."""
    batches = []
    for i, seed in enumerate(seeds):
        label = i % num_classes if num_classes else 0
        tensors = generator.example_inputs(seed=seed, class_label=label)
        batch = {k: v.numpy() for k, v in tensors.items()}
        batches.append(_with_prompt(batch, prompt_embeddings, i))
    return batches


def _row(prompt_embeddings: np.ndarray, index: int) -> np.ndarray:
    """Prompt `index % P` as a [1, L, D] array with its own memory (a [None] view has a 0 stride torch.export
    and ExecuTorch refuse)."""
    k = index % len(prompt_embeddings)
    return prompt_embeddings[k : k + 1].copy()


def _with_prompt(batch: dict[str, np.ndarray], prompt_embeddings: np.ndarray | None, index: int) -> dict[str, np.ndarray]:
    if prompt_embeddings is None or "text_embedding" not in batch:
        return batch
    return {**batch, "text_embedding": _row(prompt_embeddings, index)}


@torch.inference_mode()
def eager_outputs(generator: ExportableGraph, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The float PyTorch generator's outputs on each input dict (every named output, for multi-output graphs)."""
    names = [spec.name for spec in generator.output_specs()]
    results = []
    for batch in batches:
        out = generator(*(torch.from_numpy(v) for v in batch.values()))
        out = out if isinstance(out, tuple) else (out,)
        results.append({name: value.numpy() for name, value in zip(names, out, strict=True)})
    return results


def write_golden(folder: Path, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], prefix: str) -> dict[str, Any]:
    """Write `<prefix>.<tensor>.bin` files (little-endian) and PNGs of image outputs; return the manifest entry."""
    base = folder / GOLDEN_DIR
    base.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"inputs": {}, "outputs": {}}
    for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
        for name, array in tensors.items():
            rel = f"{GOLDEN_DIR}/{prefix}.{kind[:-1]}.{name}.bin"
            array.astype(array.dtype.newbyteorder("<"), copy=False).tofile(folder / rel)
            entry[kind][name] = rel
    for name, array in outputs.items():
        if array.ndim == 4 and array.shape[1] == 3:
            save_image_grid(array, folder / GOLDEN_DIR / f"{prefix}.{name}.png")
    return entry


CALIBRATION_SEED_BASE = 10_000  # far from the golden seeds, so calibration never sees the parity inputs


def calibration_inputs(generator: ExportableGraph, count: int, num_classes: int | None,
                       guidance: tuple[float, ...] = (2.0, 4.0, 8.0, 12.0),
                       prompt_embeddings: np.ndarray | None = None) -> list[tuple[torch.Tensor, ...]]:
    """Seeded generator inputs for static quantization: fresh noise, every class label or prompt, a spread of guidance
    scales.

    The generator's input *is* seeded noise + conditioning, so these are the real input distribution — for a text
    student only when the conditioning is encoded prompts (`prompt_embeddings`, sample j takes prompt j % P): real
    CLIP states have large outlier channels that N(0, 1) stand-ins do not, and int8 ranges are set by them.
    """
    batches = []
    for i in range(count):
        label = i % num_classes if num_classes else 0
        tensors = generator.example_inputs(seed=CALIBRATION_SEED_BASE + i, class_label=label,
                                           guidance_scale=guidance[i % len(guidance)])
        if prompt_embeddings is not None and "text_embedding" in tensors:
            tensors["text_embedding"] = torch.from_numpy(_row(prompt_embeddings, i))
        batches.append(tuple(tensors.values()))
    return batches


# ---- the prompt set of a text student --------------------------------------------------------------------------------
BUILTIN_PROMPTS = ("a red apple", "a grinning face", "a yellow star", "a blue car", "a green tree", "a cup of hot coffee",
                   "a cat face", "flag: France")
MIN_PROMPTS = 2  # the conditioning-sensitivity check compares two prompts


@dataclass(frozen=True)
class PromptSet:
    """The prompts a text student is encoded, calibrated and gated with, and where they came from (the manifest's
    `conditioning.prompts`)."""

    texts: tuple[str, ...]
    source: str  # file | model | builtin
    file: str | None = None
    sha256: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"texts": list(self.texts), "source": self.source}
        if self.file:
            data.update(file=self.file, sha256=self.sha256)
        return data


def read_prompts_file(path: str | Path) -> PromptSet:
    """`--prompts FILE`: UTF-8, one prompt per line; blank lines are skipped. Anything else is one line naming the file."""
    from cdx.atomic import sha256_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--prompts {path}: no such file")
    try:
        text = path.read_text("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"--prompts {path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"--prompts {path}: cannot read ({exc.strerror})") from None
    if "\x00" in text:
        raise InputError(f"--prompts {path}: not a text file (contains NUL bytes)")
    texts = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(texts) < MIN_PROMPTS:
        raise InputError(f"--prompts {path}: {len(texts)} prompt(s); need at least {MIN_PROMPTS}, one per line "
                         "(the conditioning-sensitivity check compares two)")
    return PromptSet(texts, "file", str(path), sha256_file(path))


def prompt_set(class_names: list[str], prompts_file: str | Path | None = None) -> PromptSet:
    """The --prompts file, else the captions recorded in the student's cdx.json (its sample-grid prompts), else
    cdx's built-in set."""
    if prompts_file is not None:
        return read_prompts_file(prompts_file)
    recorded = tuple(dict.fromkeys(name.strip() for name in class_names if name.strip()))
    if len(recorded) >= MIN_PROMPTS:
        return PromptSet(recorded, "model")
    return PromptSet(BUILTIN_PROMPTS, "builtin")


def write_prompts(folder: Path, prompts: PromptSet, input_ids: np.ndarray, embeddings: np.ndarray) -> dict[str, Any]:
    """Write the encoded prompts (the text encoder's golden files) and return the manifest's `conditioning.prompts`."""
    entry = write_golden(folder, {"input_ids": input_ids}, {"text_embedding": embeddings}, "text_encoder")
    return {**prompts.as_dict(), "input_ids": entry["inputs"]["input_ids"],
            "text_embedding": entry["outputs"]["text_embedding"]}
