"""`cdx bundle`: one self-checking folder (or zip) per target for a phone, a native runner or the web demo.

A bundle is a `cdx convert` folder cut down to the chosen models: the artifact(s), `manifest.json` (with a `bundle`
section) and golden data — the seeded inputs and the float model's outputs as raw little-endian `.bin`, plus each
image output as one PNG per seed — every file listed with its sha256. Opening a bundle verifies every checksum and
refuses any path (in the manifest or inside a zip) that escapes the bundle.

A text student's bundle also carries what a device needs to take a prompt: the `text_encoder` model (added when a
chosen model takes `text_embedding`), its tokenizer files (`tokenizer/vocab.json`, `merges.txt`, `vectors.json`,
described by that model's `tokenizer` section) and the encoded prompts of `conditioning.prompts` (see
`cdx/distill/text_encoder_graph.py` for the format).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cdx.atomic import atomic_directory, atomic_write_bytes, refuse_existing
from cdx.errors import InputError, ManifestError
from cdx.manifest import MANIFEST_NAME, load_manifest, model_files, prompt_files, resolve_inside, write_manifest


def _select(manifest: dict[str, Any], names: list[str] | None, source: Path) -> list[dict[str, Any]]:
    models = manifest["models"]
    if not names:
        return list(models)
    known = {m["name"]: m for m in models}
    missing = [n for n in names if n not in known]
    if missing:
        raise InputError(f"{source}: no model {missing[0]!r} in the manifest (have: {', '.join(known)})")
    chosen = [known[n] for n in names]
    takes_text = any(spec["name"] == "text_embedding" for m in chosen for spec in m["inputs"])
    encoders = [m for m in models if m.get("role") == "text_encoder" and m not in chosen]
    return chosen + (encoders[:1] if takes_text and not any(m.get("role") == "text_encoder" for m in chosen) else [])


def _copy(source: Path, staging: Path, rel: str) -> None:
    src = resolve_inside(source, rel)
    dst = staging / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dst, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def _is_image(spec: dict[str, Any]) -> bool:
    shape, value_range = spec["shape"], spec.get("range")
    return len(shape) == 4 and shape[1] in (1, 3) and value_range == [0.0, 1.0]


def png_bytes(image: np.ndarray) -> bytes:
    """A CHW float image in [0, 1] as PNG bytes (grayscale for one channel)."""
    from PIL import Image

    pixels = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    array = pixels[0] if pixels.shape[0] == 1 else np.transpose(pixels, (1, 2, 0))
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _golden_pngs(staging: Path, model: dict[str, Any]) -> dict[str, list[str]]:
    """Write one PNG per seed for each image output; return {output name: [relative paths]}."""
    from cdx.golden_io import read_golden

    if not model.get("golden"):
        return {}
    _, outputs = read_golden(staging, model)
    images: dict[str, list[str]] = {}
    for spec in model["outputs"]:
        if not _is_image(spec):
            continue
        paths = []
        for seed, image in zip(model["golden"]["seeds"], outputs[spec["name"]], strict=True):
            rel = f"golden/{model['name']}.output.{spec['name']}.seed{seed}.png"
            atomic_write_bytes(staging / rel, png_bytes(image))
            paths.append(rel)
        images[spec["name"]] = paths
    return images


def make_bundle(source: str | Path, out: str | Path, models: list[str] | None = None, as_zip: bool = False,
                overwrite: bool = False) -> Path:
    """Write the bundle folder `out` (and `out.zip` with `as_zip`) from the convert folder `source`."""
    source, out = Path(source), Path(out)
    manifest = load_manifest(source, verify=True)
    chosen = _select(manifest, models, source)
    targets = sorted({m["target"] for m in chosen})
    if len(targets) != 1:
        raise InputError(f"{source}: a bundle holds one target, the chosen models span {', '.join(targets)}")
    zip_path = out.with_suffix(".zip")
    if as_zip:
        refuse_existing(zip_path, overwrite)
    with atomic_directory(out, overwrite=overwrite) as staging:
        entries = []
        for model in chosen:
            entry = {k: v for k, v in model.items() if k != "golden"}
            if model.get("golden"):  # PNGs of an earlier bundle are rewritten, not copied
                entry["golden"] = {k: v for k, v in model["golden"].items() if k != "images"}
            for rel in model_files(entry):
                _copy(source, staging, rel)
            images = _golden_pngs(staging, entry)
            if images:
                entry["golden"]["images"] = images
            entries.append(entry)
        for rel in prompt_files(manifest):
            _copy(source, staging, rel)
        data = {k: v for k, v in manifest.items() if k != "files"}
        data["models"] = entries
        data["bundle"] = {"target": targets[0], "models": [m["name"] for m in entries], "source_folder": source.name}
        write_manifest(staging, data)
        load_manifest(staging, verify=True)
    if as_zip:
        _write_zip(out, zip_path)
    return zip_path if as_zip else out


def _write_zip(folder: Path, zip_path: Path) -> None:
    """Zip `folder` to `zip_path` atomically (temp file + rename)."""
    tmp = Path(tempfile.mkstemp(dir=zip_path.parent, prefix=f".{zip_path.name}.", suffix=".tmp")[1])
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(p for p in folder.rglob("*") if p.is_file()):
                archive.write(file, file.relative_to(folder).as_posix())
        tmp.replace(zip_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# Bounds on what a bundle zip may unpack to (a zip bomb is refused before a byte is written). The largest real bundle
# (SD-1.5 fp32 ONNX with golden data) is ~4 GB in a few dozen files, and weights deflate by ~1.1×.
MAX_UNPACKED_BYTES = 64 * 2**30
MAX_MEMBERS = 10_000
MAX_RATIO = 100.0  # uncompressed / compressed, per member above RATIO_MIN_BYTES and for the whole archive
RATIO_MIN_BYTES = 2**20


def _check_members(zip_path: Path, root: Path, members: list[zipfile.ZipInfo]) -> None:
    """Refuse members that escape `root` (zip slip), links, and archives past the size, count or ratio bounds.

    The declared sizes are what zipfile extracts (it stops at `file_size` and checks the CRC), so bounding them
    bounds what lands on disk."""
    if len(members) > MAX_MEMBERS:
        raise ManifestError(f"{zip_path}: {len(members)} members (more than {MAX_MEMBERS}): not a cdx bundle")
    total = packed = 0
    for member in members:
        target = (root / member.filename).resolve()
        if member.filename.startswith("/") or not target.is_relative_to(root):
            raise ManifestError(f"{zip_path}: member {member.filename!r} escapes the bundle")
        if (member.external_attr >> 16) & 0o170000 == 0o120000:
            raise ManifestError(f"{zip_path}: member {member.filename!r} is a symbolic link")
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > RATIO_MIN_BYTES and ratio > MAX_RATIO:
            raise ManifestError(f"{zip_path}: member {member.filename!r} unpacks {ratio:.0f}× its packed size "
                                f"(limit {MAX_RATIO:g}×): refused as a zip bomb")
        total += member.file_size
        packed += member.compress_size
    if total > MAX_UNPACKED_BYTES:
        raise ManifestError(f"{zip_path}: unpacks to {total / 2**30:.1f} GiB (limit {MAX_UNPACKED_BYTES / 2**30:g} GiB)")
    if total > RATIO_MIN_BYTES and total / max(packed, 1) > MAX_RATIO:
        raise ManifestError(f"{zip_path}: unpacks {total / max(packed, 1):.0f}× its packed size (limit {MAX_RATIO:g}×): "
                            "refused as a zip bomb")


def extract_zip(zip_path: Path, into: Path) -> Path:
    """Unpack a bundle zip into the folder `into` (which must not exist yet), within the bounds above; on any
    failure nothing of it is left."""
    if into.exists() or into.is_symlink():
        raise InputError(f"{into}: already exists (a bundle is unpacked into a new folder)")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ManifestError(f"{zip_path}: not a readable zip ({exc})") from None
    with archive:
        members = archive.infolist()
        _check_members(zip_path, into.resolve(), members)
        into.mkdir(parents=True)
        try:
            archive.extractall(into)
        except BaseException as exc:
            shutil.rmtree(into, ignore_errors=True)  # a folder this function just made (never a link: checked above)
            if isinstance(exc, zipfile.BadZipFile | OSError):
                raise ManifestError(f"{zip_path}: cannot unpack ({exc})") from None
            raise
    return into.resolve()


@contextlib.contextmanager
def open_bundle(path: str | Path, workdir: str | Path | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """`with open_bundle(p) as (folder, manifest)`: a bundle folder or zip, every sha256 verified.

    A zip is unpacked into `workdir` (a new folder, kept for the caller) or else into a temporary folder that is
    removed when the block ends, however it ends. A workdir is removed again when verification fails."""
    path = Path(path)
    if path.is_dir():
        yield path, load_manifest(path, verify=True)
        return
    if not (path.is_file() and zipfile.is_zipfile(path)):
        raise InputError(f"not a bundle: {path} (expected a folder with {MANIFEST_NAME} or a .zip)")
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="cdx-bundle-") as tmp:
            folder = extract_zip(path, Path(tmp) / (path.stem or "bundle"))
            yield folder, load_manifest(folder, verify=True)
        return
    folder = extract_zip(path, Path(workdir))
    try:
        manifest = load_manifest(folder, verify=True)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # made by extract_zip just now
        raise
    yield folder, manifest
