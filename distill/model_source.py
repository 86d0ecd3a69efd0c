"""Where a model argument points (a local folder or, only when explicit, a Hub repo) and whether its weights are safe
to hand to diffusers: safetensors that parse, never pickles (cdx never unpickles)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

from cdx.errors import InputError

HUB_PREFIX = "hf:"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}")


def _hub_form(text: str) -> bool:
    """`org/name` that cannot be a local path: two plain parts, and no local folder called `org` (so `out/studnet`,
    a typo under an existing folder, stays a local path that is "not found")."""
    if not _HUB_ID.fullmatch(text) or ".." in text or "--" in text:
        return False
    return not Path(text.split("/", 1)[0]).exists()


def _download(repo_id: str) -> Path:
    if not _HUB_ID.fullmatch(repo_id):
        raise InputError(f"{HUB_PREFIX}{repo_id}: not a Hugging Face Hub repo id (expected hf:org/name)")
    try:
        from huggingface_hub import snapshot_download

        # only configs, vocabularies and safetensors: a pickled file never reaches this machine
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors"]))
    except Exception as exc:  # network, auth, missing repo, offline mode
        raise InputError(f"cannot fetch {repo_id!r} from the Hugging Face Hub ({type(exc).__name__}); "
                         "pass a local folder") from None


def resolve_model_folder(model: str | os.PathLike[str]) -> Path:
    """The local folder of `model`: a path that exists; `hf:org/name` from the Hub; `org/name` from the Hub only when
    nothing local could be meant (with a one-line notice on stderr). Anything else is "not found", never a lookup."""
    text = os.fspath(model)
    if text.startswith(HUB_PREFIX):
        return _download(text[len(HUB_PREFIX):])
    path = Path(text)
    if path.exists():
        if not path.is_dir():
            raise InputError(f"{path}: not a folder (expected a diffusers pipeline folder)")
        return path
    if _hub_form(text):
        print(f"cdx: no local folder {text!r}: fetching it from the Hugging Face Hub (write {HUB_PREFIX}{text} to say so)",
              file=sys.stderr)
        return _download(text)
    raise InputError(f"model folder not found: {path}")


def pickled_files(folder: Path) -> list[Path]:
    """Pickle-format weight files directly in `folder` (diffusers' `.bin`, torch `.pt`/`.ckpt`, ...)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)


def refuse_pickles(files: list[Path]) -> InputError:
    return InputError(f"{files[0]}: pickled weights ({files[0].suffix}); cdx never unpickles — save them as "
                      ".safetensors (diffusers: save_pretrained(..., safe_serialization=True))")


def check_component_weights(component: Path) -> None:
    """Refuse a component folder whose weights are pickles only, or a `.safetensors` file that does not parse
    (truncated, not safetensors), by name, before diffusers opens anything."""
    from safetensors import SafetensorError, safe_open

    tensors = sorted(component.glob("*.safetensors"))
    if not tensors:
        pickles = pickled_files(component)
        if pickles:
            raise refuse_pickles(pickles)
        raise InputError(f"{component}: no .safetensors weights")
    for file in tensors:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{file}: not a readable .safetensors file ({reason}; truncated or corrupt?)") from None
