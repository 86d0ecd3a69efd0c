"""`cdx bundle`: artifacts + manifest + golden .bin and PNG, every sha256 checked, nothing escapes the bundle."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cdx.bundle import make_bundle, open_bundle
from cdx.errors import ChecksumError, InputError, ManifestError
from cdx.golden_io import read_golden
from cdx.manifest import load_manifest


@pytest.fixture(scope="module")
def bundle_dir(embedded_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_bundle(embedded_onnx, tmp_path_factory.mktemp("bundle") / "onnx.bundle", models=["generator_8x8"])


def test_bundle_holds_the_chosen_model_its_golden_data_and_pngs(bundle_dir: Path) -> None:
    manifest = load_manifest(bundle_dir, verify=True)
    assert manifest["bundle"]["target"] == "onnx" and manifest["bundle"]["models"] == ["generator_8x8"]
    (model,) = manifest["models"]
    files = {f["path"] for f in manifest["files"]}
    assert model["file"] in files and not any("int8" in f for f in files)
    _, outputs = read_golden(bundle_dir, model)
    pngs = model["golden"]["images"]["image"]
    assert len(pngs) == len(model["golden"]["seeds"]) and set(pngs) <= files
    for path, expected in zip(pngs, outputs["image"], strict=True):
        pixels = np.asarray(Image.open(bundle_dir / path), dtype=np.float32) / 255.0
        assert pixels.shape == expected.shape[1:]
        assert np.abs(pixels - expected[0]).max() <= 0.5 / 255 + 1e-6  # the PNG is the golden image, rounded


def test_zip_round_trip_and_tampering_is_refused(bundle_dir: Path, tmp_path: Path) -> None:
    archive = make_bundle(bundle_dir, tmp_path / "again", as_zip=True)
    assert archive.suffix == ".zip" and zipfile.is_zipfile(archive)
    with open_bundle(archive, tmp_path / "unzipped") as (folder, manifest):
        assert manifest["bundle"]["models"] == ["generator_8x8"]
    golden = folder / manifest["models"][0]["golden"]["outputs"]["image"]
    data = bytearray(golden.read_bytes())
    data[0] ^= 0xFF
    golden.write_bytes(bytes(data))
    with pytest.raises(ChecksumError), open_bundle(folder):
        pass


def test_zip_members_and_manifest_paths_that_escape_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("manifest.json", "{}")
        archive.writestr("../outside.txt", "x")
    with pytest.raises(ManifestError, match="escapes the bundle"), open_bundle(evil, tmp_path / "x"):
        pass
    assert not (tmp_path / "outside.txt").exists()

    copy = tmp_path / "copy"
    make_bundle(bundle_dir, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["models"][0]["file"] = "../../etc/passwd"
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match="models/0/file"):  # the schema refuses `..` and absolute paths
        make_bundle(copy, tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_unknown_model_and_cli(embedded_onnx: Path, bundle_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no model 'nope'"):
        make_bundle(embedded_onnx, tmp_path / "b", models=["nope"])
    proc = subprocess.run([sys.executable, "-m", "cdx.cli", "bundle", str(bundle_dir), "--verify"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "files verified" in proc.stdout + proc.stderr
    (bundle_dir.parent / "broken").mkdir()
    proc = subprocess.run([sys.executable, "-m", "cdx.cli", "bundle", str(bundle_dir.parent / "broken"), "--verify"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
