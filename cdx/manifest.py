"""The manifest: the one JSON contract between export, runtimes, benchmarks and apps.

It is validated against `schemas/manifest.schema.json` on write and on read, and every file it names
is checked against its recorded sha256 before anything loads it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from cdx import __version__
from cdx.atomic import atomic_write_text, sha256_file
from cdx.errors import ChecksumError, InputError, ManifestError

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = "1.0"


@cache
def manifest_schema() -> dict[str, Any]:
    """The JSON Schema the manifest must satisfy."""
    text = resources.files("cdx").joinpath("schemas/manifest.schema.json").read_text("utf-8")
    return json.loads(text)


def validate_manifest(data: dict[str, Any], where: str = "manifest") -> None:
    """Raise ManifestError with the first schema violation, naming the JSON path."""
    validator = jsonschema.Draft202012Validator(manifest_schema())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    if errors:
        first = errors[0]
        path = "/".join(str(p) for p in first.absolute_path) or "(root)"
        raise ManifestError(f"{where}: schema violation at {path}: {first.message}")
    names = [m["name"] for m in data["models"]]
    if len(names) != len(set(names)):
        raise ManifestError(f"{where}: model names must be unique, got {names}")
    listed = {f["path"] for f in data["files"]}
    for rel in prompt_files(data):
        if rel not in listed:
            raise ManifestError(f"{where}: conditioning.prompts refers to {rel!r}, which is not in 'files'")
    for model in data["models"]:
        for rel in model_files(model):
            if not _is_listed(rel, listed):
                raise ManifestError(f"{where}: model {model['name']!r} refers to {rel!r}, which is not in 'files'")


def _is_listed(rel: str, listed: set[str]) -> bool:
    """A file is listed by its path; a folder artifact (.mlpackage) by the files inside it."""
    prefix = rel.rstrip("/") + "/"
    return rel in listed or any(path.startswith(prefix) for path in listed)


def model_files(model: dict[str, Any]) -> list[str]:
    """Every file a model entry refers to: the artifact, its external weight files, its golden data, its tokenizer files."""
    tokenizer = (model.get("tokenizer") or {}).get("files", {})
    return [model["file"], *model.get("external_data", []), *_golden_paths(model), *tokenizer.values()]


def prompt_files(data: dict[str, Any]) -> list[str]:
    """The encoded prompts' files a text student's manifest names (`conditioning.prompts`)."""
    prompts = data.get("conditioning", {}).get("prompts") or {}
    return [prompts[key] for key in ("input_ids", "text_embedding") if key in prompts]


def _golden_paths(model: dict[str, Any]) -> list[str]:
    golden = model.get("golden") or {}
    images = [path for paths in golden.get("images", {}).values() for path in paths]
    return [*golden.get("inputs", {}).values(), *golden.get("outputs", {}).values(), *images]


def resolve_inside(root: Path, rel: str) -> Path:
    """Resolve `rel` under `root`, refusing any path that escapes it (absolute, `..`, symlink out)."""
    root = root.resolve()
    candidate = (root / rel).resolve()
    if not candidate.is_relative_to(root):
        raise ManifestError(f"{root / MANIFEST_NAME}: path {rel!r} escapes the artifact folder")
    return candidate


def file_entries(root: Path, rel_paths: list[str]) -> list[dict[str, Any]]:
    """sha256 and size of each file (a folder such as .mlpackage contributes every file inside it)."""
    entries: list[dict[str, Any]] = []
    for rel in sorted(set(rel_paths)):
        path = resolve_inside(root, rel)
        inner = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in inner:
            entries.append(
                {
                    "path": file.relative_to(root.resolve()).as_posix(),
                    "sha256": sha256_file(file),
                    "size_bytes": file.stat().st_size,
                }
            )
    return entries


def new_manifest(**fields: Any) -> dict[str, Any]:
    """Start a manifest with the version and provenance fields filled in."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "created_by": f"cdx {__version__}",
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **fields,
    }


def write_manifest(folder: str | Path, data: dict[str, Any]) -> Path:
    """Fill 'files' from the folder (every file the models name), validate, then write atomically."""
    root = Path(folder)
    referenced: list[str] = prompt_files(data)
    for model in data["models"]:
        referenced += model_files(model)
    data = {**data, "files": file_entries(root, referenced)}
    validate_manifest(data, where=str(root / MANIFEST_NAME))
    path = root / MANIFEST_NAME
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def load_manifest(folder: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read and validate `folder/manifest.json`; with `verify`, check every file's sha256 first."""
    root = Path(folder)
    path = root / MANIFEST_NAME if root.is_dir() or not root.exists() else root
    root = path.parent
    if not path.is_file():
        raise InputError(f"no manifest: {path} does not exist (is this a folder written by `cdx convert`?)")
    try:
        data = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: schema violation at (root): expected an object")
    validate_manifest(data, where=str(path))
    if verify:
        verify_files(root, data)
    return data


def verify_files(root: Path, data: dict[str, Any]) -> None:
    """Raise ChecksumError on the first missing or altered file."""
    for entry in data["files"]:
        file = resolve_inside(root, entry["path"])
        if not file.is_file():
            raise ChecksumError(f"{file}: listed in the manifest but missing")
        actual = sha256_file(file)
        if actual != entry["sha256"]:
            raise ChecksumError(
                f"{file}: sha256 mismatch (manifest {entry['sha256'][:12]}…, file {actual[:12]}…); "
                "the artifact was modified or corrupted"
            )


def find_model(data: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """The model entry called `name`, or the only/first one when `name` is None."""
    models = data["models"]
    if name is None:
        return models[0]
    for model in models:
        if model["name"] == name:
            return model
    raise InputError(f"no model named {name!r} in manifest; available: {', '.join(m['name'] for m in models)}")
