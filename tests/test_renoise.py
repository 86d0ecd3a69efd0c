"""A student's re-noising between steps: LCMScheduler's fresh noise, or the deterministic DDIM hop (TCD's γ = 0)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdx.defaults import default_student
from cdx.distill.loops import consistency_loop

LABELS = torch.tensor([1, 4, 7])


def _steps(alphas: list[float]) -> list[dict[str, float]]:
    return [{"alpha_cumprod": a, "timestep": i, "c_skip": 0.0, "c_out": 1.0} for i, a in enumerate(alphas)]


def test_the_ddim_hop_with_an_exact_denoiser_stays_on_one_noise_and_fresh_noise_does_not():
    """x_t = √ᾱ·x₀ + √(1-ᾱ)·ε with a denoiser that returns x₀: the DDIM hop keeps ε (the probability-flow ODE of a
    point mass), so every step sees √ᾱᵢ·x₀ + √(1-ᾱᵢ)·ε; fresh noise swaps ε for the step's draw."""
    rng = np.random.default_rng(0)
    x0, eps, fresh = (rng.standard_normal((2, 4, 8, 8)) for _ in range(3))
    alphas = [0.005, 0.3, 0.8]
    noise = alphas[0] ** 0.5 * x0 + (1 - alphas[0]) ** 0.5 * eps
    for mode, expected_noise in (("ddim", eps), ("fresh", fresh)):
        trace: list[np.ndarray] = []
        out = consistency_loop(lambda x, step: x0, noise, _steps(alphas), [fresh, fresh], trace, renoise_with=mode)
        np.testing.assert_allclose(out, x0)
        for latents, a in zip(trace[1:], alphas[1:], strict=True):
            np.testing.assert_allclose(latents, a**0.5 * x0 + (1 - a) ** 0.5 * expected_noise, atol=1e-12)
    with pytest.raises(ValueError, match="unknown re-noising"):
        consistency_loop(lambda x, step: x0, noise, _steps(alphas), renoise_with="sde")


@pytest.fixture(scope="module")
def student():
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline

    parts = load_latent_pipeline(default_student())
    return parts, TeacherConditioning(parts, parts.class_names)


def test_ddim_renoising_draws_no_fresh_noise_and_fresh_renoising_does(student):
    from cdx.distill.sampling import consistency_sample, initial_noise

    parts, cond = student
    noise = initial_noise(parts, len(LABELS), 5)[0]
    ddim = [consistency_sample(parts.unet, parts, cond, LABELS, steps=2, seed=s, noise=noise, renoise_with="ddim")
            for s in (1, 2)]
    fresh = [consistency_sample(parts.unet, parts, cond, LABELS, steps=2, seed=s, noise=noise) for s in (1, 2)]
    torch.testing.assert_close(ddim[0], ddim[1], rtol=0, atol=0)
    assert not torch.equal(fresh[0], fresh[1]) and not torch.equal(ddim[0], fresh[0])


def test_the_diffusers_pipeline_renoises_as_cdx_does(student):
    from diffusers import DiffusionPipeline

    from cdx.distill.sampling import consistency_sample

    parts, cond = student
    pipe = DiffusionPipeline.from_pretrained(default_student(), trust_remote_code=True)
    for steps in (2, 4):
        ours = consistency_sample(parts.unet, parts, cond, LABELS, steps=steps, seed=9, renoise_with="ddim")
        theirs = pipe(class_labels=LABELS, num_inference_steps=steps, generator=torch.Generator().manual_seed(9),
                      output_type="pt", renoise_with="ddim").images
        torch.testing.assert_close(theirs, ours, rtol=0, atol=2e-5)
    with pytest.raises(ValueError, match="renoise_with"):
        pipe(class_labels=LABELS, num_inference_steps=2, renoise_with="sde")


def test_evaluate_offers_ddim_rows_only_on_request():
    from cdx.benchmarks.distill_eval import parse_rows, spec_key
    from cdx.errors import InputError

    assert [spec_key(s) for s in parse_rows("")] == ["teacher50", "teacher8", "teacher4", "teacher2", "teacher1",
                                                     "student4", "student2", "student1"]
    chosen = parse_rows("student2-ddim,student2")
    assert [(spec_key(s), s.renoise_with) for s in chosen] == [("student2", "fresh"), ("student2-ddim", "ddim")]
    with pytest.raises(InputError, match="student2-ddim"):
        parse_rows("student3-ddim")


def test_a_two_step_ddim_export_has_no_step_noise_input_and_draws_what_the_eager_sampler_draws(student, tmp_path):
    from cdx.convert.export import ConvertOptions, convert
    from cdx.convert.golden import read_golden, unstack
    from cdx.distill.sampling import consistency_sample
    from cdx.manifest import load_manifest
    from cdx.runtimes import load_runner

    out = tmp_path / "ddim2"
    convert(default_student(), out, ConvertOptions(target="onnx", steps=2, renoise_with="ddim", seeds=(0, 1)))
    manifest = load_manifest(out)
    assert manifest["schedule"]["renoise_with"] == "ddim" and len(manifest["schedule"]["steps"]) == 2
    model = manifest["models"][0]
    assert [i["name"] for i in model["inputs"]] == ["noise", "class_label", "guidance_scale"]
    assert model["parity"]["passed"]
    runner = load_runner(out, model["name"], runtime="onnxruntime")
    inputs, _ = read_golden(out, runner.model)
    parts, cond = student
    for sample in unstack(inputs):
        image = runner.run(sample)["image"]
        eager = consistency_sample(parts.unet, parts, cond, torch.from_numpy(sample["class_label"]), steps=2,
                                   guidance=float(sample["guidance_scale"][0]), noise=torch.from_numpy(sample["noise"]),
                                   renoise_with="ddim")
        assert np.abs(image - eager.numpy()).max() <= 1e-4


def test_convert_refuses_ddim_renoising_without_a_second_step_or_an_unknown_mode(tmp_path, monkeypatch, capsys):
    from cli_run import run_cli

    code, line = run_cli(monkeypatch, capsys, "convert", "--target", "onnx", "--renoise", "ddim", "-o", tmp_path / "a")
    assert code != 0 and "--renoise ddim" in line and "--steps 2" in line
    code, line = run_cli(monkeypatch, capsys, "convert", "--target", "onnx", "--steps", "2", "--renoise", "sde",
                         "-o", tmp_path / "b")
    assert code != 0 and "unknown --renoise 'sde'" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_components_of_a_text_conditioned_rgb_student_loop_the_ddim_hop_as_its_generator_does(tiny_sd, tmp_path):
    """An SD-shaped, text-conditioned, RGB student (`cdx teacher tiny`): the components export with the hop, looped
    over ONNX Runtime with the manifest's constants and `renoise_with`, gives the eager generator's image."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.convert.golden import eager_outputs, seeded_batches
    from cdx.distill.generator import build_generator
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.loops import run_components
    from cdx.manifest import load_manifest
    from cdx.runtimes import load_runner

    out = tmp_path / "components"
    convert(tiny_sd, out, ConvertOptions(target="onnx", mode="components", steps=2, renoise_with="ddim", seeds=(0,)))
    schedule = load_manifest(out)["schedule"]
    assert schedule["renoise_with"] == "ddim"
    step = load_runner(out, "unet_step_16x16", runtime="onnxruntime")
    decoder = load_runner(out, "vae_decoder_16x16", runtime="onnxruntime")
    parts = load_latent_pipeline(tiny_sd)
    generator, _ = build_generator(parts, num_steps=2, renoise_with="ddim")
    assert "step_noise" not in [s.name for s in generator.input_specs()]
    fresh, _ = build_generator(parts, num_steps=2)
    batches = seeded_batches(generator, [3, 4], None)
    for batch, reference in zip(batches, eager_outputs(generator, batches), strict=True):
        assert reference["image"].shape[1] == 3  # RGB
        image = run_components(step, decoder, schedule["steps"], batch, renoise_with=schedule["renoise_with"])
        assert np.abs(image - reference["image"]).max() <= 1e-4
    with_noise = seeded_batches(fresh, [3], None)[0]
    assert np.abs(eager_outputs(fresh, [with_noise])[0]["image"] - eager_outputs(generator, batches[:1])[0]["image"]).max() > 1e-3
