"""A student folder with two decoders: `vae/` fit to its one-step latents, `multistep_vae/` for 2+ steps. Every
sampler (cdx's eager one, plain diffusers, the exported graphs) must pick the decoder its step count calls for."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cdx.defaults import default_student
from cdx.distill.loading import MULTISTEP_VAE, load_latent_pipeline

LABELS = torch.tensor([0, 3, 5, 9])


@pytest.fixture(scope="module")
def student():
    parts = load_latent_pipeline(default_student())
    assert parts.multistep_vae is not None, "the committed student ships a multi-step decoder"
    return parts


def _weights(vae: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in vae.decoder.parameters()])


def test_the_committed_students_two_decoders_differ_and_each_step_count_gets_its_own(student):
    assert not torch.equal(_weights(student.vae), _weights(student.multistep_vae))
    assert student.decoder_for(1) is student.vae
    assert student.decoder_for(2) is student.multistep_vae and student.decoder_for(4) is student.multistep_vae


def test_eager_sampling_decodes_two_steps_with_the_multistep_decoder_and_one_step_with_vae(student):
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.sampling import consistency_latents, consistency_sample, decode_latents

    cond = TeacherConditioning(student, student.class_names)
    for steps, vae in ((1, student.vae), (2, student.multistep_vae)):
        latents = consistency_latents(student.unet, student, cond, LABELS, steps=steps, seed=3)
        with torch.no_grad():
            expected = decode_latents(vae, latents, student.latent_scaling_factor, student.latent_shift_factor)
        images = consistency_sample(student.unet, student, cond, LABELS, steps=steps, seed=3)
        torch.testing.assert_close(images, expected.float(), rtol=0, atol=0)


def test_plain_diffusers_loads_the_multistep_decoder_and_samples_what_cdx_samples(student):
    from diffusers import DiffusionPipeline

    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.sampling import consistency_sample

    pipe = DiffusionPipeline.from_pretrained(default_student(), trust_remote_code=True)
    assert pipe.multistep_vae is not None
    cond = TeacherConditioning(student, student.class_names)
    for steps in (1, 2):
        ours = consistency_sample(student.unet, student, cond, LABELS, steps=steps, seed=7)
        theirs = pipe(class_labels=LABELS, num_inference_steps=steps, generator=torch.Generator().manual_seed(7),
                      output_type="pt").images
        torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-6)


def test_exported_graphs_of_a_k_step_schedule_decode_with_that_step_counts_decoder(student):
    from cdx.distill.generator import OneStepGenerator, schedule_section
    from cdx.distill.graphs import build_components, graph_for_role

    for steps, vae in ((1, student.vae), (2, student.multistep_vae)):
        schedule = schedule_section(student, steps)
        assert OneStepGenerator(student, schedule).vae is vae
        assert build_components(OneStepGenerator(student, schedule))[1].vae is vae
        assert graph_for_role(student, schedule, "vae_decoder").vae is vae


def test_a_swapped_decoder_draws_every_step_count(student):
    import dataclasses

    from cdx.distill.decoder_swap import with_decoder

    tiny = Path(default_student()).parent / "fashion_tiny_decoder"
    swapped, _ = with_decoder(dataclasses.replace(student), tiny)
    assert swapped.multistep_vae is None and swapped.decoder_for(2) is swapped.vae


def _student_without_multistep(tmp_path: Path) -> Path:
    folder = tmp_path / "one_decoder"
    shutil.copytree(default_student(), folder, ignore=shutil.ignore_patterns(MULTISTEP_VAE))
    index = json.loads((folder / "model_index.json").read_text())
    index.pop(MULTISTEP_VAE)
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_student_decoder_fit_keeps_the_decoder_it_replaces_for_multistep_sampling(tmp_path):
    from cdx.atomic import sha256_file
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm, finetune_student_decoder

    source = _student_without_multistep(tmp_path)
    weights = "diffusion_pytorch_model.safetensors"
    fit = dict(steps=1, limit=64, batch=8, samples=0, lr=5e-3, adversarial=AdversarialDecoderTerm(weight=1.0),
               latent_noise=0.1, show=False)
    finetune_student_decoder(source, tmp_path / "fit", **fit)
    out = tmp_path / "fit"
    assert sha256_file(out / MULTISTEP_VAE / weights) == sha256_file(source / "vae" / weights)
    assert sha256_file(out / "vae" / weights) != sha256_file(source / "vae" / weights)
    assert json.loads((out / "model_index.json").read_text())[MULTISTEP_VAE] == ["diffusers", "AutoencoderKL"]
    parts = load_latent_pipeline(out)
    assert parts.decoder_for(2) is parts.multistep_vae and parts.decoder_for(1) is parts.vae

    # A second fit replaces the one-step decoder again and keeps the original multi-step one (not the first fit).
    finetune_student_decoder(out, tmp_path / "refit", **fit)
    assert sha256_file(tmp_path / "refit" / MULTISTEP_VAE / weights) == sha256_file(source / "vae" / weights)


def test_the_model_card_says_which_decoder_draws_which_step_count(tmp_path):
    from cdx.distill.model_card import write_model_card

    one = _student_without_multistep(tmp_path)
    assert "multistep_vae" not in write_model_card(one, "one decoder", "cdx ...").read_text()
    two = tmp_path / "two_decoders"
    shutil.copytree(default_student(), two)
    card = write_model_card(two, "two decoders", "cdx ...").read_text()
    assert "- decoders: `vae/` decodes one-step samples, `multistep_vae/` 2 or more steps" in card
