"""Training-data sources for distillation, in the formats the ecosystem ships data in, behind one small interface.

- map-style (random access, `len` known): Fashion-MNIST IDX and in-memory tensors, class subfolders, a Hugging Face
  `datasets` "imagefolder" with `metadata.jsonl` (`file_name`, `text`: the layout diffusers' training scripts take with
  `--train_data_dir`), a Hub dataset id given explicitly as `hf:org/name`, and a latent cache (distill/latent_cache.py);
- streamed: WebDataset tar shards (`.jpg`/`.png`/`.webp` + `.txt`), read one shard at a time through a bounded
  shuffle buffer, never loaded whole.

Every sample is an `Item`: an image in [-1, 1] (or a cached latent), an int label and a caption. Class data captions
itself with the class name, so text teachers distilled on class folders see prompts like today.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cdx.distill.image_io import IMAGE_SUFFIXES, UnreadableImage, decode_image
from cdx.errors import InputError

_WDS_IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
_WDS_TEXT_KEYS = ("txt", "text", "caption")
_CAPTION_COLUMNS = ("text", "caption", "prompt")


@dataclass
class Item:
    """One training sample: `image` (C, H, W) in [-1, 1], or `latent` when it comes from a latent cache."""

    label: int
    caption: str
    name: str
    image: torch.Tensor | None = None
    latent: torch.Tensor | None = None


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _files_fingerprint(paths: list[Path], root: Path) -> list[Any]:
    """(relative path, size, mtime) of each file: changes when a file is added, removed or rewritten."""
    out = []
    for path in paths:
        stat = path.stat()
        out.append([path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path), stat.st_size,
                    stat.st_mtime_ns])
    return out


class MapSource:
    """Random access to `len(self)` samples at the run's resolution and channel count."""

    kind = "map"
    streaming = False
    captioned = False  # True when captions are per image (not class names)

    def __init__(self, class_names: list[str], size: int, channels: int):
        self.class_names, self.size, self.channels = class_names, size, channels

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, index: int) -> Item:
        """Sample `index`; raises UnreadableImage for a file PIL cannot decode."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """Identity of the data (files, sizes, times, limit): a latent cache made from other data is refused."""
        raise NotImplementedError

    def example_prompts(self, count: int = 10) -> list[str]:
        """Row prompts for sample grids: the class names, or the first distinct captions."""
        if not self.captioned:
            return list(self.class_names)
        seen: list[str] = []
        for index in range(min(len(self), 50 * count)):
            caption = self.caption(index)
            if caption and caption not in seen:
                seen.append(caption)
            if len(seen) == count:
                break
        return seen or [""]

    def caption(self, index: int) -> str:
        return self.item(index).caption


class TensorSource(MapSource):
    """Images already in memory (Fashion-MNIST IDX, `ImageDataset`): grey images are repeated to an RGB VAE's channels."""

    kind = "tensor"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: list[str], size: int, channels: int,
                 identity: str = ""):
        super().__init__(class_names, size, channels)
        if images.shape[1] not in (1, channels):
            raise InputError(f"images have {images.shape[1]} channels; the teacher's VAE takes {channels}")
        if images.shape[-1] != size or images.shape[-2] != size:
            images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
        self.images, self.labels, self.identity = images, labels, identity

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def item(self, index: int) -> Item:
        image = self.images[index]
        if image.shape[0] != self.channels:
            image = image.repeat(self.channels, 1, 1)
        label = int(self.labels[index])
        return Item(label, self._name(label), f"#{index}", image=image)

    def caption(self, index: int) -> str:
        return self._name(int(self.labels[index]))

    def _name(self, label: int) -> str:
        return self.class_names[label] if label < len(self.class_names) else str(label)

    def fingerprint(self) -> str:
        if self.identity:
            return _digest("tensor", self.identity, len(self))
        return _digest("tensor", hashlib.sha256(self.images.numpy().tobytes()).hexdigest(), self.labels.tolist())


class FileSource(MapSource):
    """Image files with labels and captions (class subfolders, or a flat folder as one class); decoded on access."""

    kind = "class-folder"

    def __init__(self, root: Path, files: list[Path], labels: list[int], captions: list[str], class_names: list[str],
                 size: int, channels: int, captioned: bool = False):
        super().__init__(class_names, size, channels)
        self.root, self.files, self.labels, self.captions, self.captioned = root, files, labels, captions, captioned

    def __len__(self) -> int:
        return len(self.files)

    def item(self, index: int) -> Item:
        file = self.files[index]
        image = decode_image(file, str(file), self.size, self.channels)
        return Item(self.labels[index], self.captions[index], str(file), image=image)

    def caption(self, index: int) -> str:
        return self.captions[index]

    def fingerprint(self) -> str:
        return _digest(self.kind, _files_fingerprint(self.files, self.root), self.labels, self.captions)


class HFSource(MapSource):
    """A Hugging Face `datasets.Dataset` (local imagefolder or a Hub id), image column read undecoded so that a bad
    file is named and skipped instead of failing inside `datasets`."""

    kind = "hf"

    def __init__(self, dataset: Any, image_column: str, caption_column: str | None, label_column: str | None,
                 class_names: list[str], size: int, channels: int, identity: str):
        from datasets import Image

        super().__init__(class_names, size, channels)
        self.dataset = dataset.cast_column(image_column, Image(decode=False))
        self.image_column, self.caption_column, self.label_column = image_column, caption_column, label_column
        self.captioned, self.identity = caption_column is not None, identity

    def __len__(self) -> int:
        return len(self.dataset)

    def item(self, index: int) -> Item:
        row = self.dataset[index]
        image = row[self.image_column] or {}
        name = image.get("path") or f"{self.identity}#{index}"
        source = image.get("bytes") or image.get("path")
        if not source:
            raise UnreadableImage(name, "no image bytes or path")
        label = int(row[self.label_column]) if self.label_column else 0
        caption = self._caption(row, label)
        return Item(label, caption, str(name), image=decode_image(source, str(name), self.size, self.channels))

    def caption(self, index: int) -> str:
        row = self.dataset.select_columns([c for c in (self.caption_column, self.label_column) if c])[index]
        return self._caption(row, int(row[self.label_column]) if self.label_column else 0)

    def example_prompts(self, count: int = 10) -> list[str]:
        if not self.captioned:
            return super().example_prompts(count)
        head = self.dataset.select_columns([self.caption_column])[: 50 * count][self.caption_column]
        return list(dict.fromkeys(c for c in head if isinstance(c, str) and c))[:count] or [""]

    def _caption(self, row: dict[str, Any], label: int) -> str:
        if self.caption_column:
            value = row[self.caption_column]
            return value if isinstance(value, str) else ""
        return self.class_names[label] if label < len(self.class_names) else ""

    def fingerprint(self) -> str:
        return _digest(self.kind, self.identity, len(self), self.image_column, self.caption_column)


class ShardSource:
    """WebDataset tar shards, streamed: each epoch the shards are shuffled (seeded), split across processes, read one
    at a time, and samples pass through a `shuffle_buffer`-sized buffer, so memory is bounded by the buffer."""

    kind = "webdataset"
    streaming = True
    captioned = True

    def __init__(self, shards: list[Path], size: int, channels: int, shuffle_buffer: int = 1000):
        self.shards, self.size, self.channels, self.shuffle_buffer = shards, size, channels, max(1, shuffle_buffer)
        self.class_names: list[str] = []
        self.opened: list[Path] = []  # every shard opened, in order (tests and the skip report read it)

    def fingerprint(self) -> str:
        return _digest(self.kind, _files_fingerprint(self.shards, Path("/")))

    def raw_samples(self, shards: list[Path]) -> Iterator[dict[str, Any]]:
        """WebDataset samples ({'__key__', 'png', 'txt', ...} raw bytes) of `shards`, one open file at a time."""
        from webdataset.tariterators import group_by_keys, tar_file_expander

        for shard in shards:
            self.opened.append(shard)
            try:
                with shard.open("rb") as stream:
                    files = tar_file_expander([{"url": str(shard), "stream": stream}])
                    for sample in group_by_keys(files):
                        sample["__url__"] = str(shard)
                        yield sample
            except (OSError, tarfile.TarError, ValueError) as exc:
                yield {"__key__": "", "__url__": str(shard), "__error__": f"{type(exc).__name__}: {exc}"}

    def epoch(self, seed: int, epoch: int, rank: int, world: int) -> Iterator[dict[str, Any]]:
        """The raw samples process `rank` of `world` reads in `epoch`: a pure function of those and the seed."""
        order = [self.shards[i] for i in torch.randperm(len(self.shards), generator=_generator("shards", seed, epoch))]
        split_shards = len(order) >= world
        mine = order[rank::world] if split_shards else order
        rng = random.Random(int(_seed_of("buffer", seed, epoch, rank)))
        buffer: list[dict[str, Any]] = []
        for position, sample in enumerate(self.raw_samples(mine)):
            if not split_shards and position % world != rank:
                continue
            if len(buffer) < self.shuffle_buffer:
                buffer.append(sample)
                continue
            pick = rng.randrange(len(buffer))
            buffer[pick], sample = sample, buffer[pick]
            yield sample
        rng.shuffle(buffer)
        yield from buffer

    def decode(self, sample: dict[str, Any]) -> Item:
        """An Item from a raw sample; UnreadableImage names shard and key."""
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        if "__error__" in sample:
            raise UnreadableImage(f"{sample['__url__']}", f"unreadable tar shard ({sample['__error__']})")
        key = next((k for k in _WDS_IMAGE_KEYS if k in sample), None)
        if key is None:
            raise UnreadableImage(name, f"no image member (.{', .'.join(_WDS_IMAGE_KEYS)})")
        return Item(0, _caption_of(sample), name, image=decode_image(sample[key], name, self.size, self.channels))

    def example_prompts(self, count: int = 10) -> list[str]:
        """Row prompts for sample grids: the first distinct captions of the first shard (images not decoded)."""
        seen: list[str] = []
        for position, sample in enumerate(self.raw_samples(self.shards[:1])):
            caption = _caption_of(sample)
            if caption and caption not in seen:
                seen.append(caption)
            if len(seen) == count or position >= 50 * count:
                break
        return seen or [""]


def _caption_of(sample: dict[str, Any]) -> str:
    text = next((sample[k] for k in _WDS_TEXT_KEYS if k in sample), b"")
    return text.decode("utf-8", errors="replace").strip() if isinstance(text, bytes) else str(text)


def _seed_of(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _generator(*parts: Any) -> torch.Generator:
    """A torch generator seeded from `parts`: data order is a pure function of (seed, epoch, step, rank)."""
    return torch.Generator().manual_seed(_seed_of(*parts))


DataSource = MapSource | ShardSource


# ---- opening a --data value --------------------------------------------------------------------------------
def _shard_list(spec: str) -> list[Path] | None:
    """Tar shards named by `spec` (one .tar, a folder holding .tar files, a glob, or a {000..009} brace range)."""
    import glob

    path = Path(spec)
    if path.is_dir():
        shards = sorted(path.glob("*.tar"))
        return shards or None
    if path.is_file():
        return [path] if path.suffix == ".tar" else None
    if not any(ch in spec for ch in "*?[{"):
        return None
    from braceexpand import braceexpand

    matches = sorted({Path(m) for pattern in braceexpand(spec) for m in glob.glob(pattern)})
    if not matches:
        raise InputError(f"--data {spec}: no files match")
    if any(m.suffix != ".tar" for m in matches):
        raise InputError(f"--data {spec}: the pattern matches files that are not .tar shards")
    return matches


def _has_metadata(root: Path) -> bool:
    return (root / "metadata.jsonl").is_file() or any(root.glob("*/metadata.jsonl"))


def open_source(data: str | os.PathLike[str] | None, size: int, channels: int, limit: int | None = None,
                cache_dir: Path | None = None, shuffle_buffer: int = 1000) -> DataSource:
    """The source a `--data` value names: None = Fashion-MNIST (Debian package), `hf:org/name` = a Hub dataset,
    tar shards, an imagefolder with metadata.jsonl, a Fashion-MNIST IDX folder, or class subfolders."""
    from cdx.distill.data import default_data_dir, load_fashion_mnist

    spec = str(data) if data is not None else str(default_data_dir())
    if spec.startswith("hf:"):
        return _hub_source(spec[3:], size, channels, limit, cache_dir)
    shards = _shard_list(spec)
    if shards is not None:
        if limit:
            raise InputError("--limit applies to folders and hf: datasets; for tar shards pass fewer shards")
        return ShardSource(shards, size, channels, shuffle_buffer)
    root = Path(spec)
    if not root.is_dir():
        raise InputError(f"--data {spec}: no such folder, .tar shard or pattern "
                         "(expected an imagefolder with metadata.jsonl, tar shards, class subfolders, or hf:org/name)")
    if any(p.name.endswith(("idx3-ubyte.gz", "idx3-ubyte")) for p in root.iterdir()):
        dataset = load_fashion_mnist(root, "train", size, limit)
        identity = json.dumps(_files_fingerprint(sorted(root.glob("*ubyte*")), root))
        return TensorSource(dataset.images, dataset.labels, dataset.class_names, size, channels, identity)
    if _has_metadata(root):
        return _imagefolder_source(root, size, channels, limit, cache_dir)
    return class_folder_source(root, size, channels, limit)


def class_folder_source(root: Path, size: int, channels: int, limit: int | None = None) -> FileSource:
    """One subfolder per class (or a flat folder: one class named after it); captions are the class names."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for index, name in enumerate(classes or [root.name]):
        base = root / name if classes else root
        for file in sorted(base.iterdir()):
            if file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                files.append(file)
                labels.append(index)
    if not files:
        raise InputError(f"{root}: no images found (expected class subfolders of .png/.jpg files, an imagefolder with "
                         "metadata.jsonl, or .tar shards)")
    if limit:
        files, labels = files[:limit], labels[:limit]
    names = classes or [root.name]
    return FileSource(root, files, labels, [names[i] for i in labels], names, size, channels)


def _load_hf(what: str, **kwargs: Any) -> Any:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        return datasets.load_dataset(**kwargs)
    except Exception as exc:  # datasets raises many types (missing split, network, bad metadata)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InputError(f"{what}: cannot load ({type(exc).__name__}{': ' + first[:200] if first else ''})") from None


def _imagefolder_source(root: Path, size: int, channels: int, limit: int | None, cache_dir: Path | None) -> HFSource:
    metadata = sorted(root.rglob("metadata.jsonl"))
    for path in metadata:
        _check_metadata(path)
    dataset = _load_hf(str(root), path="imagefolder", data_dir=str(root), split="train",
                       cache_dir=str(cache_dir) if cache_dir else None)
    identity = json.dumps(_files_fingerprint(sorted(p for p in root.rglob("*") if p.is_file()), root))
    return _hf_source(dataset, str(root), size, channels, limit, identity)


def _check_metadata(path: Path) -> None:
    """Refuse a metadata.jsonl line without `file_name` (datasets would fail later with a long traceback)."""
    with path.open("r", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "file_name" not in row:
                raise InputError(f"{path}:{number}: no 'file_name' field")


def _hub_source(name: str, size: int, channels: int, limit: int | None, cache_dir: Path | None) -> HFSource:
    if name.count("/") != 1:
        raise InputError(f"--data hf:{name}: expected hf:org/name")
    dataset = _load_hf(f"hf:{name}", path=name, split="train", cache_dir=str(cache_dir) if cache_dir else None)
    return _hf_source(dataset, f"hf:{name}", size, channels, limit, f"hf:{name}@{getattr(dataset, '_fingerprint', '')}")


def _hf_source(dataset: Any, what: str, size: int, channels: int, limit: int | None, identity: str) -> HFSource:
    from datasets import ClassLabel, Image

    features = dataset.features
    image_column = next((k for k, v in features.items() if isinstance(v, Image)), None)
    if image_column is None:
        raise InputError(f"{what}: no image column (columns: {', '.join(features)})")
    caption_column = next((c for c in _CAPTION_COLUMNS if c in features), None)
    if caption_column is None:
        caption_column = next((k for k, v in features.items() if getattr(v, "dtype", None) == "string"), None)
    label_column = next((k for k, v in features.items() if isinstance(v, ClassLabel)), None)
    class_names = list(features[label_column].names) if label_column else []
    if caption_column is None and label_column is None:
        raise InputError(f"{what}: no caption column ({', '.join(_CAPTION_COLUMNS)}) and no class labels")
    if limit:
        dataset = dataset.select(range(min(limit, len(dataset))))
    if len(dataset) == 0:
        raise InputError(f"{what}: no images")
    return HFSource(dataset, image_column, caption_column, label_column, class_names, size, channels,
                    f"{identity}|limit={limit}")


def example_prompts(parts: Any, source: DataSource) -> list[str]:
    """The conditions a model's sample grids and decoder training use, kept as the student's example prompts
    (convert's default prompt set): a text teacher's own recorded prompts (cdx.json `class_names`, e.g. the emoji
    teacher's held-out prompts, one per category) when it has them, else the first distinct captions of the data;
    class-conditional teachers: the data's class names."""
    if parts.conditioning != "text_embedding":
        return list(source.class_names)
    return list(parts.class_names) or source.example_prompts()


def as_source(data: Any, size: int, channels: int) -> DataSource:
    """A source from what callers hand the distiller: a source, or an `ImageDataset` (tests, the Python API)."""
    from cdx.distill.data import ImageDataset

    if isinstance(data, MapSource | ShardSource):
        return data
    if isinstance(data, ImageDataset):
        return TensorSource(data.images, data.labels, data.class_names, size, channels)
    raise InputError(f"unsupported training data {type(data).__name__}")
