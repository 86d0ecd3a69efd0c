"""The embedded defaults: the Fashion-MNIST teacher and its one-step student, shipped inside the package."""

from __future__ import annotations

from pathlib import Path

from cdx.errors import InputError

ASSETS = Path(__file__).with_name("assets")
TEACHER_DIR = ASSETS / "fashion_teacher"
STUDENT_DIR = ASSETS / "fashion_student"
# the text-to-image pair (stock StableDiffusionPipeline / LatentConsistencyModelPipeline) trained on Noto emoji
EMOJI_TEACHER_DIR = ASSETS / "emoji_teacher"
EMOJI_STUDENT_DIR = ASSETS / "emoji_student"


def _require(path: Path, how: str) -> str:
    if not (path / "model_index.json").is_file():
        raise InputError(f"embedded model missing: {path} ({how})")
    return str(path)


def default_teacher() -> str:
    """Path of the committed teacher pipeline."""
    return _require(TEACHER_DIR, "reproduce it with `cdx teacher train --out cdx/assets/fashion_teacher`")


def default_student() -> str:
    """Path of the committed one-step student pipeline."""
    return _require(STUDENT_DIR, "reproduce it with `cdx distill --out cdx/assets/fashion_student`")


def portable_path(path: str) -> str:
    """The embedded teacher as `cdx/assets/<name>` (the checkout's layout, not this machine's); others as given."""
    resolved = Path(path).resolve()
    if resolved.parent == ASSETS.resolve():
        return f"cdx/assets/{resolved.name}"
    return path
