"""Random-weight Stable Diffusion pipelines of published configurations, built offline (no hub download).

The scale benchmarks need the *shapes* of real SD models, not their weights: a latency or memory number depends on
the architecture only. `build_sd_config_student` writes a `LatentConsistencyModelPipeline` folder (UNet with LCM's
guidance embedding `time_cond_proj_dim=256`, AutoencoderKL, CLIP text encoder + a byte-level CLIPTokenizer,
LCMScheduler) that `cdx convert` / `cdx bench` load like any user folder.

Configurations (written out from the published config.json files; nothing is downloaded):
- ``sd-1.5``: runwayml/stable-diffusion-v1-5 `unet/`, `vae/`, `text_encoder/` (CLIP ViT-L/14 text tower), with the
  `time_cond_proj_dim: 256` that SimianLuo/LCM_Dreamshaper_v7 adds; 512 px (64×64 latents).
- ``sd-small``: the same SD-1.5 block layout at 1/5 width (UNet and VAE `block_out_channels` 64/128/256/256) and
  `layers_per_block: 1` — BK-SDM's block pruning (nota-ai/bk-sdm-small, Kim et al. 2023: one ResNet+attention pair
  per down stage, two per up stage), keeping SD-1.5's mid block, attention head dim 8, 32 groups, and the CLIP ViT-L/14
  text encoder (cross-attention dim 768). ≈ 25 M UNet and ≈ 21 M VAE parameters; 256 px (32×32 latents).

Weights are drawn by the classes' own initialisers under `torch.manual_seed(seed)`, one component at a time, each
saved and freed before the next is built (peak memory ≈ the largest component twice, while safetensors serialises it).
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path
from typing import Any

import torch

from cdx.atomic import atomic_directory
from cdx.errors import CdxError, InputError
from cdx.tiny_models import _write_tiny_clip_tokenizer, tiny_scheduler

SD15_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "time_cond_proj_dim": 256,  # LCM_Dreamshaper_v7's guidance (w) embedding
}
SD15_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "scaling_factor": 0.18215,
}
CLIP_VIT_L14_TEXT: dict[str, Any] = {  # SD-1.5 text_encoder/config.json (openai/clip-vit-large-patch14 text tower)
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 77,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "vocab_size": 49408,
}
CONFIGS: dict[str, dict[str, Any]] = {
    "sd-1.5": {"unet": SD15_UNET, "vae": SD15_VAE, "text": CLIP_VIT_L14_TEXT, "resolution": 512},
    "sd-small": {
        "unet": {**SD15_UNET, "block_out_channels": [64, 128, 256, 256], "layers_per_block": 1, "sample_size": 32},
        "vae": {**SD15_VAE, "block_out_channels": [64, 128, 256, 256], "sample_size": 256},
        "text": CLIP_VIT_L14_TEXT,
        "resolution": 256,
    },
}


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _save(module: Any, folder: Path, counts: dict[str, int], name: str) -> None:
    counts[name] = _count(module)
    module.save_pretrained(folder / name, safe_serialization=True)


def build_sd_config_student(folder: str | Path, config: str, resolution: int | None = None, seed: int = 0,
                            say: Any = None, overwrite: bool = False) -> Path:
    """Save a random-weight LatentConsistencyModelPipeline of the published `config` ("sd-1.5" | "sd-small") to
    `folder` (written atomically; an existing folder is refused unless `overwrite`); `resolution` (pixels, a multiple
    of 64) overrides the config's own. Returns the folder."""
    if config not in CONFIGS:
        raise InputError(f"unknown SD config {config!r}; valid: {', '.join(CONFIGS)}")
    spec = CONFIGS[config]
    resolution = int(resolution or spec["resolution"])
    if resolution < 64 or resolution % 64:
        raise InputError(f"resolution {resolution}: must be a multiple of 64 (the VAE's 8× and the UNet's 8× downsampling)")
    counts: dict[str, int] = {}
    start = time.perf_counter()
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        _write_components(tmp, spec, resolution, seed, counts)
    if say:
        millions = ", ".join(f"{name} {n / 1e6:.1f} M" for name, n in counts.items())
        say(f"{config} at {resolution} px → {folder} ({millions} parameters; {time.perf_counter() - start:.0f} s)")
    return Path(folder)


def _write_components(folder: Path, spec: dict[str, Any], resolution: int, seed: int, counts: dict[str, int]) -> None:
    """Build, save and free each component in turn (UNet, VAE, tokenizer, text encoder, scheduler, model_index)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer


    with torch.no_grad():
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**{**spec["unet"], "sample_size": resolution // 8}).eval()
        _save(unet, folder, counts, "unet")
        del unet
        gc.collect()
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**{**spec["vae"], "sample_size": resolution}).eval()
        counts["vae_decoder"] = _count(vae.decoder) + _count(vae.post_quant_conv)
        _save(vae, folder, counts, "vae")
        del vae
        gc.collect()

        tok_src = folder / "_tokenizer_src"
        _write_tiny_clip_tokenizer(tok_src)
        tokenizer = CLIPTokenizer(str(tok_src / "vocab.json"), str(tok_src / "merges.txt"))
        tokenizer.model_max_length = spec["text"]["max_position_embeddings"]
        tokenizer.save_pretrained(folder / "tokenizer")
        for leftover in tok_src.iterdir():
            leftover.unlink()
        tok_src.rmdir()
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(**spec["text"], bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id)).eval()
        _save(text_encoder, folder, counts, "text_encoder")
        del text_encoder
        gc.collect()
    tiny_scheduler().save_pretrained(folder / "scheduler")  # SD-1.5's betas (scaled-linear 0.00085..0.012, 1000 steps)

    index = {
        "_class_name": "LatentConsistencyModelPipeline",
        "_diffusers_version": "0.39.0",
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "LCMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", "utf-8")


def sd_config_vae(config: str, resolution: int | None = None, seed: int = 0) -> Any:
    """Only the random-weight AutoencoderKL of `config` (the decoder benchmarks need no UNet)."""
    from diffusers import AutoencoderKL

    spec = CONFIGS[config]
    torch.manual_seed(seed + 1)  # the same draw as build_sd_config_student's VAE
    return AutoencoderKL(**{**spec["vae"], "sample_size": int(resolution or spec["resolution"])}).eval()


def parameter_counts(config: str) -> dict[str, int]:
    """Parameter counts of `config`'s UNet / VAE / VAE decoder, built on the meta device (no memory, no time)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    spec = CONFIGS[config]
    with torch.device("meta"):
        unet = UNet2DConditionModel(**spec["unet"])
        vae = AutoencoderKL(**spec["vae"])
    return {"unet": _count(unet), "vae": _count(vae), "vae_decoder": _count(vae.decoder) + _count(vae.post_quant_conv)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), required=True)
    parser.add_argument("--out", required=True, help="folder to write the pipeline into")
    parser.add_argument("--resolution", type=int, default=None, help="image side in pixels (default: the config's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    args = parser.parse_args(argv)
    try:
        build_sd_config_student(args.out, args.config, args.resolution, args.seed, say=print, overwrite=args.overwrite)
    except CdxError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
