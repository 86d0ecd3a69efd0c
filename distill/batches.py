"""Batches for distillation step k on process r: a pure function of (seed, k, r), so resume needs no data state.

Map-style sources are read epoch by epoch in a seeded permutation split across processes (each image once per epoch,
disjoint across ranks, like torch's DistributedSampler); streamed shards are read sequentially and, after a resume,
fast-forwarded without decoding. An unreadable image is reported once by name and its slot is filled with another
image of the same batch (so batch k stays the same whatever was skipped), or the run stops with `strict`.
Caption dropout (LCM scripts' `proportion_empty_prompts`) replaces a caption by "" with probability p.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cdx.distill.image_io import UnreadableImage
from cdx.distill.sources import DataSource, Item, MapSource, ShardSource, _generator
from cdx.errors import InputError


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class BatchStream:
    """`batch(step)` → {"images" | "latents", "labels", "captions", "names"} for this process."""

    def __init__(self, source: DataSource, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 caption_dropout: float = 0.0, strict: bool = False, report: Callable[[str], None] = _stderr):
        if not 0.0 <= caption_dropout <= 1.0:
            raise InputError(f"--caption-dropout {caption_dropout}: must be in [0, 1]")
        self.source, self.batch_size, self.seed = source, batch_size, seed
        self.rank, self.world, self.caption_dropout, self.strict, self.report = rank, world, caption_dropout, strict, report
        self.skipped: dict[str, str] = {}
        if isinstance(source, MapSource):
            if len(source) < world:
                raise InputError(f"{len(source)} training images for {world} processes: need at least one per process")
            self._per_rank = len(source) // world
            self._perm: tuple[int, torch.Tensor] | None = None
        self._stream: Iterator[tuple[int, dict[str, Any]]] | None = None
        self._next_raw = 0

    # ---- which samples ------------------------------------------------------------------------------------
    def _map_indices(self, step: int) -> list[int]:
        out = []
        for position in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, offset = divmod(position, self._per_rank)
            if self._perm is None or self._perm[0] != epoch:
                self._perm = (epoch, torch.randperm(len(self.source), generator=_generator("epoch", self.seed, epoch)))
            out.append(int(self._perm[1][self.rank + self.world * offset]))
        return out

    def _raw_stream(self) -> Iterator[tuple[int, dict[str, Any]]]:
        assert isinstance(self.source, ShardSource)
        epoch = 0
        while True:
            empty = True
            for sample in self.source.epoch(self.seed, epoch, self.rank, self.world):
                empty = False
                yield epoch, sample
            if empty:
                raise InputError(f"process {self.rank}: its tar shards hold no samples")
            epoch += 1

    def _raw_batch(self, step: int) -> list[dict[str, Any]]:
        start = step * self.batch_size
        if self._stream is None or self._next_raw != start:  # first call or a resume: replay without decoding
            self._stream, self._next_raw = self._raw_stream(), 0
            for _ in range(start):
                next(self._stream)
            self._next_raw = start
        self._next_raw += self.batch_size
        return [next(self._stream)[1] for _ in range(self.batch_size)]

    # ---- the batch -------------------------------------------------------------------------------------
    def items(self, step: int) -> list[Item]:
        """The batch's samples, unreadable ones replaced by readable ones of the same batch."""
        if isinstance(self.source, MapSource):
            loaders = [lambda i=i: self.source.item(i) for i in self._map_indices(step)]
        else:
            loaders = [lambda s=s: self.source.decode(s) for s in self._raw_batch(step)]
        items: list[Item | None] = []
        for load in loaders:
            try:
                items.append(load())
            except UnreadableImage as exc:
                if self.strict:
                    raise
                if exc.name not in self.skipped:
                    self.skipped[exc.name] = str(exc)
                    self.report(f"skipping {exc}")
                items.append(None)
        good = [item for item in items if item is not None]
        if not good:
            raise InputError(f"step {step + 1}: every image of the batch is unreadable (first: "
                             f"{next(iter(self.skipped.values()), '?')})")
        return [item if item is not None else good[i % len(good)] for i, item in enumerate(items)]

    def batch(self, step: int) -> dict[str, Any]:
        items = self.items(step)
        captions = [item.caption for item in items]
        if self.caption_dropout > 0:
            drop = torch.rand(len(items), generator=_generator("dropout", self.seed, step, self.rank)) < self.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist(), strict=True)]
        out: dict[str, Any] = {"labels": torch.tensor([item.label for item in items], dtype=torch.int64),
                               "captions": captions, "names": [item.name for item in items]}
        if items[0].latent is not None:
            out["latents"] = torch.stack([item.latent for item in items])
        else:
            out["images"] = torch.stack([item.image for item in items])
        return out

    def summary(self) -> str | None:
        """One line for the end of the run: how many images were skipped."""
        if not self.skipped:
            return None
        first = next(iter(self.skipped))
        return f"skipped {len(self.skipped)} unreadable image(s) (first: {first}); --strict makes this fatal"


@dataclass
class DataOptions:
    """How a run reads its data, outside the recipe (the same batches come out either way)."""

    cache_latents: Path | None = None  # encode once into this folder (distill/latent_cache.py), reuse after
    strict: bool = False  # an unreadable image stops the run instead of being skipped
    shuffle_buffer: int = 1000  # WebDataset samples held for shuffling (the memory bound of streaming)
