"""Cached teacher rollouts: the teacher's ODE-solver steps written once, then streamed with no teacher calls.

A cache is a folder of safetensors shards plus `index.json` (format `cdx-rollouts/1`). Record j is micro-batch j of
a CD run: every tensor the distiller's `sample_batch` drew (x₀, noise, t = t_{n+k}, s = t_n, labels or prompt
embeddings, the CFG scale w and its embedding), plus x_t (= x_{t+k}) and x_s (= x̂_t, the teacher's CFG solver output
at s). Non-tensor fields (captions) ride in the shard's metadata. The writer replays exactly the draws an uncached run
makes (the run's generator, batch j of the data), so a cached run sees the same batches and targets as an uncached
run with the same seed; each shard also stores the generator state after its last record ("noise seed"), which is
where a killed writer resumes: shards already listed in the index are kept, the rest are written again.

Every shard's sha256 and size are in the index; a shard that does not match is refused in one line naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from cdx.atomic import atomic_write_bytes, atomic_write_text, sha256_file
from cdx.errors import CdxError, InputError


def fresh_noise_refusal(config: Any) -> str | None:
    """Why a cache cannot serve this run: its batches hold no fresh noise for the one-step terms (the regression calls
    the teacher on it; the adversarial term's fakes are made from it), so they would be skipped silently."""
    for flag, on in (("--ode-regression-weight", getattr(config, "ode_regression_weight", 0)),
                     ("--adversarial-weight", getattr(config, "adversarial_weight", 0)),
                     ("--dmd-weight", getattr(config, "dmd_weight", 0))):
        if on:
            return (f"--rollout-cache with {flag}: the term needs fresh noise (and the teacher/student on it) every "
                    "update; drop one of them")
    return None

FORMAT = "cdx-rollouts/1"
INDEX = "index.json"
RNG_KEY = "__rng_after__"
EXTRAS_KEY = "__extras__"  # JSON of the non-tensor fields, as bytes (safetensors metadata order is not stable)


def fingerprint(distiller: Any) -> dict[str, Any]:
    """What the cached targets depend on; a cache written under another value is refused."""
    cfg = distiller.config
    return {"teacher_weights_sha256": getattr(distiller.export_parts if hasattr(distiller, "export_parts")
                                              else distiller.parts, "weights_sha256", None),
            "seed": cfg.seed, "batch_size": cfg.batch_size, "solver": cfg.solver, "num_solver_steps": cfg.num_solver_steps,
            "solver_substeps": cfg.solver_substeps,
            "guidance_range": list(cfg.guidance_range), "mixed_precision": cfg.mixed_precision,
            "gradient_accumulation": cfg.gradient_accumulation, "processes": getattr(distiller, "world_size", 1)}


def _read_index(folder: Path) -> dict[str, Any] | None:
    path = folder / INDEX
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable rollout-cache index ({exc})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise InputError(f"{path}: not a {FORMAT} index (format {index.get('format') if isinstance(index, dict) else '?'!r})")
    return index


# fingerprint fields added after caches were written: a cache without one was written at this value
_FINGERPRINT_DEFAULTS = {"solver_substeps": 1}


def _check_fingerprint(folder: Path, index: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        written = index["fingerprint"].get(key, _FINGERPRINT_DEFAULTS.get(key))
        if written != value:
            raise InputError(f"{folder}: rollout cache was written with {key}={written!r}, this run "
                             f"has {value!r} (use another --rollout-cache folder)")


def _teacher_calls(module: torch.nn.Module) -> tuple[dict[str, int], Any]:
    calls = {"n": 0}

    def hook(*_args: Any) -> None:
        calls["n"] += 1

    return calls, module.register_forward_pre_hook(hook)


@torch.no_grad()
def _record(distiller: Any) -> dict[str, Any]:
    """One micro-batch as the uncached run draws it, with x_t and the teacher's solver output x_s."""
    b = distiller.sample_batch()
    d = distiller._on_device(b) if hasattr(distiller, "_on_device") else b
    t, s = d["t"], d["s"]
    a_t = distiller.acp[t].reshape(-1, 1, 1, 1)
    x_t = a_t.sqrt() * d["x0"] + (1 - a_t).sqrt() * d["noise"]
    kwargs = distiller.cond.batch_kwargs if hasattr(distiller.cond, "batch_kwargs") else None
    cond = kwargs(d) if kwargs else distiller.cond.kwargs(d["labels"])
    uncond = kwargs(d, null=True) if kwargs else distiller.cond.kwargs(d["labels"], null=True)
    autocast = distiller.accelerator.autocast() if hasattr(distiller.accelerator, "autocast") else contextlib.nullcontext()
    with autocast:
        x_s = distiller.solve(distiller._teacher_eps(cond, uncond, d["g"]), x_t, t, s, distiller.acp)
    b["x_t"], b["x_s"] = x_t.detach().cpu(), x_s.detach().float().cpu()
    return b


def _pack(records: list[dict[str, Any]], rng_after: torch.Tensor) -> bytes:
    tensors: dict[str, torch.Tensor] = {RNG_KEY: rng_after}
    extras: dict[str, Any] = {}
    for key in records[0]:
        values = [r[key] for r in records]
        if all(isinstance(v, torch.Tensor) for v in values):
            tensors[key] = torch.stack([v.detach().cpu().contiguous() for v in values])
        else:
            extras[key] = values
    tensors[EXTRAS_KEY] = torch.tensor(list(json.dumps(extras, sort_keys=True).encode("utf-8")), dtype=torch.uint8)
    return save_bytes(tensors, metadata={"format": FORMAT})  # one key: the header bytes are deterministic


def write_rollouts(distiller: Any, folder: str | Path, micro_steps: int, steps_per_shard: int = 50,
                   show: bool = False) -> dict[str, Any]:
    """Write (or resume, or extend) the cache to `micro_steps` records; returns {records, written, teacher_calls}.

    The distiller's generator and micro-step counter are restored afterwards, so training starts as if nothing ran.
    """
    folder = Path(folder)
    if getattr(distiller, "world_size", 1) != 1:
        raise CdxError("--rollout-cache needs a single process (the cache is one stream of micro-batches)")
    folder.mkdir(parents=True, exist_ok=True)
    expected = fingerprint(distiller)
    index = _read_index(folder)
    if index is None:
        index = {"format": FORMAT, "fingerprint": expected, "steps_per_shard": steps_per_shard, "shards": [],
                 "teacher_calls": 0}
    _check_fingerprint(folder, index, expected)
    per_shard = int(index["steps_per_shard"])
    for stale in folder.glob(".shard-*.tmp"):  # a killed writer's half shard (this module's temp name)
        stale.unlink()
    shards = index["shards"]
    if sum(s["steps"] for s in shards) < micro_steps and shards and shards[-1]["steps"] < per_shard:
        shards.pop()  # extending: the short last shard is written again as a full one (same draws, same bytes)
    done = sum(s["steps"] for s in shards)
    saved_rng, saved_micro = distiller.rng.get_state(), getattr(distiller, "micro_step", 0)
    if shards:
        distiller.rng.set_state(_verified_tensors(folder, shards[-1])[RNG_KEY])
    else:
        distiller.rng.set_state(_initial_rng_state(distiller))
    calls, handle = _teacher_calls(distiller.teacher)
    written = 0
    try:
        while done < micro_steps:
            records = []
            for j in range(done, min(done + per_shard, micro_steps)):
                distiller.micro_step = j
                records.append(_record(distiller))
            name = f"shard-{len(shards):05d}.safetensors"
            atomic_write_bytes(folder / name, _pack(records, distiller.rng.get_state()))
            shards.append({"file": name, "first_step": done, "steps": len(records),
                           "bytes": (folder / name).stat().st_size, "sha256": sha256_file(folder / name)})
            index["teacher_calls"] = int(index.get("teacher_calls", 0)) + calls["n"]
            calls["n"] = 0
            atomic_write_text(folder / INDEX, json.dumps(index, indent=2) + "\n")
            done += len(records)
            written += len(records)
            if show:
                print(f"rollout cache: {done}/{micro_steps} micro-batches ({name})", flush=True)
    finally:
        handle.remove()
        distiller.rng.set_state(saved_rng)
        distiller.micro_step = saved_micro
    return {"records": done, "written": written, "teacher_calls": int(index.get("teacher_calls", 0)),
            "teacher_calls_per_record": index["teacher_calls"] / max(done, 1)}


def _initial_rng_state(distiller: Any) -> torch.Tensor:
    """The run's generator as a fresh distiller creates it (seed, and rank offset when there is one)."""
    seed = distiller.config.seed + 1_000_003 * getattr(distiller, "rank", 0)
    return torch.Generator().manual_seed(seed).get_state()


def _verified_tensors(folder: Path, shard: dict[str, Any]) -> dict[str, torch.Tensor]:
    tensors, _ = _verified(folder, shard)
    return tensors


def _verified(folder: Path, shard: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A shard's tensors and extras, after its size and sha256 matched the index (else one line naming it)."""
    path = folder / shard["file"]
    if not path.is_file():
        raise CdxError(f"rollout cache shard {path}: missing (the index lists it)")
    size = path.stat().st_size
    if size != shard["bytes"]:
        raise CdxError(f"rollout cache shard {path}: truncated or altered ({size} bytes, the index says {shard['bytes']})")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != shard["sha256"]:
        raise CdxError(f"rollout cache shard {path}: sha256 mismatch (index {shard['sha256'][:12]}…, file {digest[:12]}…)")
    try:
        tensors = load_bytes(data)
    except Exception as exc:  # a well-formed sha but an unparseable file can only be a writer bug; say so in one line
        raise CdxError(f"rollout cache shard {path}: not a safetensors file ({exc})") from None
    extras = tensors.pop(EXTRAS_KEY, None)
    return tensors, json.loads(bytes(extras.tolist()).decode("utf-8")) if extras is not None else {}


class RolloutStream:
    """Record j of a complete-enough cache as a batch dict (x_s included, so the distiller calls no teacher)."""

    def __init__(self, folder: str | Path, distiller: Any, micro_steps: int):
        self.folder = Path(folder)
        index = _read_index(self.folder)
        if index is None:
            raise InputError(f"{self.folder}: no rollout cache here ({INDEX} missing)")
        _check_fingerprint(self.folder, index, fingerprint(distiller))
        self.shards = index["shards"]
        self.records = sum(s["steps"] for s in self.shards)
        if self.records < micro_steps:
            raise InputError(f"{self.folder}: rollout cache holds {self.records} micro-batches, this run needs {micro_steps} "
                             "(run `cdx distill --rollout-cache` with these settings to extend it)")
        self.teacher_calls_written = int(index.get("teacher_calls", 0))
        self._loaded: tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None = None

    def _shard_of(self, j: int) -> int:
        for i, shard in enumerate(self.shards):
            if shard["first_step"] <= j < shard["first_step"] + shard["steps"]:
                return i
        raise InputError(f"{self.folder}: rollout cache has no micro-batch {j} (holds {self.records})")

    def batch(self, j: int) -> dict[str, Any]:
        i = self._shard_of(j)
        if self._loaded is None or self._loaded[0] != i:
            tensors, extras = _verified(self.folder, self.shards[i])
            self._loaded = (i, tensors, extras)
        _, tensors, extras = self._loaded
        k = j - self.shards[i]["first_step"]
        b: dict[str, Any] = {key: value[k].clone() for key, value in tensors.items() if key != RNG_KEY}
        b.update({key: values[k] for key, values in extras.items()})
        return b

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for j in range(self.records):
            yield self.batch(j)


def attach_rollouts(distiller: Any, folder: str | Path, show: bool = False) -> dict[str, Any]:
    """Write/resume/extend the cache for this run's micro-batches, then make the distiller stream it (no teacher)."""
    if getattr(distiller, "method", None) is not None:
        raise InputError("--rollout-cache stores the teacher's solver steps: it applies to --method cd only")
    refusal = fresh_noise_refusal(distiller.config)
    if refusal:
        raise InputError(refusal)
    micro_steps = distiller.config.steps * distiller.config.gradient_accumulation
    info = write_rollouts(distiller, folder, micro_steps, show=show)
    distiller.rollouts = RolloutStream(folder, distiller, micro_steps)
    return info
