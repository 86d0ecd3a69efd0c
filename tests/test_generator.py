"""The one-step generator reproduces diffusers' own LCM pipeline, and its constants come from the scheduler."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdx.distill.consistency import boundary_scalings, guidance_scale_embedding, step_constants
from cdx.distill.generator import build_generator
from cdx.distill.loading import load_latent_pipeline


@pytest.mark.parametrize("parameterization", ["lcm", "edm"])
def test_boundary_condition_holds_for_both_forms(parameterization: str) -> None:
    from cdx.tiny_models import tiny_scheduler

    config = dict(tiny_scheduler().config)
    c_skip0, c_out0 = boundary_scalings(0, config, parameterization)
    assert c_skip0 == pytest.approx(1.0) and c_out0 == pytest.approx(0.0)
    c_skip, c_out = boundary_scalings(999, config, parameterization)
    assert c_skip < 2e-3 and c_out > 0.99  # SD schedule: sigma(999) = 14.6, so EDM c_skip = 0.0012


def test_step_constants_follow_lcm_scheduler() -> None:
    from cdx.tiny_models import tiny_scheduler

    scheduler = tiny_scheduler()
    steps = step_constants(dict(scheduler.config), num_steps=4)
    scheduler.set_timesteps(4)
    assert [s.timestep for s in steps] == [int(t) for t in scheduler.timesteps]
    c_skip, c_out = scheduler.get_scalings_for_boundary_condition_discrete(torch.tensor(steps[1].timestep))
    assert steps[1].c_skip == pytest.approx(float(c_skip)) and steps[1].c_out == pytest.approx(float(c_out))
    assert steps[1].alpha_cumprod == pytest.approx(float(scheduler.alphas_cumprod[steps[1].timestep]))


def test_guidance_embedding_matches_diffusers() -> None:
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([7.0])
    expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=32)
    torch.testing.assert_close(guidance_scale_embedding(w, 32), expected)


@pytest.mark.parametrize("steps", [1, 2])
def test_generator_matches_diffusers_lcm_pipeline(tiny_sd: Path, steps: int) -> None:
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_sd)
    parts = load_latent_pipeline(tiny_sd)
    generator, _ = build_generator(parts, num_steps=steps)
    inputs = generator.example_inputs(seed=3, guidance_scale=6.0)
    embeds = pipe.encode_prompt("a bag", "cpu", 1, False)[0]
    inputs["text_embedding"] = embeds
    if steps > 1:
        # diffusers draws the re-noising noise from the generator it was given; replay the same draws
        torch.manual_seed(11)
        inputs["step_noise"] = torch.randn_like(inputs["step_noise"])
    with torch.no_grad():
        ours = generator(*inputs.values())
        torch.manual_seed(11)
        theirs = pipe(prompt_embeds=embeds, latents=inputs["noise"], num_inference_steps=steps, guidance_scale=6.0,
                      output_type="pt", generator=None).images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_unconditional_generator_runs(tiny_unet2d: Path) -> None:
    generator, schedule = build_generator(load_latent_pipeline(tiny_unet2d))
    assert [s.name for s in generator.input_specs()] == ["noise"]
    with torch.no_grad():
        image = generator(*generator.example_inputs().values())
    assert image.shape == (1, 3, 64, 64) and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
    assert schedule["latent_shape"] == [1, 4, 16, 16]
