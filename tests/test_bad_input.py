"""Bad input, nothing lost: each case ends in ONE line of error naming the file/field, exit ≠ 0, and leaves nothing
behind (no output folder, no temporary folder, no user file touched)."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_run import run_cli

from cdx.errors import InputError, ManifestError

REPO = Path(__file__).resolve().parents[1]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture()
def model_copy(tiny_unet2d: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_unet2d, copy)
    return copy


# ---- model folders ---------------------------------------------------------------------------------------------
def test_truncated_safetensors_is_one_line_naming_the_file(model_copy: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    weights = model_copy / "unet" / "diffusion_pytorch_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, line = run_cli(monkeypatch, capsys, "convert", model_copy, "-o", out)
    assert code == 1
    assert f"{weights}: not a readable .safetensors file" in line and "truncated" in line
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


class _Trap:
    """A pickle that, if anything ever unpickled it, would create `marker` (what a malicious checkpoint does)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickled_weights_are_refused_by_name_and_never_unpickled(model_copy: Path, tmp_path: Path, suffix: str,
                                                                 monkeypatch, capsys) -> None:
    marker = tmp_path / "unpickled"
    unet = model_copy / "unet"
    (unet / "diffusion_pytorch_model.safetensors").unlink()
    pickled = unet / f"diffusion_pytorch_model{suffix}"
    pickled.write_bytes(pickle.dumps(_Trap(marker)))
    code, line = run_cli(monkeypatch, capsys, "convert", model_copy, "-o", tmp_path / "out")
    assert code == 1 and f"{pickled}: pickled weights ({suffix}); cdx never unpickles" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_single_file_pickled_checkpoint_is_refused_by_name(tmp_path: Path, monkeypatch, capsys) -> None:
    folder = tmp_path / "sd15"
    folder.mkdir()
    ckpt = folder / "v1-5-pruned.ckpt"
    ckpt.write_bytes(pickle.dumps(_Trap(tmp_path / "unpickled")))
    code, line = run_cli(monkeypatch, capsys, "sample", "--model", folder, "-o", tmp_path / "grid.png")
    assert code == 1 and f"{ckpt}: pickled weights (.ckpt); cdx never unpickles" in line
    assert not (tmp_path / "unpickled").exists() and listing(tmp_path) == ["sd15", "sd15/v1-5-pruned.ckpt"]


# ---- hub ids are explicit ----------------------------------------------------------------------------------------
@pytest.fixture()
def hub_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[str]:
    """Record Hub downloads instead of making them (this machine is offline); each returns an empty folder."""
    import huggingface_hub

    calls: list[str] = []

    def fake_snapshot_download(repo_id: str, **_: object) -> str:
        calls.append(repo_id)
        folder = tmp_path / "hub" / repo_id.replace("/", "--")
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.chdir(tmp_path)
    return calls


def test_a_missing_local_looking_path_is_not_found_never_a_hub_lookup(hub_calls: list[str], tmp_path: Path,
                                                                       monkeypatch, capsys) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "student").mkdir()  # the user meant this one
    code, line = run_cli(monkeypatch, capsys, "convert", "out/studnet", "-o", tmp_path / "converted")
    assert code == 1 and line == "error: model folder not found: out/studnet"
    from cdx.distill.model_source import resolve_model_folder

    for typo in ("./studnet", "../x/y", "out/studnet/unet", "C:\\models\\x"):
        with pytest.raises(InputError, match="model folder not found"):
            resolve_model_folder(typo)
    assert hub_calls == [] and not (tmp_path / "converted").exists()


def test_hub_ids_are_explicit_or_announced(hub_calls: list[str], capsys) -> None:
    from cdx.distill.model_source import resolve_model_folder

    assert resolve_model_folder("hf:acme/tiny-sd").name == "acme--tiny-sd"
    assert capsys.readouterr().err == ""
    resolve_model_folder("acme/tiny-sd")  # no local folder `acme`: the Hub, said in one line
    notice = capsys.readouterr().err.strip().splitlines()
    assert notice == ["cdx: no local folder 'acme/tiny-sd': fetching it from the Hugging Face Hub "
                      "(write hf:acme/tiny-sd to say so)"]
    assert hub_calls == ["acme/tiny-sd", "acme/tiny-sd"]
    with pytest.raises(InputError, match=r"hf:\.\./etc: not a Hugging Face Hub repo id"):
        resolve_model_folder("hf:../etc")


def test_an_unreachable_hub_is_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    code, line = run_cli(monkeypatch, capsys, "convert", "hf:acme/not-cached", "-o", tmp_path / "out")
    assert code == 1 and "cannot fetch 'acme/not-cached' from the Hugging Face Hub" in line
    assert not (tmp_path / "out").exists()


# ---- adb ---------------------------------------------------------------------------------------------------------
def test_an_adb_timeout_is_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import cdx.benchmarks.adb as adb

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "adb"
    fake.write_text("#!/bin/sh\nsleep 30\n")  # a phone that never answers
    fake.chmod(0o755)
    runner = tmp_path / "cdx_ort_runner"
    runner.write_bytes(b"\x7fELF")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(adb, "STATE_TIMEOUT_S", 0.5)
    before = listing(tmp_path)
    code, line = run_cli(monkeypatch, capsys, "bench", "device", tmp_path / "bundle", "--adb", "--runner", runner)
    assert code == 2 and "`adb get-state` timed out after 0.5 s" in line
    assert listing(tmp_path) == before


# ---- cdx demo never deletes a user's folder ----------------------------------------------------------------------
def test_demo_refuses_a_non_empty_workdir(tmp_path: Path, monkeypatch, capsys) -> None:
    workdir = tmp_path / "mine"
    (workdir / "onnx").mkdir(parents=True)
    (workdir / "onnx" / "thesis.onnx").write_bytes(b"not cdx's")
    (workdir / "report").mkdir()
    (workdir / "report" / "notes.md").write_text("mine")
    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    code, line = run_cli(monkeypatch, capsys, "demo", "--workdir", workdir)
    assert code == 1 and f"--workdir {workdir} is not empty (onnx, report)" in line and "--overwrite" in line
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_demo_workdir_check_accepts_new_or_empty_folders_and_overwrite(tmp_path: Path) -> None:
    from cdx.demo import check_workdir

    check_workdir(tmp_path / "new", overwrite=False)
    (tmp_path / "empty").mkdir()
    check_workdir(tmp_path / "empty", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    check_workdir(tmp_path / "full", overwrite=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        check_workdir(tmp_path / "file", overwrite=True)


# ---- bundle zips -------------------------------------------------------------------------------------------------
def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


@pytest.fixture()
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at an empty folder, so a leaked temporary folder shows."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def test_zip_bombs_are_refused_before_anything_is_written(tmp_path: Path, private_tmp: Path, monkeypatch) -> None:
    import cdx.bundle as bundle

    bomb = _zip(tmp_path / "bomb.zip", {"manifest.json": b"{}", "golden/x.bin": bytes(50 * 2**20)})
    with pytest.raises(ManifestError, match=r"member 'golden/x\.bin' unpacks \d+× its packed size \(limit 100×\)"), \
            bundle.open_bundle(bomb):
        pass
    many = _zip(tmp_path / "many.zip", {f"f{i}": b"x" for i in range(12)})
    monkeypatch.setattr(bundle, "MAX_MEMBERS", 10)
    with pytest.raises(ManifestError, match=r"12 members \(more than 10\)"), bundle.open_bundle(many):
        pass
    rng = np.random.default_rng(0)
    big = _zip(tmp_path / "big.zip", {"a.bin": rng.bytes(2**20), "b.bin": rng.bytes(2**20)})
    monkeypatch.setattr(bundle, "MAX_UNPACKED_BYTES", 2**20)
    with pytest.raises(ManifestError, match=r"unpacks to 0\.0 GiB \(limit"), bundle.open_bundle(big, tmp_path / "into"):
        pass
    assert listing(private_tmp) == [] and not (tmp_path / "into").exists()


def test_cli_bundle_verify_refuses_a_bomb_in_one_line(tmp_path: Path, private_tmp: Path, monkeypatch, capsys) -> None:
    bomb = _zip(tmp_path / "bomb.zip", {"manifest.json": b"{}", "x.bin": bytes(50 * 2**20)})
    code, line = run_cli(monkeypatch, capsys, "bundle", bomb, "--verify")
    assert code == 1 and f"{bomb}: member 'x.bin' unpacks" in line
    assert listing(private_tmp) == []


def test_open_bundle_removes_its_temporary_folder_on_success_and_failure(tmp_path: Path, private_tmp: Path) -> None:
    from cdx.bundle import open_bundle

    broken = _zip(tmp_path / "broken.zip", {"manifest.json": b"{not json"})
    with pytest.raises(ManifestError), open_bundle(broken):
        pass
    assert listing(private_tmp) == []
    with pytest.raises(ManifestError), open_bundle(broken, tmp_path / "kept"):
        pass
    assert not (tmp_path / "kept").exists()
    with pytest.raises(InputError, match="already exists"), open_bundle(broken, private_tmp):
        pass
    assert private_tmp.is_dir()  # an existing folder is never unpacked into (nor removed)


def test_open_bundle_cleans_up_after_a_valid_zip(embedded_onnx: Path, tmp_path: Path, private_tmp: Path) -> None:
    from cdx.bundle import make_bundle, open_bundle

    archive = make_bundle(embedded_onnx, tmp_path / "b", models=["generator_8x8"], as_zip=True)
    with open_bundle(archive) as (folder, manifest):
        assert folder.is_relative_to(private_tmp) and (folder / manifest["models"][0]["file"]).is_file()
        inside = listing(private_tmp)
        assert inside
    assert listing(private_tmp) == []
    with pytest.raises(RuntimeError), open_bundle(archive):
        raise RuntimeError("the caller fails")
    assert listing(private_tmp) == []


# ---- the conditioning-collapse gate ------------------------------------------------------------------------------
def _images(rng: np.random.Generator, n: int = 8) -> np.ndarray:
    return rng.uniform(0.2, 0.8, size=(n, 1, 16, 16))


def test_collapse_gate_judges_the_aligned_ratio_not_noise_inflated_mean_change() -> None:
    from cdx.convert.parity import conditioning_problem
    from cdx.metrics import conditioning_sensitivity

    rng = np.random.default_rng(0)
    base = _images(rng)
    signal = 0.05 * rng.standard_normal(base.shape)  # what the class label changes in the float model
    ref_a, ref_b = base + signal, base - signal
    # collapsed artifact: both labels give the same image, plus int8-like noise that differs between the runs
    noise = 0.06
    col_a = base + noise * rng.standard_normal(base.shape)
    col_b = base + noise * rng.standard_normal(base.shape)
    collapsed = conditioning_sensitivity(ref_a, ref_b, col_a, col_b)
    assert collapsed["ratio"] >= 0.5, "the old gate (mean |Δ| ratio) would have passed it"
    assert abs(collapsed["aligned_ratio"]) < 0.1
    assert "the conditional signal collapsed" in conditioning_problem(collapsed)
    # a healthy artifact: the same conditional change, under the same amount of noise
    ok_a = ref_a + noise * rng.standard_normal(base.shape)
    ok_b = ref_b + noise * rng.standard_normal(base.shape)
    healthy = conditioning_sensitivity(ref_a, ref_b, ok_a, ok_b)
    assert healthy["aligned_ratio"] == pytest.approx(1.0, abs=0.1) and conditioning_problem(healthy) is None
    # half the conditional signal kept is the threshold's edge; a quarter is refused
    weak = conditioning_sensitivity(ref_a, ref_b, base + 0.25 * signal, base - 0.25 * signal)
    assert weak["aligned_ratio"] == pytest.approx(0.25) and conditioning_problem(weak)


# ---- ExecuTorch's cpuinfo lines never reach the user -------------------------------------------------------------
@pytest.fixture(scope="module")
def pte_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.convert.export import ConvertOptions, convert
    from cdx.tiny_models import build_tiny_class_pipeline

    nano = build_tiny_class_pipeline(tmp_path_factory.mktemp("models") / "nano", channels=8, vae_levels=1,
                                     attention=False)
    out = tmp_path_factory.mktemp("pte") / "executorch"
    convert(nano, out, ConvertOptions(target="executorch", quants=("none",), seeds=(0,)))
    return out


def test_cli_stderr_has_no_executorch_cpuinfo_lines(pte_folder: Path, tmp_path: Path) -> None:
    pte = next(pte_folder.glob("*.pte"))
    raw = subprocess.run([sys.executable, "-c", "import sys; from executorch.runtime import Runtime; "
                          "Runtime.get().load_program(sys.argv[1]).load_method('forward')", str(pte)],
                         capture_output=True, text=True, timeout=300, check=False)
    if sys.platform == "linux" and os.uname().machine == "x86_64":  # the probe misses ARM registers only here
        assert "[cpuinfo_utils.cpp:" in raw.stderr, "ExecuTorch no longer prints them: this test checks nothing"
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, "-m", "cdx.cli", "bench", "device", str(pte_folder), "--local",
                           "--runs", "1", "--warmup", "0", "-o", str(out)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "cpuinfo" not in proc.stderr and "midr" not in proc.stderr, proc.stderr
    assert out.is_file()


def test_filtered_stderr_passes_other_lines_through(capfd: pytest.CaptureFixture[str]) -> None:
    from cdx.quiet import filtered_stderr

    with filtered_stderr():
        os.write(2, b"[cpuinfo_utils.cpp:87] Failed to open midr file /sys/x\nkept line\n")
    assert capfd.readouterr().err == "kept line\n"
    with pytest.raises(ValueError), filtered_stderr():
        os.write(2, b"before the error\n")
        raise ValueError
    assert capfd.readouterr().err == "before the error\n"
