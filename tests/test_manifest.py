"""The manifest contract: schema on write and read, checksums, paths that must not escape."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cdx.errors import ChecksumError, InputError, ManifestError
from cdx.manifest import MANIFEST_NAME, load_manifest, resolve_inside, validate_manifest, write_manifest


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_exported_manifest_is_valid_and_lists_every_file(onnx_export: Path) -> None:
    data = load_manifest(onnx_export)
    listed = {f["path"] for f in data["files"]}
    model = data["models"][0]
    assert model["file"] in listed
    assert set(model["golden"]["inputs"].values()) | set(model["golden"]["outputs"].values()) <= listed
    assert data["schedule"]["steps"][0]["timestep"] == 999
    assert [t["name"] for t in model["inputs"]] == ["noise", "text_embedding", "guidance_scale"]
    assert model["outputs"][0]["range"] == [0.0, 1.0]


def test_manifest_missing_key_is_refused_with_its_path(onnx_export: Path, tmp_path: Path) -> None:
    folder = _copy(onnx_export, tmp_path)
    data = json.loads((folder / MANIFEST_NAME).read_text())
    del data["models"][0]["inputs"][0]["dtype"]
    (folder / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"models/0/inputs/0: 'dtype' is a required property"):
        load_manifest(folder)


def test_manifest_with_bad_dtype_or_version_is_refused(onnx_export: Path) -> None:
    data = load_manifest(onnx_export)
    bad = json.loads(json.dumps(data))
    bad["models"][0]["outputs"][0]["dtype"] = "float64"
    with pytest.raises(ManifestError, match="dtype"):
        validate_manifest(bad)
    bad = json.loads(json.dumps(data))
    bad["manifest_version"] = "0.9"
    with pytest.raises(ManifestError, match="manifest_version"):
        validate_manifest(bad)


def test_not_json_manifest_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ManifestError, match="not valid JSON"):
        load_manifest(tmp_path)
    with pytest.raises(InputError, match="no manifest"):
        load_manifest(tmp_path / "missing")


def test_checksum_mismatch_is_refused(onnx_export: Path, tmp_path: Path) -> None:
    folder = _copy(onnx_export, tmp_path)
    model_file = folder / load_manifest(folder)["models"][0]["file"]
    blob = bytearray(model_file.read_bytes())
    blob[-1] ^= 0xFF
    model_file.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="sha256 mismatch"):
        load_manifest(folder)
    load_manifest(folder, verify=False)  # the schema itself is still fine


def test_missing_listed_file_is_refused(onnx_export: Path, tmp_path: Path) -> None:
    folder = _copy(onnx_export, tmp_path)
    (folder / load_manifest(folder)["models"][0]["golden"]["outputs"]["image"]).unlink()
    with pytest.raises(ChecksumError, match="missing"):
        load_manifest(folder)


def test_paths_that_escape_the_folder_are_refused(onnx_export: Path, tmp_path: Path) -> None:
    data = load_manifest(onnx_export)
    bad = json.loads(json.dumps(data))
    bad["files"][0]["path"] = "../outside.onnx"
    with pytest.raises(ManifestError, match="files/0/path"):
        validate_manifest(bad)
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(ManifestError, match="escapes"):
        resolve_inside(tmp_path, "link/passwd")


def test_write_manifest_validates_before_writing(onnx_export: Path, tmp_path: Path) -> None:
    folder = _copy(onnx_export, tmp_path)
    data = load_manifest(folder)
    (folder / MANIFEST_NAME).unlink()
    data["models"][0]["role"] = "not-a-role"
    with pytest.raises(ManifestError, match="role"):
        write_manifest(folder, data)
    assert not (folder / MANIFEST_NAME).exists()
    data["models"][0]["role"] = "generator"
    write_manifest(folder, data)
    assert load_manifest(folder)["models"][0]["role"] == "generator"
