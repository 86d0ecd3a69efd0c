"""Load the parts of a diffusers latent diffusion pipeline that cdx works on, and refuse what it cannot."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, UNet2DConditionModel, UNet2DModel

from cdx.errors import InputError

Conditioning = Literal["none", "class_label", "text_embedding"]

_UNET_CLASSES = {cls.__name__: cls for cls in (UNet2DConditionModel, UNet2DModel)}
_VAE_CLASSES = {cls.__name__: cls for cls in (AutoencoderKL, AutoencoderTiny)}
MULTISTEP_VAE = "multistep_vae"  # a student's decoder for 2+ steps, beside a `vae/` fit to its one-step latents


@dataclass
class LatentPipelineParts:
    """The pieces of a latent diffusion pipeline, plus what cdx derived about them."""

    path: str
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict[str, Any]
    conditioning: Conditioning
    text_encoder: torch.nn.Module | None = None
    tokenizer: Any = None
    num_classes: int | None = None
    class_names: list[str] = field(default_factory=list)
    weights_sha256: str = ""
    guidance_range: tuple[float, float] | None = None  # w range a cdx student was distilled on
    parameterization: str = "lcm"  # boundary condition a cdx student was distilled with (its cdx.json); lcm otherwise
    multistep_vae: torch.nn.Module | None = None  # the decoder for 2+ steps when `vae` was fit to one-step latents

    def decoder_for(self, steps: int) -> torch.nn.Module:
        """The VAE that decodes a `steps`-step sample: `vae`, or `multistep_vae` (when the folder has one) for 2+
        steps. A decoder fit to one-step latents (`cdx student finetune-decoder`) learned to undo their miss and
        smooths the sharper latents more steps make."""
        return self.multistep_vae if steps > 1 and self.multistep_vae is not None else self.vae

    @property
    def default_guidance(self) -> float:
        """The guidance w golden data and apps use: cdx's evaluation default 3.0 kept inside the distilled range;
        8.0 (LCM's usual) for students cdx did not distill."""
        if self.guidance_range is None:
            return 8.0
        low, high = self.guidance_range
        return min(max(3.0, low), high)

    @property
    def calibration_guidance(self) -> tuple[float, ...]:
        """A spread of w for int8 calibration: across the distilled range, or LCM's usual 2..12."""
        if self.guidance_range is None:
            return (2.0, 4.0, 8.0, 12.0)
        low, high = self.guidance_range
        return tuple(low + (high - low) * i / 3 for i in range(4))

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def vae_scale_factor(self) -> int:
        """Spatial factor between latent and image (see `vae_scale_factor`)."""
        return vae_scale_factor(self.vae)

    @property
    def latent_scaling_factor(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0))

    @property
    def latent_shift_factor(self) -> float | None:
        shift = getattr(self.vae.config, "shift_factor", None)
        return None if shift is None else float(shift)

    @property
    def guidance_embedding_dim(self) -> int | None:
        """LCM's w-embedding size (UNet `time_cond_proj_dim`), or None when w is not an input."""
        dim = getattr(self.unet.config, "time_cond_proj_dim", None)
        return int(dim) if dim else None

    @property
    def text_sequence_length(self) -> int:
        if self.tokenizer is not None:
            return int(self.tokenizer.model_max_length)
        if self.text_encoder is not None:
            return int(self.text_encoder.config.max_position_embeddings)
        return 77

    @property
    def cross_attention_dim(self) -> int:
        dim = self.unet.config.cross_attention_dim
        return int(dim[0] if isinstance(dim, list | tuple) else dim)


def vae_scale_factor(vae: torch.nn.Module) -> int:
    """Latent → image spatial factor: 2 ** (blocks - 1). AutoencoderTiny's own config names its blocks
    `encoder_block_out_channels` (a stride-2 convolution per block after the first); `block_out_channels` is only
    an alias some versions add."""
    config = vae.config
    blocks = config.encoder_block_out_channels if isinstance(vae, AutoencoderTiny) else config.block_out_channels
    return 2 ** (len(blocks) - 1)


def vae_encode(vae: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Unscaled latents of `images`: the posterior mean for AutoencoderKL, the encoder output for AutoencoderTiny."""
    out = vae.encode(images)
    return out.latent_dist.mean if hasattr(out, "latent_dist") else out.latents


def weights_digest(folder: Path) -> str:
    """sha256 over the (path, sha256) pairs of every safetensors file: the source model's identity."""
    import hashlib

    from cdx.atomic import sha256_file

    digest = hashlib.sha256()
    for file in sorted(folder.rglob("*.safetensors")):
        digest.update(file.relative_to(folder).as_posix().encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def read_cdx_info(folder: Path) -> dict[str, Any]:
    """cdx's own notes beside a pipeline it saved (`cdx.json`: class names, kind, recipe); {} for other folders."""
    path = Path(folder) / "cdx.json"
    return _read_json(path) if path.is_file() else {}


def recorded_teacher(folder: str | os.PathLike[str]) -> Path | None:
    """The teacher a cdx student's cdx.json names, when it is on disk (as recorded, or as an embedded asset of that
    name: cards record `cdx/assets/<name>`, the checkout's layout); None otherwise."""
    from cdx.defaults import ASSETS

    named = read_cdx_info(Path(folder)).get("teacher") if Path(folder).is_dir() else None
    if not named:
        return None
    for candidate in (Path(named), ASSETS / Path(named).name):
        if (candidate / "model_index.json").is_file():
            return candidate
    return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read JSON ({exc})") from None


def _resolve_folder(model: str | os.PathLike[str]) -> Path:
    """A local folder, or a Hub repo only when explicit (`hf:org/name`; see `model_source.resolve_model_folder`)."""
    from cdx.distill.model_source import resolve_model_folder

    return resolve_model_folder(model)


def _component_class(folder: Path, name: str, allowed: dict[str, type]) -> type:
    config = folder / name / "config.json"
    if not config.is_file():
        from cdx.distill.model_source import pickled_files, refuse_pickles

        if pickles := pickled_files(folder):  # a single-file .ckpt/.pt checkpoint
            raise refuse_pickles(pickles)
        raise InputError(f"{folder}: not a diffusers latent pipeline (missing {name}/config.json)")
    cls = _read_json(config).get("_class_name", "")
    if cls not in allowed:
        raise InputError(f"{config}: {name} class {cls!r} is not supported (supported: {', '.join(allowed)})")
    return allowed[cls]


def _from_pretrained(cls: type, component: Path, **kwargs: Any) -> torch.nn.Module:
    """`cls.from_pretrained` on safetensors only, after cdx checked them; a load failure is one line naming the folder."""
    from cdx.distill.model_source import check_component_weights

    check_component_weights(component)
    try:
        return cls.from_pretrained(component, use_safetensors=True, **kwargs).eval()
    except (OSError, ValueError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{component}: cannot load {cls.__name__} ({reason[:300]})") from None


def load_latent_pipeline(model: str | os.PathLike[str], dtype: torch.dtype = torch.float32) -> LatentPipelineParts:
    """Load unet, vae, scheduler config (and text encoder/tokenizer when text-conditioned) from a folder."""
    folder = _resolve_folder(model)
    unet_cls = _component_class(folder, "unet", _UNET_CLASSES)
    vae_cls = _component_class(folder, "vae", _VAE_CLASSES)
    sched_path = folder / "scheduler" / "scheduler_config.json"
    if not sched_path.is_file():
        raise InputError(f"{folder}: not a diffusers latent pipeline (missing scheduler/scheduler_config.json)")
    scheduler_config = _read_json(sched_path)

    unet = _from_pretrained(unet_cls, folder / "unet", torch_dtype=dtype)
    vae = _from_pretrained(vae_cls, folder / "vae", torch_dtype=dtype)
    multistep_vae = None
    if (folder / MULTISTEP_VAE).is_dir():
        multistep_cls = _component_class(folder, MULTISTEP_VAE, _VAE_CLASSES)
        multistep_vae = _from_pretrained(multistep_cls, folder / MULTISTEP_VAE, torch_dtype=dtype)

    text_encoder = tokenizer = None
    num_classes = getattr(unet.config, "num_class_embeds", None)
    class_names: list[str] = []
    if num_classes:
        conditioning: Conditioning = "class_label"
        class_names = list(read_cdx_info(folder).get("class_names", []))
    elif unet_cls is UNet2DConditionModel:
        class_names = list(read_cdx_info(folder).get("class_names", []))
        conditioning = "text_embedding"
        if (folder / "text_encoder" / "config.json").is_file():
            from transformers import AutoTokenizer, CLIPTextModel

            text_encoder = _from_pretrained(CLIPTextModel, folder / "text_encoder", dtype=dtype)
            if (folder / "tokenizer").is_dir():
                tokenizer = AutoTokenizer.from_pretrained(folder / "tokenizer")
    else:
        conditioning = "none"

    return LatentPipelineParts(
        path=str(model),
        unet=unet,
        vae=vae,
        scheduler_config=scheduler_config,
        conditioning=conditioning,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        # A cdx pipeline's last class embedding is the CFG null class: expose only the named classes.
        num_classes=(len(class_names) if class_names else int(num_classes)) if num_classes else None,
        class_names=class_names,
        weights_sha256=weights_digest(folder),
        guidance_range=_guidance_range(folder),
        parameterization=str(read_cdx_info(folder).get("parameterization", "lcm")),
        multistep_vae=multistep_vae,
    )


def _guidance_range(folder: Path) -> tuple[float, float] | None:
    """The w range a cdx student was distilled on (from its cdx.json), or None for other pipelines."""
    value = read_cdx_info(folder).get("guidance_range")
    return (float(value[0]), float(value[1])) if value else None
