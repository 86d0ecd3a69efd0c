"""`cdx distill-decoder` on a tiny random VAE: the pixel loss falls, the folder is a real AutoencoderTiny, and
`cdx convert --decoder` builds a generator that passes its own parity gate and records its drift vs the full decoder;
bad decoder folders are one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_run import run_cli

from cdx.distill.data import ImageDataset

STEPS = 30


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cdx.tiny_models import build_tiny_class_pipeline

    return build_tiny_class_pipeline(tmp_path_factory.mktemp("models") / "student")


@pytest.fixture(scope="module")
def trained(student: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny decoder distilled for a handful of steps (the adversarial term switched on halfway)."""
    from cdx.distill.decoder import DecoderDistillConfig, distill_decoder

    generator = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, 16, 16, generator=generator) * 2 - 1
    data = ImageDataset(images, torch.arange(64) % 4, ["a", "b", "c", "d"])
    config = DecoderDistillConfig(steps=STEPS, batch_size=8, lr=3e-3, width=8, depth=1, checkpoint_every=STEPS,
                                  adversarial_weight=0.05, adversarial_start=STEPS // 2, validation_size=4)
    out = tmp_path_factory.mktemp("decoders") / "tiny"
    return out, distill_decoder(student, out, config, data=data, show=False)


def test_pixel_loss_falls_and_every_loss_term_runs(trained: tuple[Path, dict]) -> None:
    history = trained[1]["history"]
    assert len(history) == STEPS
    first = np.mean([h["pixel"] for h in history[:5]])
    last = np.mean([h["pixel"] for h in history[-5:]])
    assert last < 0.7 * first, (first, last)
    assert "encoder" in history[0] and "critic" not in history[0]
    assert "critic" in history[-1] and "adversarial" in history[-1]  # from adversarial_start on


def test_folder_loads_with_autoencoder_tiny_and_decodes_like_the_trained_model(trained: tuple[Path, dict],
                                                                                student: Path) -> None:
    from diffusers import AutoencoderTiny

    from cdx.distill.decoder_swap import with_decoder
    from cdx.distill.loading import load_latent_pipeline

    folder, result = trained
    tiny = AutoencoderTiny.from_pretrained(folder)
    assert float(tiny.config.scaling_factor) == 1.0 and tiny.config.latent_channels == 4
    parts, record = with_decoder(load_latent_pipeline(student), folder)
    assert parts.vae_scale_factor == 2 and parts.latent_scaling_factor == 1.0
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(tiny.decode(latents).sample, parts.vae.decode(latents).sample)
    info = json.loads((folder / "cdx.json").read_text())
    assert info["kind"] == "tiny_decoder" and info["steps"] == STEPS
    assert set(info["drift"]) >= {"image_latents", "student_samples"}
    card = (folder / "README.md").read_text()
    assert "cdx distill-decoder" in card and "--width 8" in card and "PSNR" in card
    assert record["num_parameters"] == info["decoder_parameters"] == result["info"]["decoder_parameters"]
    assert info["teacher_decoder_sha256"] == record["distilled_from_decoder_sha256"] == record["student_decoder_sha256"]
    assert record["matches_student_decoder"] is True


def test_convert_with_decoder_passes_the_gate_and_records_the_drift(trained: tuple[Path, dict], student: Path,
                                                                    tmp_path: Path) -> None:
    from cdx.atomic import sha256_file
    from cdx.convert.export import ConvertOptions, convert
    from cdx.distill.decoder_swap import generator_drift, with_decoder
    from cdx.distill.generator import build_generator
    from cdx.distill.loading import load_latent_pipeline
    from cdx.golden_io import read_golden
    from cdx.manifest import load_manifest
    from cdx.runtimes import load_runner

    folder = trained[0]
    out = tmp_path / "onnx"
    convert(student, out, ConvertOptions(target="onnx", seeds=(0, 1), decoder=str(folder)))
    data = load_manifest(out)
    model = data["models"][0]
    assert model["parity"]["passed"] and model["parity"]["checked"] == "numeric"
    decoder = data["source"]["decoder"]
    assert decoder["class"] == "AutoencoderTiny"
    assert decoder["sha256"] == sha256_file(folder / "diffusion_pytorch_model.safetensors")
    assert data["source"]["vae_class"] == "AutoencoderKL" and decoder["replaces"]["class"] == "AutoencoderKL"
    drift = decoder["drift_vs_full_decoder"]["8x8"]
    # the recorded drift is the full-vs-tiny eager generator on the golden inputs, recomputed here
    full = load_latent_pipeline(student)
    tiny_parts, _ = with_decoder(load_latent_pipeline(student), folder)
    generator, schedule = build_generator(tiny_parts)
    inputs, outputs = read_golden(out, model)
    batches = [{k: v[i : i + 1] for k, v in inputs.items()} for i in range(2)]
    again = generator_drift(full, generator, schedule, batches)
    assert drift["psnr_db"] == pytest.approx(again["psnr_db"], abs=1e-6) and drift["seeds"] == 2
    assert np.isfinite(drift["psnr_db"]) and 0 < drift["psnr_db"] < 60  # a random-ish tiny decoder: not the full one
    # the eager runner rebuilds the generator with the same tiny decoder: it reproduces the golden images
    eager = load_runner(out, model["name"], runtime="torch")
    got = eager.run(batches[0])["image"]
    assert np.abs(got - outputs["image"][:1]).max() <= 1e-6


def _student_with_changed_vae(student: Path, out: Path, part: str) -> Path:
    """A copy of `student` whose VAE differs in one tensor of its `part` ("decoder" or "encoder")."""
    import shutil

    from diffusers import AutoencoderKL

    shutil.copytree(student, out)
    vae = AutoencoderKL.from_pretrained(out / "vae")
    with torch.no_grad():
        getattr(vae, part).conv_out.bias.add_(0.1)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    return out


def test_decoder_fingerprint_covers_the_decoder_and_not_the_encoder(student: Path, tmp_path: Path) -> None:
    from cdx.distill.decoder_swap import vae_decoder_sha256
    from cdx.distill.loading import load_latent_pipeline

    original = vae_decoder_sha256(load_latent_pipeline(student).vae)
    encoder = _student_with_changed_vae(student, tmp_path / "encoder", "encoder")
    decoder = _student_with_changed_vae(student, tmp_path / "decoder", "decoder")
    assert vae_decoder_sha256(load_latent_pipeline(encoder).vae) == original
    assert vae_decoder_sha256(load_latent_pipeline(decoder).vae) != original


def test_decoder_fingerprint_reads_scalar_and_bfloat16_tensors() -> None:
    """Any VAE a user brings: a BatchNorm's 0-dim counter and bf16 weights are hashed by value, not refused."""
    from torch import nn

    from cdx.distill.decoder_swap import vae_decoder_sha256

    vae = nn.Module()
    vae.decoder = nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).to(torch.bfloat16)
    first = vae_decoder_sha256(vae)
    vae.decoder[1].num_batches_tracked += 1
    assert vae_decoder_sha256(vae) != first


def test_convert_warns_when_the_decoder_imitates_another_vae(trained: tuple[Path, dict], student: Path,
                                                             tmp_path: Path) -> None:
    """A tiny decoder distilled before the student's VAE decoder changed (a fine-tune): one warning line, and the
    manifest records the mismatch; with the VAE it was distilled from there is no warning."""
    from cdx.convert.export import ConvertOptions, convert
    from cdx.manifest import load_manifest

    changed = _student_with_changed_vae(student, tmp_path / "changed", "decoder")
    messages: list[str] = []
    convert(changed, tmp_path / "onnx", ConvertOptions(target="onnx", seeds=(0,), decoder=str(trained[0])),
            progress=messages.append)
    warnings = [m for m in messages if m.startswith("warning:")]
    assert len(warnings) == 1 and str(trained[0]) in warnings[0] and "cdx distill-decoder --model" in warnings[0]
    record = load_manifest(tmp_path / "onnx")["source"]["decoder"]
    assert record["matches_student_decoder"] is False
    assert record["distilled_from_decoder_sha256"] == json.loads((trained[0] / "cdx.json").read_text())[
        "teacher_decoder_sha256"]
    messages.clear()
    convert(student, tmp_path / "onnx_same", ConvertOptions(target="onnx", seeds=(0,), decoder=str(trained[0])),
            progress=messages.append)
    assert not [m for m in messages if m.startswith("warning:")]
    assert load_manifest(tmp_path / "onnx_same")["source"]["decoder"]["matches_student_decoder"] is True


def _wrong_channels(folder: Path) -> Path:
    from diffusers import AutoencoderTiny

    AutoencoderTiny(encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8), num_encoder_blocks=(1, 1),
                    num_decoder_blocks=(1, 1), latent_channels=3).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("case", ["missing", "not_tiny", "latent_channels"])
def test_bad_decoder_folder_is_one_line_and_writes_nothing(case: str, student: Path, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    decoder = {"missing": lambda: tmp_path / "nowhere", "not_tiny": lambda: student / "vae",
               "latent_channels": lambda: _wrong_channels(tmp_path / "tiny3")}[case]()
    out = tmp_path / "out"
    code, line = run_cli(monkeypatch, capsys, "convert", student, "--decoder", decoder, "-o", out)
    expected = {"missing": "no such folder", "not_tiny": "expected 'AutoencoderTiny'",
                "latent_channels": "decoder takes 3 latent channels, the student"}[case]
    assert code == 1 and str(decoder) in line and expected in line, line
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_bad_distill_decoder_option_is_one_line(student: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    out = tmp_path / "tiny"
    code, line = run_cli(monkeypatch, capsys, "distill-decoder", "--model", student, "--pixel-loss", "l3", "-o", out)
    assert code == 1 and "--pixel-loss 'l3'" in line and "l1+l2" in line
    assert not out.exists()
