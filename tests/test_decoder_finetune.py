"""`cdx teacher finetune-decoder`: the decoder learns, the encoder (and so the latent space) does not move."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL

from cdx.distill.decoder_finetune import finetune_decoder, finetune_pipeline_decoder, reconstruction_rmse
from cdx.errors import InputError
from cdx.tiny_models import tiny_vae


def _images(count: int = 64, size: int = 32) -> torch.Tensor:
    """Smooth seeded RGB blobs in [-1, 1]: learnable in a few steps, unlike white noise."""
    g = torch.Generator().manual_seed(3)
    coarse = torch.rand(count, 3, 4, 4, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def _small_vae() -> AutoencoderKL:
    vae = tiny_vae(seed=0)
    vae.register_to_config(sample_size=32)
    return vae


def test_decoder_finetune_lowers_reconstruction_error_and_leaves_the_encoder_unchanged():
    vae, images = _small_vae(), _images(count=32, size=16)
    encoder_before = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_quant"))}
    decoder_before = vae.decoder.conv_out.weight.clone()
    latents_before = vae.encode(images).latent_dist.mean.detach()
    rmse_before = reconstruction_rmse(vae, images)
    record = finetune_decoder(vae, images, steps=20, lr=3e-3, batch=8, show=False)
    assert reconstruction_rmse(vae, images) < 0.9 * rmse_before
    for key, value in vae.state_dict().items():
        if key in encoder_before:
            assert torch.equal(value, encoder_before[key]), key
    assert not torch.equal(vae.decoder.conv_out.weight, decoder_before)
    assert torch.equal(vae.encode(images).latent_dist.mean, latents_before)  # same latent space for every UNet
    assert record["steps"] == 20 and record["images"] == 32


def test_finetune_refuses_a_student_with_another_vae_and_writes_nothing(tmp_path):
    teacher, student = tmp_path / "teacher", tmp_path / "student"
    _small_vae().save_pretrained(teacher / "vae", safe_serialization=True)
    other = _small_vae()
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(1.0)
    other.save_pretrained(student / "vae", safe_serialization=True)
    with pytest.raises(InputError, match="not the teacher's"):
        finetune_pipeline_decoder(teacher, tmp_path / "out", steps=1, data=tmp_path, students=((student, tmp_path / "s2"),),
                                  show=False)
    assert not (tmp_path / "out").exists() and not (tmp_path / "s2").exists()


def test_finetune_pipeline_writes_teacher_and_student_copies_with_the_record(tmp_path):
    from PIL import Image

    teacher, student, data = tmp_path / "teacher", tmp_path / "student", tmp_path / "data" / "blobs"
    _small_vae().save_pretrained(teacher / "vae", safe_serialization=True)
    (teacher / "cdx.json").write_text(json.dumps({"kind": "teacher"}), "utf-8")
    (teacher / "unet").mkdir()
    (teacher / "unet" / "marker.txt").write_text("unet", "utf-8")
    shutil.copytree(teacher / "vae", student / "vae")
    data.mkdir(parents=True)
    for i, img in enumerate(_images(count=16)):
        array = ((img.permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
        Image.fromarray(array).save(data / f"{i}.png")
    record = finetune_pipeline_decoder(teacher, tmp_path / "t2", steps=2, data=data.parent, limit=None, batch=8,
                                       students=((student, tmp_path / "s2"),), show=False)
    for out in (tmp_path / "t2", tmp_path / "s2"):
        assert json.loads((out / "cdx.json").read_text("utf-8"))["decoder_finetune"]["steps"] == 2
        AutoencoderKL.from_pretrained(out / "vae")
    assert (tmp_path / "t2" / "unet" / "marker.txt").read_text("utf-8") == "unet"
    assert record["images"] == 16 and "rmse_first_1000_after" in record


def test_adaptive_balance_is_the_ratio_of_the_two_gradient_norms_at_the_last_layer():
    from cdx.distill.decoder_finetune import adaptive_balance

    last = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    reconstruction = (3.0 * last).sum()  # gradient (3, 3): norm 3√2
    adversarial = (last ** 2).sum()  # gradient 2·last = (2, 4): norm √20
    balance = adaptive_balance(reconstruction, adversarial, last)
    assert balance.item() == pytest.approx(3 * 2 ** 0.5 / (20 ** 0.5 + 1e-4), rel=1e-6)
    assert not balance.requires_grad


def test_adversarial_decoder_finetune_trains_the_critic_changes_the_decoder_and_keeps_the_encoder():
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm

    images = _images(count=32, size=16)
    plain, adversarial = _small_vae(), _small_vae()
    encoder_before = {k: v.clone() for k, v in adversarial.state_dict().items()
                      if not k.startswith(("decoder.", "post_quant"))}
    finetune_decoder(plain, images, steps=6, lr=3e-3, batch=8, show=False)
    record = finetune_decoder(adversarial, images, steps=6, lr=3e-3, batch=8, show=False,
                              adversarial=AdversarialDecoderTerm(weight=0.5, start=2))
    # same seed and batches: only the GAN term (from step 3 on) can make the two decoders differ
    assert not torch.equal(plain.decoder.conv_out.weight, adversarial.decoder.conv_out.weight)
    for key, value in adversarial.state_dict().items():
        if key in encoder_before:
            assert torch.equal(value, encoder_before[key]), key
    assert record["adversarial_weight"] == 0.5 and record["adversarial_start"] == 2 and record["critic_loss"] > 0


def test_adversarial_term_before_its_start_leaves_the_decoder_as_the_plain_finetune():
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm

    images = _images(count=32, size=16)
    plain, delayed = _small_vae(), _small_vae()
    finetune_decoder(plain, images, steps=4, lr=3e-3, batch=8, show=False)
    finetune_decoder(delayed, images, steps=4, lr=3e-3, batch=8, show=False,
                     adversarial=AdversarialDecoderTerm(weight=0.5, start=4))  # the critic trains, the term never acts
    assert torch.equal(plain.decoder.conv_out.weight, delayed.decoder.conv_out.weight)


@pytest.mark.parametrize("field, value, flag", [("weight", -0.1, "--adversarial-weight"), ("start", -1, "--adversarial-start"),
                                                ("critic_lr", 0.0, "--critic-lr"), ("r1", -1.0, "--critic-r1")])
def test_adversarial_decoder_term_refuses_bad_settings(field, value, flag):
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm

    with pytest.raises(InputError, match=flag):
        AdversarialDecoderTerm(**{field: value})


def test_student_sample_latents_are_the_students_own_one_step_samples_on_seeds_evaluate_never_uses():
    from cdx.defaults import default_student
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.decoder_finetune import SAMPLE_SEED_OFFSET, student_sample_latents
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sampling import consistency_sample, decode_latents

    student = default_student()
    latents = student_sample_latents(Path(student), count=5, batch=3, show=False)
    parts = load_latent_pipeline(student)
    cond = TeacherConditioning(parts, parts.class_names)
    expected = torch.cat([
        consistency_sample(parts.unet, parts, cond, torch.tensor([0, 1, 2]), guidance=parts.default_guidance,
                           seed=SAMPLE_SEED_OFFSET),
        consistency_sample(parts.unet, parts, cond, torch.tensor([3, 4]), guidance=parts.default_guidance,
                           seed=SAMPLE_SEED_OFFSET + 3),
    ])
    with torch.no_grad():
        images = decode_latents(parts.vae, latents, 1.0)  # already in the VAE's space
    assert latents.shape == (5, parts.latent_channels, 8, 8)
    assert torch.allclose(images, expected, atol=1e-5)
    evaluate_seed_0 = consistency_sample(parts.unet, parts, cond, torch.tensor([0, 1, 2]),
                                         guidance=parts.default_guidance, seed=0)
    assert not torch.allclose(images[:3], evaluate_seed_0, atol=1e-2)


def test_student_samples_change_the_decoder_through_the_critic_and_need_it():
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm

    images = _images(count=32, size=16)
    term = AdversarialDecoderTerm(weight=0.5)
    with_samples, without = _small_vae(), _small_vae()
    samples = torch.randn(16, int(with_samples.config.latent_channels), 4, 4, generator=torch.Generator().manual_seed(1))
    finetune_decoder(without, images, steps=4, lr=3e-3, batch=8, show=False, adversarial=AdversarialDecoderTerm(0.5))
    record = finetune_decoder(with_samples, images, steps=4, lr=3e-3, batch=8, show=False, adversarial=term,
                              samples=samples)
    assert not torch.equal(with_samples.decoder.conv_out.weight, without.decoder.conv_out.weight)
    assert record["student_samples"] == 16
    with pytest.raises(InputError, match="adversarial-weight"):
        finetune_decoder(_small_vae(), images, steps=1, batch=8, show=False, samples=samples)


def test_student_finetune_decoder_without_the_critic_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from cli_run import run_cli

    code, line = run_cli(monkeypatch, capsys, "student", "finetune-decoder", "--out", tmp_path / "s",
                         "--adversarial-weight", "0", "--steps", "1")
    assert code != 0 and "--adversarial-weight" in line
    code, line = run_cli(monkeypatch, capsys, "student", "finetune-decoder", "--student", tmp_path / "missing",
                         "--out", tmp_path / "s", "--steps", "1")
    assert code != 0 and "missing" in line
    assert not (tmp_path / "s").exists()


def _first_decoded_latents(vae: AutoencoderKL, images: torch.Tensor, **options) -> torch.Tensor:
    """The latents the fine-tune's first step hands the decoder (one step, seed 0)."""
    seen: list[torch.Tensor] = []
    decode = vae.decode

    def recording(latents: torch.Tensor, *args, **kwargs):
        seen.append(latents.detach().clone())
        return decode(latents, *args, **kwargs)

    vae.decode = recording  # type: ignore[method-assign]
    try:
        finetune_decoder(vae, images, steps=1, lr=1e-6, batch=8, show=False, **options)
    finally:
        del vae.decode
    return seen[0]


def test_latent_noise_widens_the_training_latents_by_sigma_in_the_diffusion_space():
    """Same draws, σ added in quadrature to the posterior's spread: each latent's offset from the posterior mean
    grows by exactly sqrt(std² + (σ / scaling_factor)²) / std, and σ = 0 is the plain fine-tune."""
    from cdx.distill.teacher import posterior_moments

    images = _images(count=16, size=16)
    vae = _small_vae()
    vae.register_to_config(scaling_factor=0.5)
    mean, std = posterior_moments(vae, images)
    plain = _first_decoded_latents(_small_vae(), images)
    noisy = _first_decoded_latents(vae, images, latent_noise=0.2)
    assert torch.equal(_first_decoded_latents(_small_vae(), images, latent_noise=0.0), plain)
    idx = torch.randint(0, len(images), (8,), generator=torch.Generator().manual_seed(0))
    ratio = (noisy - mean[idx]) / (plain - mean[idx])
    torch.testing.assert_close(ratio, (std[idx] ** 2 + 0.4**2).sqrt() / std[idx], atol=1e-3, rtol=1e-3)


def test_negative_latent_noise_is_refused_in_one_line():
    with pytest.raises(InputError, match=r"^--latent-noise -0\.1: must be >= 0$"):
        finetune_decoder(_small_vae(), _images(count=16, size=16), steps=1, batch=8, show=False, latent_noise=-0.1)


def test_student_decoder_fit_by_latent_noise_alone_records_it_and_its_card_command_repeats_it(tmp_path, monkeypatch):
    """`--samples 0 --latent-noise σ`: no student samples are drawn, the record says so (`student_samples` 0, which
    still marks the student's own decoder fit) and carries σ, and the model card's command line gives both back; the
    folder's sample grid is drawn again with the new decoder (the copied one showed the old decoder's images)."""
    import json

    from cdx.defaults import default_student
    from cdx.distill import decoder_finetune as module
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm, finetune_student_decoder
    from cdx.distill.model_card import student_decoder_command

    def no_samples(*args, **kwargs):
        raise AssertionError("--samples 0 drew student samples")

    monkeypatch.setattr(module, "student_sample_latents", no_samples)
    from cdx.distill.stage_folder import redraw_sample_grid

    finetune_student_decoder(default_student(), tmp_path / "s", steps=1, limit=64, batch=8, samples=0, lr=5e-3,
                             adversarial=AdversarialDecoderTerm(weight=1.0), latent_noise=0.1, show=False)
    grid = (tmp_path / "s" / "sample_grid.png").read_bytes()
    assert grid != (Path(default_student()) / "sample_grid.png").read_bytes()
    assert grid == redraw_sample_grid(tmp_path / "s", json.loads((tmp_path / "s" / "cdx.json").read_text())).read_bytes()
    record = json.loads((tmp_path / "s" / "cdx.json").read_text())["decoder_finetune"]
    assert record["student_samples"] == 0 and record["latent_noise"] == 0.1
    command = student_decoder_command(record, "in", "out")
    assert "--samples 0" in command and "--latent-noise 0.1" in command and "--adversarial-weight 1.0" in command


def test_student_decoder_fit_with_neither_samples_nor_latent_noise_is_one_line_and_writes_nothing(tmp_path, monkeypatch,
                                                                                                   capsys):
    from cli_run import run_cli

    code, line = run_cli(monkeypatch, capsys, "student", "finetune-decoder", "--out", tmp_path / "s", "--steps", "1",
                         "--samples", "0")
    assert code != 0 and "--samples 0 without --latent-noise" in line
    code, line = run_cli(monkeypatch, capsys, "student", "finetune-decoder", "--out", tmp_path / "s", "--steps", "1",
                         "--samples", "-1", "--latent-noise", "0.1")
    assert code != 0 and "--samples -1: must be >= 0" in line
    assert not (tmp_path / "s").exists()
