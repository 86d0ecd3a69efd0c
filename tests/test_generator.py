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


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_loop_is_diffusers_ddim_scheduler(prediction_type: str) -> None:
    """The teacher's DDIM loop (run on every runtime) steps exactly as diffusers' DDIMScheduler with cdx's settings."""
    from diffusers import DDIMScheduler

    from cdx.distill.loops import ddim_loop
    from cdx.distill.sampling import ddim_schedule
    from cdx.tiny_models import tiny_scheduler

    config = {**dict(tiny_scheduler().config), "prediction_type": prediction_type}
    scheduler = DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                                          timestep_spacing="trailing")
    scheduler.set_timesteps(4)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def model(latents: torch.Tensor, t: int) -> torch.Tensor:  # any deterministic function of (x, t)
        return torch.tanh(latents * 0.7 + t / 1000.0)

    theirs = x
    for t in scheduler.timesteps:
        theirs = scheduler.step(model(theirs, int(t)), t, theirs).prev_sample
    steps = ddim_schedule(config, 4)
    assert [s["timestep"] for s in steps] == [int(t) for t in scheduler.timesteps]
    ours = ddim_loop(lambda latents, step: model(latents, step["timestep"]), x, steps, prediction_type)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    as_numpy = ddim_loop(lambda latents, step: model(torch.from_numpy(latents), step["timestep"]).numpy(), x.numpy(),
                         steps, prediction_type)
    torch.testing.assert_close(torch.from_numpy(as_numpy), theirs, atol=1e-5, rtol=1e-5)


def test_classifier_free_guidance_broadcasts_a_per_sample_scale() -> None:
    from cdx.distill.loops import classifier_free_guidance

    u, c = torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)
    out = classifier_free_guidance(u, c, torch.tensor([1.0, 3.0]))
    assert out[0].unique().tolist() == [1.0] and out[1].unique().tolist() == [3.0]
    assert classifier_free_guidance(u, c, 2.0).unique().tolist() == [2.0]


def test_teacher_step_graph_is_the_eager_teacher_sampler() -> None:
    """The teacher graph the bench exports (one UNet call on [cond; null], CFG inside) + a DDIM loop over it reproduce
    the eager teacher sampler (two UNet calls) on the same initial latents."""
    import numpy as np

    from cdx import rng
    from cdx.defaults import ASSETS
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.graphs import DecoderGraph, TeacherStepGraph
    from cdx.distill.loops import run_teacher
    from cdx.distill.sampling import ddim_schedule, teacher_sample

    parts = load_latent_pipeline(ASSETS / "fashion_teacher")
    shape = (1, parts.latent_channels, 8, 8)
    step, decoder = TeacherStepGraph(parts, shape).eval(), DecoderGraph.of(parts, shape).eval()
    assert [s.name for s in step.input_specs()] == ["latents", "timestep", "class_label", "guidance_scale"]

    class Eager:  # a runner over an eager graph: named numpy in, named numpy out
        def __init__(self, graph: torch.nn.Module):
            self.graph = graph

        @torch.no_grad()
        def run(self, inputs: dict) -> dict:
            args = [torch.from_numpy(inputs[s.name]) for s in self.graph.input_specs()]
            return {self.graph.output_specs()[0].name: self.graph(*args).numpy()}

    noise = rng.normal(5, shape, 0)
    inputs = {"latents": noise, "class_label": np.array([3]), "guidance_scale": np.array([2.5], np.float32)}
    image = run_teacher(Eager(step), Eager(decoder), ddim_schedule(parts.scheduler_config, 4), inputs)
    cond = TeacherConditioning(parts, parts.class_names)
    eager = teacher_sample(parts, cond, torch.tensor([3]), steps=4, guidance=2.5, noise=torch.from_numpy(noise))
    torch.testing.assert_close(torch.from_numpy(image), eager, atol=1e-4, rtol=0)


def test_evaluation_sampler_and_exported_generator_are_one_sampler() -> None:
    """`consistency_sample` (distill's evaluation/preview sampler) and the generator every target exports agree."""
    from cdx.defaults import default_student
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.sampling import consistency_sample

    parts = load_latent_pipeline(default_student())
    generator, _ = build_generator(parts, num_steps=1)
    inputs = generator.example_inputs(seed=2, class_label=7, guidance_scale=2.0)
    with torch.no_grad():
        exported = generator(*inputs.values())
    sampled = consistency_sample(parts.unet, parts, TeacherConditioning(parts, parts.class_names), torch.tensor([7]),
                                 steps=1, guidance=2.0, noise=inputs["noise"])
    torch.testing.assert_close(sampled, exported, atol=1e-5, rtol=0)
