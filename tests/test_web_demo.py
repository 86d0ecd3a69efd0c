"""The browser demo (web_demo/): the embedded student's ONNX bundle run by onnxruntime-web in headless Chromium.

Needs Debian's /usr/bin/chromium, Node and web_demo/node_modules (`bash web_demo/setup.sh` installs them);
skipped otherwise (failed under CI=true).
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB_DEMO = REPO / "web_demo"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Chromium, Node and the npm packages from `bash web_demo/setup.sh` (make test runs it); fails under CI=true without.
pytestmark = pytest.mark.requires("web")


@pytest.fixture(scope="module")
def student_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded Fashion-MNIST student converted to an ONNX bundle with two golden seeds."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.defaults import default_student

    out = tmp_path_factory.mktemp("web") / "bundle"
    convert(default_student(), out, ConvertOptions(target="onnx", seeds=(0, 1)))
    return out


def test_web_demo_matches_golden_in_chromium(student_bundle: Path, tmp_path: Path) -> None:
    """Generate + Check golden in the page: max-abs <= 1e-4 on every seed, a screenshot, a tampered copy refused."""
    screenshot = tmp_path / "web_demo.png"
    result_path = tmp_path / "result.json"
    cmd = [
        "node",
        str(WEB_DEMO / "test" / "run.mjs"),
        str(student_bundle),
        "--screenshot",
        str(screenshot),
        "--json",
        str(result_path),
        "--timeout",
        "80",
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100, check=False)
    assert result_path.exists(), f"run.mjs wrote no result (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(result_path.read_text())
    assert proc.returncode == 0, f"run.mjs failed: {result.get('failures')}\n{proc.stdout}\n{proc.stderr}"

    assert result["ok"] is True
    assert result["model"] == result["expectedModel"]
    assert result["count"] == 2
    assert 0 <= result["maxAbs"] <= 1e-4
    assert all(s["maxAbs"] <= 1e-4 for s in result["golden"]["perSeed"])
    assert result["crossOriginIsolated"] is True
    assert result["latency"]["firstRunMs"] > 0 and result["latency"]["warmMedianMs"] > 0
    assert result["generate"]["outputDims"] == [1, 1, 32, 32]
    seed_match = result["seedMatch"]  # Generate with the last golden seed: the browser's own noise == golden noise
    assert seed_match["seed"] == 1 and seed_match["pass"] is True
    assert seed_match["inputs"]["noise"] == {"values": 256, "differing": 0}
    assert all(v["differing"] == 0 for v in seed_match["inputs"].values())
    assert 0 <= seed_match["outputMaxAbs"] <= 1e-4
    assert result["tampered"]["refused"] is True
    assert "sha256 mismatch" in result["tampered"]["error"]
    assert screenshot.exists() and screenshot.read_bytes()[:8] == PNG_MAGIC


def test_web_rng_matches_the_shared_vectors_bit_for_bit() -> None:
    """web_demo/rng.mjs is cdx-normal-v1: node checks it against tests/data/rng_vectors.json (mix32, keys, bits)."""
    vectors = REPO / "tests" / "data" / "rng_vectors.json"
    cmd = ["node", str(WEB_DEMO / "test" / "rng.mjs"), str(vectors)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "0 failure(s)" in proc.stdout


def test_web_rng_equals_python_on_a_long_stream() -> None:
    """A million draws of one (seed, stream) in node have the same float32 bytes as cdx.rng.normal."""
    import numpy as np

    from cdx import rng

    script = (
        "import(process.argv[1]).then(({ normal }) => {"
        " const z = normal(2024, 1000000, 3);"
        " process.stdout.write(Buffer.from(z.buffer).toString('base64')); });"
    )
    proc = subprocess.run(["node", "-e", script, (WEB_DEMO / "rng.mjs").as_uri()], cwd=REPO, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    ours = base64.b64decode(proc.stdout)
    expected = rng.normal(2024, (1_000_000,), 3).astype(np.float32).tobytes()
    assert hashlib.sha256(ours).hexdigest() == hashlib.sha256(expected).hexdigest()
