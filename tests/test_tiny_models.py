"""The tiny-model builder makes real diffusers architectures, saved as safetensors, loadable offline."""

from __future__ import annotations

from pathlib import Path

import torch

from cdx.distill.loading import load_latent_pipeline


def test_tiny_sd_is_a_loadable_lcm_pipeline_with_sd_architecture(tiny_sd: Path) -> None:
    from diffusers import DiffusionPipeline

    assert list(tiny_sd.rglob("*.safetensors")), "weights must be safetensors"
    assert not list(tiny_sd.rglob("*.bin")), "no pickled weights"
    pipe = DiffusionPipeline.from_pretrained(tiny_sd)
    assert type(pipe).__name__ == "LatentConsistencyModelPipeline"
    unet = pipe.unet
    assert "CrossAttnDownBlock2D" in unet.config.down_block_types
    assert any(isinstance(m, torch.nn.GroupNorm) for m in unet.modules())
    assert unet.config.time_cond_proj_dim == 32
    image = pipe("a shirt", num_inference_steps=1, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


def test_tiny_sd_parts_are_detected_as_text_conditioned(tiny_sd: Path) -> None:
    parts = load_latent_pipeline(tiny_sd)
    assert parts.conditioning == "text_embedding"
    assert parts.text_sequence_length == 16 and parts.cross_attention_dim == 32
    assert parts.vae_scale_factor == 4 and parts.latent_channels == 4
    assert len(parts.weights_sha256) == 64


def test_tiny_unet2d_is_unconditional_and_deterministic(tiny_unet2d: Path, tmp_path: Path) -> None:
    from cdx.tiny_models import build_tiny_unet2d

    parts = load_latent_pipeline(tiny_unet2d)
    assert type(parts.unet).__name__ == "UNet2DModel"
    assert parts.conditioning == "none" and parts.guidance_embedding_dim is None
    again = load_latent_pipeline(build_tiny_unet2d(tmp_path / "again"))
    assert again.weights_sha256 == parts.weights_sha256


def test_committed_model_configs_hold_no_machine_paths() -> None:
    """diffusers writes `_name_or_path` into every saved config: a training machine's absolute path would ship."""
    import json

    from cdx.defaults import ASSETS

    for config in sorted(Path(ASSETS).glob("*/*/config.json")):
        name = json.loads(config.read_text("utf-8")).get("_name_or_path")
        assert not (isinstance(name, str) and name.startswith("/")), f"{config}: _name_or_path {name!r}"
