"""`--cache-latents DIR`: encode the training data once with the teacher's VAE so later runs skip the encoder.

The cache is safetensors shards (`latents-NNNNN.safetensors`: scaled latents, labels; captions and source names in
the header metadata) plus `index.json`, written last, that records what the latents were made from: the source's
fingerprint, the VAE's sha256 (weights and config), the resolution and the count. A cache made from other data, another
VAE or another resolution is refused in one line naming the field; reading it is memory-mapped, a row at a time.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from cdx.atomic import atomic_write_bytes, atomic_write_text
from cdx.distill.image_io import UnreadableImage
from cdx.distill.sources import DataSource, Item, MapSource, TensorSource
from cdx.errors import InputError

CACHE_FORMAT = "cdx-latent-cache/1"
_SHARD = "latents-{:05d}.safetensors"
_CHECKED_FIELDS = ("format", "source", "vae_sha256", "resolution")


def vae_sha256(vae: torch.nn.Module) -> str:
    """sha256 of the VAE's config and every weight (layout-independent: the same VAE saved elsewhere matches)."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@torch.no_grad()
def encode_latents(parts: Any, images: torch.Tensor) -> torch.Tensor:
    """Scaled VAE latents (posterior mean) of images in [-1, 1], float32 on the VAE's device."""
    from cdx.distill.loading import vae_encode

    weight = next(parts.vae.parameters())
    latents = vae_encode(parts.vae, images.to(device=weight.device, dtype=weight.dtype)).float()
    return (latents - (parts.latent_shift_factor or 0.0)) * parts.latent_scaling_factor


def _natural_order(source: DataSource) -> Iterator[Callable[[], Item]]:
    """Every sample once, in the source's own order (no shuffle): the cache's row order."""
    if isinstance(source, MapSource):
        for index in range(len(source)):
            yield lambda i=index: source.item(i)
    else:
        for sample in source.raw_samples(source.shards):
            yield lambda s=sample: source.decode(s)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def expected_index(source: DataSource, parts: Any, resolution: int) -> dict[str, Any]:
    return {"format": CACHE_FORMAT, "source": source.fingerprint(), "vae_sha256": vae_sha256(parts.vae),
            "resolution": resolution}


def check_index(folder: Path, index: dict[str, Any], expected: dict[str, Any]) -> None:
    for field in _CHECKED_FIELDS:
        if index.get(field) != expected[field]:
            have, want = str(index.get(field))[:16], str(expected[field])[:16]
            raise InputError(f"{folder}: latent cache does not match this run (field '{field}': cache {have}, run {want}); "
                             "pass another --cache-latents folder")


def build_latent_cache(folder: Path, source: DataSource, parts: Any, expected: dict[str, Any], batch: int = 64,
                       shard_rows: int = 4096, strict: bool = False, report: Callable[[str], None] | None = None) -> Path:
    """Encode `source` into `folder` unless a cache matching `expected` (see `expected_index`) is there; returns the
    index path. Only the main process builds; the others open it after a barrier."""
    from safetensors.torch import save

    folder = Path(folder)
    report = report or _stderr
    index_path = folder / "index.json"
    if index_path.is_file():
        check_index(folder, _read_index(index_path), expected)
        return index_path
    if folder.exists():
        foreign = [p.name for p in folder.iterdir() if not (p.name.startswith("latents-") and p.suffix == ".safetensors")
                   and not p.name.startswith(".")]
        if foreign:
            raise InputError(f"{folder}: not a cdx latent cache (holds {foreign[0]}); pass an empty or new folder")
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, Any]] = []
    rows: list[tuple[torch.Tensor, int, str, str]] = []
    pending: list[Item] = []
    skipped: list[str] = []

    def flush_rows(final: bool) -> None:
        while rows and (len(rows) >= shard_rows or final):
            chunk, rows[:] = rows[:shard_rows], rows[shard_rows:]
            name = _SHARD.format(len(shards))
            tensors = {"latents": torch.stack([r[0] for r in chunk]).contiguous(),
                       "labels": torch.tensor([r[1] for r in chunk], dtype=torch.int64)}
            meta = {"captions": json.dumps([r[2] for r in chunk]), "names": json.dumps([r[3] for r in chunk])}
            atomic_write_bytes(folder / name, save(tensors, metadata=meta))
            shards.append({"file": name, "count": len(chunk)})

    def encode_pending() -> None:
        if pending:
            latents = encode_latents(parts, torch.stack([item.image for item in pending])).cpu()
            rows.extend((lat, item.label, item.caption, item.name) for lat, item in zip(latents, pending, strict=True))
            pending.clear()
            flush_rows(final=False)

    for load in _natural_order(source):
        try:
            pending.append(load())
        except UnreadableImage as exc:
            if strict:
                raise
            skipped.append(exc.name)
            report(f"skipping {exc}")
        if len(pending) == batch:
            encode_pending()
    encode_pending()
    flush_rows(final=True)
    count = sum(s["count"] for s in shards)
    if count == 0:
        raise InputError(f"{folder}: no readable images to cache")
    index = {**expected, "count": count, "shards": shards, "skipped": skipped,
             "class_names": list(getattr(source, "class_names", [])), "captioned": bool(source.captioned)}
    atomic_write_text(index_path, json.dumps(index, indent=2) + "\n")
    return index_path


def _read_index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable latent-cache index ({exc})") from None
    if not isinstance(index, dict):
        raise InputError(f"{path}: not a latent-cache index")
    return index


class LatentCacheSource(MapSource):
    """Map-style access to a built cache; rows are read from memory-mapped safetensors shards on demand."""

    kind = "latent-cache"

    def __init__(self, folder: Path, expected: dict[str, Any] | None = None):
        from safetensors import safe_open

        folder = Path(folder)
        index = _read_index(folder / "index.json")
        if expected is not None:
            check_index(folder, index, expected)
        super().__init__(list(index.get("class_names", [])), int(index["resolution"]), 0)
        self.folder, self.index, self.captioned = folder, index, bool(index.get("captioned"))
        self._files, self._captions, self._names, self._starts = [], [], [], []
        start = 0
        for shard in index["shards"]:
            path = folder / shard["file"]
            if not path.is_file():
                raise InputError(f"{path}: latent-cache shard missing")
            handle = safe_open(str(path), "pt")
            meta = handle.metadata() or {}
            self._files.append(handle)
            self._captions.append(json.loads(meta.get("captions", "[]")))
            self._names.append(json.loads(meta.get("names", "[]")))
            self._starts.append(start)
            start += int(shard["count"])
        if start != int(index["count"]):
            raise InputError(f"{folder}: latent cache holds {start} rows, its index says {index['count']}")
        self._count = start

    def __len__(self) -> int:
        return self._count

    def _locate(self, index: int) -> tuple[int, int]:
        import bisect

        shard = bisect.bisect_right(self._starts, index) - 1
        return shard, index - self._starts[shard]

    def item(self, index: int) -> Item:
        shard, row = self._locate(index)
        handle = self._files[shard]
        latent = handle.get_slice("latents")[row : row + 1][0]
        label = int(handle.get_slice("labels")[row : row + 1][0])
        return Item(label, self._captions[shard][row], self._names[shard][row], latent=latent)

    def caption(self, index: int) -> str:
        shard, row = self._locate(index)
        return self._captions[shard][row]

    def fingerprint(self) -> str:
        return str(self.index["source"])


class InMemoryLatents(MapSource):
    """The latents of an in-memory source (Fashion-MNIST, an `ImageDataset`), encoded once at the start: cheaper than
    encoding every batch when a run draws more images than the data holds (the embedded teacher's recipe draws 96k
    from 60k)."""

    kind = "latents-in-memory"

    def __init__(self, source: TensorSource, parts: Any, batch: int = 256):
        super().__init__(source.class_names, source.size, source.channels)
        self.source, self.captioned = source, source.captioned
        chunks = []
        for start in range(0, len(source), batch):
            images = torch.stack([source.item(i).image for i in range(start, min(start + batch, len(source)))])
            chunks.append(encode_latents(parts, images).cpu())
        self.latents = torch.cat(chunks)

    def __len__(self) -> int:
        return len(self.source)

    def item(self, index: int) -> Item:
        return Item(int(self.source.labels[index]), self.source.caption(index), f"#{index}", latent=self.latents[index])

    def caption(self, index: int) -> str:
        return self.source.caption(index)

    def fingerprint(self) -> str:
        return self.source.fingerprint()
