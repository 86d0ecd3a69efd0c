"""LCM-LoRA: distill a LoRA on a frozen stock SD-shaped teacher, save only the LoRA, load it with diffusers'
`load_lora_weights`, sample in few steps with LCMScheduler, and convert the fused student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cdx.distill.distiller import DistillConfig, distill_student
from cdx.distill.lora import LORA_WEIGHTS


@pytest.fixture(scope="module")
def stock_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SD-shaped text teacher WITHOUT a w-embedding (time_cond_proj_dim=None), like a stock SD checkpoint."""
    from cdx.tiny_models import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("models") / "stock_sd", seed=1, guidance_embedding=False)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.tiny_models import write_captioned_imagefolder

    return write_captioned_imagefolder(tmp_path_factory.mktemp("captioned"), 6, "a thing {i}", seed=1)


@pytest.fixture(scope="module")
def lora_dir(stock_teacher: Path, captioned: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "lcm_lora"
    config = DistillConfig(steps=3, batch_size=2, lr=5e-3, num_solver_steps=10, checkpoint_every=100, sample_every=0,
                           lora_rank=4, guidance_range=(3.0, 3.0), ema_decay=0.5)
    distill_student(stock_teacher, out, config, data=captioned, show=False)
    return out


def _stock_pipeline(teacher: Path):
    """The user's own teacher pipeline (StableDiffusionPipeline) with diffusers' LCMScheduler swapped in."""
    from diffusers import LCMScheduler, StableDiffusionPipeline
    from diffusers.pipelines.pipeline_utils import DiffusionPipeline

    base = DiffusionPipeline.from_pretrained(teacher)
    return StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
                                   scheduler=LCMScheduler.from_config(base.scheduler.config), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)


def test_only_the_lora_is_saved_and_the_stock_pipeline_loads_and_samples_it(lora_dir: Path, stock_teacher: Path) -> None:
    assert sorted(p.name for p in lora_dir.iterdir() if p.suffix != ".png") == ["cdx.json", "pytorch_lora_weights.safetensors"]
    info = json.loads((lora_dir / "cdx.json").read_text())
    assert info["kind"] == "lora" and info["lora_rank"] == 4 and info["guidance_embedded"] is False
    pipe = _stock_pipeline(stock_teacher)
    x, t, emb = torch.randn(1, 4, 16, 16), torch.tensor([759]), torch.randn(1, 16, 32)
    with torch.no_grad():
        before = pipe.unet(x, t, encoder_hidden_states=emb).sample
        pipe.load_lora_weights(lora_dir, weight_name=LORA_WEIGHTS)  # offline diffusers needs the name
        after = pipe.unet(x, t, encoder_hidden_states=emb).sample
    assert float((after - before).abs().max()) > 1e-4  # the trained adapters act on the teacher
    for steps in (1, 4):
        images = pipe("a thing 1", num_inference_steps=steps, guidance_scale=1.0, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all() and float(images.std()) > 0


def test_fused_lora_equals_the_loaded_lora(lora_dir: Path, stock_teacher: Path) -> None:
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.lora import fuse_lora

    pipe = _stock_pipeline(stock_teacher)
    pipe.load_lora_weights(lora_dir, weight_name=LORA_WEIGHTS)  # offline diffusers needs the name
    fused = fuse_lora(load_latent_pipeline(stock_teacher).unet, lora_dir)
    assert not any("lora" in name for name, _ in fused.named_parameters())  # a plain UNet for export
    x, t, emb = torch.randn(2, 4, 16, 16), torch.tensor([999, 259]), torch.randn(2, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, t, encoder_hidden_states=emb).sample,
                                   pipe.unet(x, t, encoder_hidden_states=emb).sample, atol=1e-5, rtol=1e-4)


def test_convert_lora_fuses_before_export(lora_dir: Path, stock_teacher: Path, tmp_path: Path) -> None:
    from cdx.convert.export import ConvertOptions, convert

    manifest = json.loads(convert(stock_teacher, tmp_path / "onnx", ConvertOptions(target="onnx", seeds=(0,),
                                                                                   lora=str(lora_dir))).read_text())
    assert manifest["source"]["lora"]["path"] == str(lora_dir.resolve())
    assert manifest["schedule"]["parameterization"] == "lcm"
    assert manifest["models"][0]["parity"]["checked"] == "numeric"


def test_lora_needs_a_conditional_unet(tiny_unet2d: Path, captioned: Path, tmp_path: Path) -> None:
    from cdx.errors import InputError

    config = DistillConfig(steps=1, batch_size=2, num_solver_steps=10, sample_every=0, lora_rank=2)
    with pytest.raises(InputError, match="--lora-rank needs a UNet2DConditionModel"):
        distill_student(tiny_unet2d, tmp_path / "x", config, data=captioned, show=False)
