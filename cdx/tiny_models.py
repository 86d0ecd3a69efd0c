"""Tiny diffusers models with random weights and the real architectures users bring.

Tests and the quick demo path use these instead of hub downloads: an SD-shaped text-conditioned
`LatentConsistencyModelPipeline` (cross-attention UNet, CLIP text encoder, AutoencoderKL) and an
unconditional `UNet2DModel` + `AutoencoderKL` pair. Everything is saved as safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel, UNet2DModel

TINY_LATENT_SIZE = 16
TINY_TEXT_LENGTH = 16  # optimum's dummy inputs use sequence length 16
TINY_EMBED_DIM = 32


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """AutoencoderKL with 4 latent channels and a 4x spatial factor (latent 16x16 -> image 64x64)."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=TINY_LATENT_SIZE * 4,
    ).eval()


def tiny_sd_unet(seed: int = 0, guidance_embedding: bool = True) -> UNet2DConditionModel:
    """SD-shaped UNet: cross-attention down/up blocks, GroupNorm, optional LCM w-embedding."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=TINY_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=TINY_EMBED_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
        time_cond_proj_dim=32 if guidance_embedding else None,
    ).eval()


def tiny_unet2d(seed: int = 0) -> UNet2DModel:
    """Unconditional UNet2DModel on 4-channel latents."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=TINY_LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
    ).eval()


def tiny_scheduler() -> LCMScheduler:
    """The SD scheduler constants (scaled-linear betas, 1000 steps) in an LCMScheduler."""
    return LCMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        timestep_scaling=10.0,
    )


def _write_tiny_clip_tokenizer(folder: Path) -> None:
    """A real CLIPTokenizer from a hand-written byte-level vocabulary (no hub download)."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in symbols:
        vocab[sym] = len(vocab)
    for sym in symbols:
        vocab[sym + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), "utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", "utf-8")


def build_tiny_sd(folder: str | Path, seed: int = 0, guidance_embedding: bool = True) -> Path:
    """Save a tiny text-conditioned LatentConsistencyModelPipeline (SD-shaped) to `folder`."""
    from diffusers import LatentConsistencyModelPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    tok_dir = folder / "_tokenizer_src"
    _write_tiny_clip_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=TINY_EMBED_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=TINY_TEXT_LENGTH,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    tokenizer.model_max_length = TINY_TEXT_LENGTH
    pipe = LatentConsistencyModelPipeline(
        vae=tiny_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=tiny_sd_unet(seed, guidance_embedding=guidance_embedding),
        scheduler=tiny_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    for leftover in tok_dir.iterdir():
        leftover.unlink()
    tok_dir.rmdir()
    return folder


def _save_latent_pipeline(folder: str | Path, unet: UNet2DModel, vae: AutoencoderKL) -> Path:
    """Save a UNet2DModel + AutoencoderKL + LCMScheduler as diffusers subfolders with a model_index.json."""
    folder = Path(folder)
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    tiny_scheduler().save_pretrained(folder / "scheduler")
    index = {
        "_class_name": "ConsistencyLatentPipeline",
        "_diffusers_version": "0.39.0",
        "unet": ["diffusers", "UNet2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "LCMScheduler"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", "utf-8")
    return folder


def build_tiny_unet2d(folder: str | Path, seed: int = 0) -> Path:
    """Save an unconditional UNet2DModel + AutoencoderKL + LCMScheduler as diffusers subfolders."""
    return _save_latent_pipeline(folder, tiny_unet2d(seed), tiny_vae(seed))


def build_tiny_class_pipeline(folder: str | Path, seed: int = 0, channels: int = 16, vae_levels: int = 2,
                              attention: bool = True) -> Path:
    """The smallest real class-conditional latent pipeline (4 classes): a 1-level UNet2DModel (8×8 latents) and an
    AutoencoderKL with `vae_levels` levels. ExecuTorch lowering time grows with the graph, so its tests use this."""
    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D",),
                       up_block_types=("UpBlock2D",), block_out_channels=(channels,), layers_per_block=1,
                       norm_num_groups=4, num_class_embeds=4, add_attention=attention)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * vae_levels,
                        up_block_types=("UpDecoderBlock2D",) * vae_levels, block_out_channels=(8,) * vae_levels,
                        layers_per_block=0, latent_channels=4, norm_num_groups=4, sample_size=8 * 2 ** (vae_levels - 1),
                        mid_block_add_attention=attention)
    return _save_latent_pipeline(folder, unet, vae)


def write_captioned_imagefolder(root: str | Path, count: int, caption: str = "image {i}", seed: int = 0,
                                size: int = 64) -> Path:
    """`count` random RGB PNGs + `metadata.jsonl` (file_name, text): diffusers' --train_data_dir layout, for tests."""
    import numpy as np
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": caption.format(i=i)})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return root
