"""Native C++ runners (runtimes/native): cdx_ort_runner (ONNX Runtime C++ API), cdx_et_runner (ExecuTorch Module API).

The binaries are what a phone benchmark runs; `bash runtimes/native/setup.sh` builds them into runtimes/native/build/.
Here they run real bundles written by `cdx convert` from a nano class-conditional pipeline (the smallest one whose
ExecuTorch lowering stays in seconds), and must: match the golden outputs to 1e-4, agree with the Python runtimes,
regenerate a golden sample from its seed alone (cdx-normal-v1 in C++), write a cdx-device-results/1 file that
`cdx bench ingest` accepts, and refuse a tampered or escaping bundle with one line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cdx.benchmarks.report import validate_against
from cdx.convert.golden import manifest_inputs
from cdx.golden_io import read_golden
from cdx.manifest import load_manifest
from cdx.runtimes.base import open_runner

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "runtimes" / "native" / "build"
ORT_RUNNER, ET_RUNNER, RNG_SELFTEST = BUILD / "cdx_ort_runner", BUILD / "cdx_et_runner", BUILD / "cdx_rng_selftest"
VECTORS = REPO / "tests" / "data" / "rng_vectors.json"
# Built by `bash runtimes/native/setup.sh` (make test runs it); without them every test skips, or fails under CI=true.
pytestmark = pytest.mark.requires("native-runners")


@pytest.fixture(scope="module")
def nano(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """As small as diffusers allows: 8-channel 1-level UNet2DModel and 1-level AutoencoderKL, no attention."""
    from cdx.tiny_models import build_tiny_class_pipeline

    return build_tiny_class_pipeline(tmp_path_factory.mktemp("models") / "nano", channels=8, vae_levels=1, attention=False)


@pytest.fixture(scope="module")
def onnx_bundle(nano: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.convert.export import ConvertOptions, convert

    out = tmp_path_factory.mktemp("bundles") / "onnx"
    convert(nano, out, ConvertOptions(target="onnx", quants=("none", "ort"), seeds=(0, 1)))
    return out


@pytest.fixture(scope="module")
def pte_bundle(nano: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.convert.export import ConvertOptions, convert

    out = tmp_path_factory.mktemp("bundles") / "pte"
    convert(nano, out, ConvertOptions(target="executorch", quants=("none",), seeds=(0, 1)))
    return out


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, check=False)


def check_runner(binary: Path, bundle: Path, tmp_path: Path, runtime: str, formats: set[str]) -> dict:
    """Run a native runner with a seed, then check its results file, golden metrics and agreement with Python."""
    out = tmp_path / f"{runtime}.json"
    proc = run(binary, bundle, "--runs", 5, "--warmup", 1, "--threads", 1, "--out", out,
               "--seed", 1, "--class", 1, "--save-output", tmp_path)
    assert proc.returncode == 0, proc.stderr
    document = json.loads(out.read_text())
    validate_against("device_results.schema.json", document, str(out))
    manifest = load_manifest(bundle, verify=True)
    models = [m for m in manifest["models"] if m["format"] in formats]
    assert [r["model"] for r in document["results"]] == [m["name"] for m in models]
    assert document["bundle"]["source_weights_sha256"] == manifest["source"]["weights_sha256"]
    assert document["bundle"]["manifest_sha256"] == hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    assert document["device"]["os"] == "Linux"
    for result, model in zip(document["results"], models, strict=True):
        assert result["runtime"] == runtime and result["golden"]["samples"] == 2
        assert result["golden"]["max_abs"] <= 1e-4, result
        assert result["latency"]["runs"] == 5 and 0 < result["latency"]["min_ms"] <= result["latency"]["median_ms"]
        # --seed 1 --class 1 is exactly golden sample 1 (seeds (0, 1), classes cycle), so the C++ cdx-normal-v1
        # latent must reproduce it; the Python runtime on those inputs must agree with the native one.
        spec = model["outputs"][0]
        ours = np.fromfile(tmp_path / f"{model['name']}.{spec['name']}.seed1.class1.bin", dtype=np.float32)
        _, golden = read_golden(bundle, model)
        assert np.abs(ours - golden[spec["name"]][1].ravel()).max() <= 1e-4
        inputs = manifest_inputs(model, manifest, [0, 1])[1]
        assert int(inputs["class_label"][0]) == 1
        python = open_runner(bundle, manifest, model, threads=1).run(inputs)[spec["name"]]
        assert np.abs(ours - python.ravel()).max() <= 1e-5
    return document


def test_ort_runner_matches_golden_python_and_seed(onnx_bundle: Path, tmp_path: Path) -> None:
    document = check_runner(ORT_RUNNER, onnx_bundle, tmp_path, "onnxruntime", {"onnx", "ort"})
    assert {r["backend"] for r in document["results"]} == {"cpu"} and len(document["results"]) == 2


def test_et_runner_matches_golden_python_and_seed(pte_bundle: Path, tmp_path: Path) -> None:
    document = check_runner(ET_RUNNER, pte_bundle, tmp_path, "executorch", {"pte"})
    assert [r["backend"] for r in document["results"]] == ["xnnpack"]


def test_cdx_bench_ingest_accepts_native_results(onnx_bundle: Path, pte_bundle: Path, tmp_path: Path) -> None:
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.report import load_report, write_report

    options = BenchOptions(runs=2, warmup=0, threads=1, seeds=2, teacher="", include_eager=False)
    report_path, _ = write_report(bench(onnx_bundle, options), tmp_path, plots=False)
    files = []
    for binary, bundle in ((ORT_RUNNER, onnx_bundle), (ET_RUNNER, pte_bundle)):
        files.append(tmp_path / f"{binary.name}.json")
        proc = run(binary, bundle, "--runs", 3, "--warmup", 0, "--out", files[-1], "--quiet")
        assert proc.returncode == 0, proc.stderr
    cli = Path(sys.executable).with_name("cdx")
    proc = run(cli, "bench", "ingest", *files, "--report", report_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    merged = load_report(report_path)["device_results"]
    assert [d["results"][0]["runtime"] for d in merged] == ["onnxruntime", "executorch"]


def tampered_copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / bundle.name
    shutil.copytree(bundle, copy)
    return copy


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and proc.stdout == "", proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_ort_runner_refuses_a_tampered_model_and_an_escaping_path(onnx_bundle: Path, tmp_path: Path) -> None:
    copy = tampered_copy(onnx_bundle, tmp_path)
    with (copy / "generator_8x8.onnx").open("ab") as f:
        f.write(b"\0")
    assert_refused(run(ORT_RUNNER, copy, "--model", "generator_8x8"), "generator_8x8.onnx", "sha256 mismatch")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["models"][1]["file"] = "../generator_8x8_ort.ort"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert_refused(run(ORT_RUNNER, copy, "--model", "generator_8x8_ort"), "escapes the bundle")
    assert_refused(run(ORT_RUNNER, copy, "--model", "nope"), "no model named 'nope'")


def test_et_runner_refuses_a_tampered_model_and_gates_on_tolerance(pte_bundle: Path, tmp_path: Path) -> None:
    proc = run(ET_RUNNER, pte_bundle, "--runs", 1, "--warmup", 0, "--tolerance", "1e-12", "--out", tmp_path / "r.json")
    assert proc.returncode == 3 and "FAILED (max_abs <= 1e-12)" in proc.stderr, proc.stderr
    copy = tampered_copy(pte_bundle, tmp_path)
    pte = next(copy.glob("*.pte"))
    data = bytearray(pte.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pte.write_bytes(bytes(data))
    assert_refused(run(ET_RUNNER, copy), pte.name, "sha256 mismatch")


def test_cpp_rng_matches_the_vectors_bit_for_bit(tmp_path: Path) -> None:
    proc = run(RNG_SELFTEST, VECTORS)
    assert proc.returncode == 0 and "self-test passed" in proc.stdout, proc.stdout + proc.stderr
    for binary in (ORT_RUNNER, ET_RUNNER):
        assert run(binary, "--rng-selftest", VECTORS).returncode == 0
    vectors = json.loads(VECTORS.read_text())
    vectors["cases"][-1]["float32_bits"][5] ^= 1  # one flipped mantissa bit must be caught
    bad = tmp_path / "bad_vectors.json"
    bad.write_text(json.dumps(vectors))
    proc = run(RNG_SELFTEST, bad)
    assert proc.returncode == 1 and "element 5" in proc.stderr, proc.stderr
