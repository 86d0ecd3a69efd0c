"""Issue 12: `cdx distill --export-ema-decay` saves a slow EMA of the student (diffusers' EMAModel with its warm-up)
instead of the consistency target."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distill_helpers import (
    assert_refused_in_one_line,
    assert_same_weights,
    small_distiller,
    straight_and_resumed,
    student_weights,
)
from safetensors.torch import load_file

from cdx.distill.data import FASHION_MNIST_CLASSES
from cdx.distill.distiller import DistillConfig


def _trainable(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_the_saved_student_is_the_warmed_up_average_of_the_students_steps(tmp_path: Path) -> None:
    """By hand: e₁ = θ₁, eₙ = dₙ·eₙ₋₁ + (1 − dₙ)·θₙ with dₙ = min(μ, n / (n + 9)); the folder holds eₙ, not the
    consistency target."""
    decay, steps = 0.9, 3
    d = small_distiller(tmp_path / "work", steps=steps, lr=1e-3, export_ema_decay=decay)
    expected: list[torch.Tensor] | None = None
    for n in range(1, steps + 1):
        d.run(show=False, stop_at=n)
        theta = student_weights(d)
        rate = 0.0 if n == 1 else min(decay, n / (n + 9))
        expected = theta if expected is None else [rate * e + (1 - rate) * t for e, t in zip(expected, theta, strict=True)]
    assert expected is not None
    exported = _trainable(d.exported_network())
    for got, want in zip(exported, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(e, t) for e, t in zip(exported, _trainable(d.target), strict=True))

    d.save_student(tmp_path / "student", 0.0, list(FASHION_MNIST_CLASSES))
    saved = load_file(tmp_path / "student" / "unet" / "diffusion_pytorch_model.safetensors")
    by_name = dict(d.exported_network().named_parameters())
    assert all(torch.equal(saved[name], by_name[name]) for name in by_name)


def test_without_the_option_the_consistency_target_is_saved(tmp_path: Path) -> None:
    d = small_distiller(tmp_path)
    assert d.export_ema is None and d.exported_network() is d.target


def test_resume_with_the_export_ema_is_bit_identical(tiny_sd: Path, tmp_path: Path) -> None:
    """A text teacher; 4 steps straight vs 2 + resume + 2: the export EMA's weights and its update counter resume."""
    options = {"steps": 4, "checkpoint_every": 2, "export_ema_decay": 0.99, "lr": 1e-3}
    straight, resumed = straight_and_resumed(tmp_path, tiny_sd, options)
    assert resumed.history == straight.history
    assert resumed.export_ema.scalars() == straight.export_ema.scalars()
    assert_same_weights([(straight.target, resumed.target),
                         (straight.exported_network(), resumed.exported_network())])


@pytest.mark.parametrize(("overrides", "message"), [
    ({"export_ema_decay": 1.0}, "--export-ema-decay 1.0: must be in [0, 1)"),
    ({"export_ema_decay": -0.5}, "--export-ema-decay -0.5: must be in [0, 1)"),
])
def test_bad_export_ema_decay_is_one_line(overrides: dict, message: str) -> None:
    assert_refused_in_one_line(overrides, message)


def test_the_model_card_command_carries_the_export_ema_decay() -> None:
    from cdx.distill.model_card import distill_command

    assert "--export-ema-decay 0.999" in distill_command(DistillConfig(export_ema_decay=0.999).as_dict(), "out/s")
    assert "--export-ema-decay" not in distill_command(DistillConfig().as_dict(), "out/s")


def test_a_lora_run_saves_the_averaged_adapters(tiny_sd: Path, tmp_path: Path) -> None:
    """--lora-rank: the EMA covers the adapters only, and the saved LoRA is the averaged one, not the target's."""
    from cdx.distill.lora import LORA_WEIGHTS, lora_state_dict

    d = small_distiller(tmp_path / "work", tiny_sd, 64, lora_rank=4, export_ema_decay=0.5, lr=1e-2)
    d.run(show=False)
    assert set(d.export_ema.names) == set(d.trainable) and all("lora" in n for n in d.trainable)
    averaged, target = lora_state_dict(d.exported_network()), lora_state_dict(d.target)
    assert any(not torch.equal(averaged[k], target[k]) for k in averaged)
    d.save_student(tmp_path / "lora", 0.0, ["an image"])
    saved = load_file(tmp_path / "lora" / LORA_WEIGHTS)
    assert len(saved) == len(averaged)
    assert sorted(v.sum().item() for v in saved.values()) == pytest.approx(sorted(v.sum().item() for v in averaged.values()))
