"""The CLI: verbs listed, unfinished verbs say so, bad input gets one clear line and a nonzero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def cdx(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cdx.cli", *args], capture_output=True, text=True, check=False)


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_help_lists_every_verb_and_version_prints() -> None:
    proc = cdx("--help")
    assert proc.returncode == 0
    for verb in ("teacher", "distill", "sample", "convert", "bench", "bundle", "demo"):
        assert verb in proc.stdout
    version = cdx("--version")
    assert version.returncode == 0 and version.stdout.startswith("cdx ")


def test_phone_benchmarks_without_local_say_where_they_run() -> None:
    proc = cdx("bench", "device", "some_folder")
    assert proc.returncode == 2
    assert "give --local (this machine) or --adb" in _one_error_line(proc)


def test_adb_without_a_runner_or_phone_fails_in_one_line(tmp_path: Path) -> None:
    proc = cdx("bench", "device", str(tmp_path), "--adb", "--runner", str(tmp_path / "missing_runner"))
    assert proc.returncode != 0
    assert "runner not found" in _one_error_line(proc)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--teacher", "/nonexistent/teacher"], "model folder not found: /nonexistent/teacher"),
        (["distill", "--solver", "rk4"], "unknown --solver 'rk4'; valid: ddim, euler, heun"),
        (["distill", "--loss", "l1"], "unknown --loss 'l1'; valid: l2, huber"),
        (["sample", "--model", "/nonexistent/student"], "model folder not found"),
        (["teacher", "train", "--data", "/nonexistent/images"], "no such folder"),
    ],
)
def test_training_verbs_refuse_bad_input_in_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    proc = cdx(*args, "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert message in _one_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_missing_model_folder(tmp_path: Path) -> None:
    proc = cdx("convert", str(tmp_path / "nope"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "model folder not found" in _one_error_line(proc)
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_diffusers(tmp_path: Path) -> None:
    (tmp_path / "junk").mkdir()
    proc = cdx("convert", str(tmp_path / "junk"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert "not a diffusers latent pipeline (missing unet/config.json)" in _one_error_line(proc)


def test_unknown_target_lists_valid_ones(tiny_sd: Path, tmp_path: Path) -> None:
    proc = cdx("convert", str(tiny_sd), "--target", "tflite", "--out", str(tmp_path / "o"))
    assert proc.returncode == 1
    assert "valid: onnx, executorch, coreml" in _one_error_line(proc)


def test_existing_output_is_not_touched(tiny_sd: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = cdx("convert", str(tiny_sd), "--out", str(out))
    assert proc.returncode == 1
    assert "output path exists" in _one_error_line(proc)
    assert (out / "keep.txt").read_text() == "mine"


def test_bench_refuses_bad_manifest_and_checksum(onnx_export: Path, tmp_path: Path) -> None:
    folder = tmp_path / "art"
    shutil.copytree(onnx_export, folder)
    data = json.loads((folder / "manifest.json").read_text())
    data["models"][0]["precision"] = 7
    (folder / "manifest.json").write_text(json.dumps(data))
    proc = cdx("bench", str(folder))
    assert proc.returncode == 1
    assert "schema violation at models/0/precision" in _one_error_line(proc)

    shutil.rmtree(folder)
    shutil.copytree(onnx_export, folder)
    with open(folder / data["models"][0]["file"], "ab") as handle:
        handle.write(b"\0")
    proc = cdx("bench", str(folder))
    assert proc.returncode == 1
    assert "sha256 mismatch" in _one_error_line(proc)
    assert not (folder / "bench").exists()


def test_convert_and_bench_end_to_end(tiny_unet2d: Path, tmp_path: Path) -> None:
    out = tmp_path / "export"
    proc = cdx("convert", str(tiny_unet2d), "--out", str(out), "--num-seeds", "2")
    assert proc.returncode == 0, proc.stderr
    proc = cdx("bench", str(out), "--runs", "3", "--warmup", "1", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert "| generator_16x16 | onnxruntime | fp32 |" in proc.stdout
    report = json.loads((out / "bench" / "report.json").read_text())
    assert report["settings"]["runs"] == 3


def test_usage_errors_print_usage_not_a_traceback() -> None:
    proc = cdx("bench")  # the artifact folder is missing
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "Missing argument" in proc.stderr
