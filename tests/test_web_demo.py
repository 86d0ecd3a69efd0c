"""The browser demo (web_demo/): the embedded student's ONNX bundle run by onnxruntime-web in headless Chromium.

Needs Debian's /usr/bin/chromium, Node and web_demo/node_modules (`bash web_demo/setup.sh` installs them); skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WEB_DEMO = REPO / "web_demo"
CHROMIUM = Path("/usr/bin/chromium")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _missing_requirement() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (run `bash web_demo/setup.sh`)"
    if shutil.which("node") is None:
        return "node is not on PATH"
    for package in ("onnxruntime-web", "playwright-core"):
        if not (WEB_DEMO / "node_modules" / package).is_dir():
            return f"web_demo/node_modules/{package} is missing (run `bash web_demo/setup.sh`)"
    return None


pytestmark = pytest.mark.skipif(_missing_requirement() is not None, reason=str(_missing_requirement()))


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
    assert result["tampered"]["refused"] is True
    assert "sha256 mismatch" in result["tampered"]["error"]
    assert screenshot.exists() and screenshot.read_bytes()[:8] == PNG_MAGIC
