"""The Noto emoji images of npm `emoji-datasource-google@16.0.0` (MIT) as captioned, categorised training data.

`bash .ci/setup.sh` (step `emoji`) unpacks the package's `emoji.json` and `img/google/64/*.png` into the cache folder
(`$CDX_EMOJI_DIR`, default `~/.cache/cdx/emoji/16.0.0`); nothing here downloads. Each RGBA image is composited on
white (before resizing, so edges blend with white, not black); its caption is the emoji.json name in lower case, and a
skin-tone variant appends its tone(s) ("waving hand, medium skin tone"). The category (emoji.json's, the 9 besides
"Component") is the label that the prompt-adherence classifier predicts.

A deterministic held-out split keeps some base emoji of every category (with all their skin-tone variants) out of
teacher and student training, so prompt adherence is measured on captions the models never saw.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cdx.errors import InputError

EMOJI_PACKAGE = "emoji-datasource-google@16.0.0"
SETUP_COMMAND = "CDX_SETUP_STEPS=emoji bash .ci/setup.sh"
CATEGORIES = ["Activities", "Animals & Nature", "Flags", "Food & Drink", "Objects", "People & Body", "Smileys & Emotion",
              "Symbols", "Travel & Places"]
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}
HELD_OUT_PER_CATEGORY = 6
IMAGE_DIR = Path("img") / "google" / "64"


def emoji_dir() -> Path:
    """$CDX_EMOJI_DIR, else `$XDG_CACHE_HOME/cdx/emoji/16.0.0` (~/.cache by default): where setup unpacks the package."""
    if os.environ.get("CDX_EMOJI_DIR"):
        return Path(os.environ["CDX_EMOJI_DIR"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "cdx" / "emoji" / "16.0.0"


@dataclass(frozen=True)
class EmojiRecord:
    """One image: its file, caption, category index, and the base emoji's caption (the held-out split's unit)."""

    file: Path
    caption: str
    label: int
    base: str


def tone_phrase(key: str) -> str:
    """'1F3FB-1F3FF' → 'light skin tone, dark skin tone' (a repeated tone is named once)."""
    tones = list(dict.fromkeys(SKIN_TONES[k] for k in key.upper().split("-") if k in SKIN_TONES))
    return ", ".join(tones)


def read_records(root: Path | None = None) -> list[EmojiRecord]:
    """Every base emoji and skin-tone variant with a Google 64 px image, in emoji.json's order."""
    root = Path(root) if root else emoji_dir()
    index = root / "emoji.json"
    images = root / IMAGE_DIR
    if not index.is_file() or not images.is_dir():
        raise InputError(f"emoji images not found in {root} (no emoji.json or {IMAGE_DIR}/): run `{SETUP_COMMAND}` "
                         f"(npm pack {EMOJI_PACKAGE}) or set CDX_EMOJI_DIR")
    try:
        entries = json.loads(index.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{index}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise InputError(f"{index}: expected a list of emoji entries")
    records = []
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("category") not in CATEGORIES:
            continue  # "Component" (bare skin-tone swatches, hair parts) and anything unknown
        name, image = entry.get("name"), entry.get("image")
        if not isinstance(name, str) or not name.strip() or not isinstance(image, str):
            raise InputError(f"{index}: entry {number} has no name/image field")
        base = " ".join(name.lower().split())
        label = CATEGORIES.index(entry["category"])
        if (images / image).is_file():
            records.append(EmojiRecord(images / image, base, label, base))
        for key, variant in sorted((entry.get("skin_variations") or {}).items()):
            file = images / str(variant.get("image", ""))
            if variant.get("image") and file.is_file() and tone_phrase(key):
                records.append(EmojiRecord(file, f"{base}, {tone_phrase(key)}", label, base))
    if not records:
        raise InputError(f"{index}: no emoji with images in {images}")
    return records


def held_out_bases(records: list[EmojiRecord], per_category: int = HELD_OUT_PER_CATEGORY) -> set[str]:
    """`per_category` base captions of each category, picked by sha256 of the caption (stable across versions/order)."""
    by_category: dict[int, list[str]] = {}
    for record in records:
        names = by_category.setdefault(record.label, [])
        if record.base not in names:
            names.append(record.base)
    held = set()
    for names in by_category.values():
        held.update(sorted(names, key=lambda n: hashlib.sha256(n.encode()).hexdigest())[:per_category])
    return held


def split_records(records: list[EmojiRecord], split: str, per_category: int = HELD_OUT_PER_CATEGORY) -> list[EmojiRecord]:
    """'train' (all but the held-out bases and their variants), 'held_out' (those), or 'all'."""
    if split == "all":
        return list(records)
    if split not in ("train", "held_out"):
        raise InputError(f"emoji split {split!r}: valid: train, held_out, all")
    held = held_out_bases(records, per_category)
    return [r for r in records if (r.base in held) == (split == "held_out")]


def held_out_prompts(records: list[EmojiRecord], per_category: int = HELD_OUT_PER_CATEGORY) -> list[tuple[str, int]]:
    """(caption, category) of every held-out base emoji, sorted by category then caption: the adherence prompts."""
    held = held_out_bases(records, per_category)
    pairs = {(r.base, r.label) for r in records if r.base in held and r.caption == r.base}
    return sorted(pairs, key=lambda p: (p[1], p[0]))


def composite_on_white(file: Path, size: int) -> np.ndarray:
    """RGB uint8 (size, size, 3): the RGBA image alpha-composited on white, then box/Lanczos-resized to `size`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as img:
            rgba = img.convert("RGBA")
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{file}: unreadable image ({exc})") from None
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, rgba).convert("RGB")
    if rgb.size != (size, size):
        resample = Image.Resampling.BOX if rgb.size[0] % size == 0 else Image.Resampling.LANCZOS
        rgb = rgb.resize((size, size), resample)
    return np.asarray(rgb, dtype=np.uint8)


@dataclass
class EmojiDataset:
    """Images in [-1, 1] (N, 3, size, size), category labels, captions; `class_names` are the categories."""

    images: torch.Tensor
    labels: torch.Tensor
    captions: list[str]
    class_names: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_emoji(root: Path | None = None, size: int = 32, split: str = "train", limit: int | None = None) -> EmojiDataset:
    """The emoji images of `split`, composited on white and resized to `size`."""
    records = split_records(read_records(root), split)
    if limit:
        records = records[:limit]
    pixels = np.stack([composite_on_white(r.file, size) for r in records])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    labels = torch.tensor([r.label for r in records], dtype=torch.int64)
    return EmojiDataset(images.contiguous(), labels, [r.caption for r in records], list(CATEGORIES))


def export_imagefolder(out: Path, root: Path | None = None, size: int = 32, split: str = "train") -> Path:
    """Write `split` as an imagefolder (PNG on white + metadata.jsonl: file_name, text, category): the format every
    `--data` folder reader (cdx distill, diffusers' training scripts) takes. Written beside `out`, then renamed."""
    from PIL import Image

    from cdx.atomic import atomic_directory

    records = split_records(read_records(root), split)
    with atomic_directory(out, overwrite=True) as staging:
        rows = []
        for number, record in enumerate(records):
            name = f"{number:05d}.png"
            Image.fromarray(composite_on_white(record.file, size)).save(staging / name)
            rows.append({"file_name": name, "text": record.caption, "category": CATEGORIES[record.label]})
        (staging / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return out


def emoji_imagefolder(size: int = 32, split: str = "train", root: Path | None = None) -> Path:
    """The cached imagefolder export of `split` at `size` (made once beside the package cache): what `--data emoji`
    resolves to for readers of imagefolders."""
    root = Path(root) if root else emoji_dir()
    read_records(root)  # a missing cache is reported before anything is written
    folder = root / "imagefolder" / f"{split}-{size}"
    if not (folder / "metadata.jsonl").is_file():
        export_imagefolder(folder, root, size, split)
    return folder


def load_captioned(data: str, size: int = 32, limit: int | None = None) -> EmojiDataset:
    """`--data` of the text teacher: `emoji` (the cached package, train split) or any imagefolder with metadata.jsonl
    (read through distill/sources.py; a `category` column, when present, becomes the label)."""
    if data == "emoji":
        return load_emoji(None, size, "train", limit)
    from cdx.distill.sources import open_source

    source = open_source(data, size, 3, limit)
    if not getattr(source, "captioned", False) or source.streaming:
        raise InputError(f"--data {data}: a text-to-image teacher needs captions (an imagefolder with metadata.jsonl, "
                         "or `emoji`)")
    items = [source.item(i) for i in range(len(source))]
    categories = _categories(source)
    names = sorted(set(categories)) if categories else []
    labels = [names.index(c) for c in categories] if categories else [0] * len(items)
    return EmojiDataset(torch.stack([it.image for it in items]), torch.tensor(labels, dtype=torch.int64),
                        [it.caption for it in items], names)


def _categories(source) -> list[str]:
    dataset = getattr(source, "dataset", None)
    if dataset is None or "category" not in dataset.column_names:
        return []
    return [str(c) for c in dataset["category"]]


def is_captioned_data(data: str) -> bool:
    """`emoji`, or a folder with metadata.jsonl: data for the text-to-image teacher."""
    return data == "emoji" or (Path(data) / "metadata.jsonl").is_file()
