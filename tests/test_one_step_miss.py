"""`cdx student finetune-decoder --latent-noise auto`: σ is the measured RMS miss of the student's one-step latents
from its teacher's DDIM latents on the same noise."""

from __future__ import annotations

import json
import shutil

import torch

from cdx.defaults import default_student, default_teacher
from cdx.distill.one_step_miss import MISS_SEED_OFFSET, measure_one_step_miss


def test_the_miss_pairs_each_one_step_latent_with_the_teachers_endpoint_from_the_same_noise():
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline
    from cdx.distill.sampling import consistency_latents, initial_noise, teacher_latents

    measured = measure_one_step_miss(default_student(), samples=6, teacher_steps=8, batch=4, show=False)
    assert measured["teacher"].endswith("fashion_teacher")  # found from the student's cdx.json

    student, teacher = load_latent_pipeline(default_student()), load_latent_pipeline(default_teacher())
    diffs = []
    for start, count in ((0, 4), (4, 2)):  # the batches the measurement drew, labels cycling over the classes
        labels = torch.arange(start, start + count) % 10
        noise = initial_noise(student, count, MISS_SEED_OFFSET + start)[0]
        one = consistency_latents(student.unet, student, TeacherConditioning(student, student.class_names), labels,
                                  steps=1, guidance=3.0, noise=noise)
        end = teacher_latents(teacher, TeacherConditioning(teacher, teacher.class_names), labels, steps=8,
                              guidance=3.0, noise=noise)
        diffs.append((one - end).reshape(-1))
    expected = float(torch.cat(diffs).pow(2).mean().sqrt())
    assert abs(measured["rms"] - expected) < 1e-4
    # Unpaired latents (another noise) sit ~√2 latent-std apart: the paired miss is a small fraction of that.
    assert 0.03 < measured["rms"] < 0.3


def test_auto_latent_noise_trains_at_the_measured_sigma_and_the_card_repeats_it(tmp_path):
    from cdx.distill.decoder_finetune import AdversarialDecoderTerm, finetune_student_decoder
    from cdx.distill.model_card import student_decoder_command

    record = finetune_student_decoder(default_student(), tmp_path / "s", steps=1, limit=64, batch=8, samples=0,
                                      adversarial=AdversarialDecoderTerm(weight=1.0), latent_noise="auto",
                                      miss_samples=4, show=False)
    measured = record["latent_noise_measured"]
    assert measured["samples"] == 4 and measured["teacher_steps"] == 50
    assert record["latent_noise"] == measured["rms"] > 0
    saved = json.loads((tmp_path / "s" / "cdx.json").read_text())["decoder_finetune"]
    assert saved["latent_noise"] == measured["rms"]
    assert f"--latent-noise {measured['rms']}" in student_decoder_command(saved, "in", "out")


def test_bad_latent_noise_and_a_student_without_a_teacher_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    from cli_run import run_cli

    code, line = run_cli(monkeypatch, capsys, "student", "finetune-decoder", "--out", tmp_path / "s", "--steps", "1",
                         "--samples", "0", "--latent-noise", "lots")
    assert code != 0 and "--latent-noise 'lots'" in line and "auto" in line
    orphan = tmp_path / "orphan"
    shutil.copytree(default_student(), orphan)
    info = json.loads((orphan / "cdx.json").read_text())
    info.pop("teacher")
    (orphan / "cdx.json").write_text(json.dumps(info))
    code, line = run_cli(monkeypatch, capsys, "student", "finetune-decoder", "--student", orphan, "--out",
                         tmp_path / "s", "--steps", "1", "--samples", "0", "--latent-noise", "auto")
    assert code != 0 and "names no teacher" in line and "--teacher" in line
    assert not (tmp_path / "s").exists()
