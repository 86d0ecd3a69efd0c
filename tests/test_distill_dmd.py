"""Issue 12: the distribution-matching term of `cdx distill` (DMD: a fake denoiser trained on the one-step outputs
against the teacher's guided denoiser)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distill_helpers import (
    assert_refused_in_one_line,
    assert_same_optimizer_state,
    assert_same_weights,
    small_distiller,
    straight_and_resumed,
    student_weights,
)

from cdx.distill.distiller import DistillConfig
from cdx.distill.distribution_matching import distribution_matching_direction, distribution_matching_loss, noised


def _gaussian_x0(std: float, acp: torch.Tensor):
    """The exact posterior-mean denoiser E[x₀ | x_t] of N(0, std² I) data: √ᾱ·std²·x_t / (ᾱ·std² + 1 − ᾱ)."""
    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = acp[t].reshape(-1, 1, 1, 1)
        return a.sqrt() * std**2 * x_t / (a * std**2 + 1 - a)
    return denoise


@pytest.mark.parametrize("start_std", [2.0, 0.5])
def test_descent_on_the_direction_moves_gaussian_samples_to_the_teachers_distribution(start_std: float) -> None:
    """Closed form: teacher data N(0, 1), generator outputs N(0, s²) with the fake denoiser exact for them. Moving
    the samples against the DMD direction must bring s to 1 from either side (the sign and the fixed point)."""
    acp = torch.linspace(0.999, 0.01, 1000)
    rng = torch.Generator().manual_seed(0)
    x = start_std * torch.randn(256, 4, 4, 4, generator=rng)
    real = _gaussian_x0(1.0, acp)
    for _ in range(300):
        std = float(x.std())
        t = torch.randint(20, 980, (len(x),), generator=rng)
        x_t, _ = noised(x, t, acp, rng)
        direction = distribution_matching_direction(x, real(x_t, t), _gaussian_x0(std, acp)(x_t, t))
        x = x - 0.05 * direction
    assert abs(float(x.std()) - 1.0) < 0.1, float(x.std())
    assert abs(float(x.std()) - 1.0) < 0.5 * abs(start_std - 1.0)


def test_the_loss_gradient_is_the_direction_over_numel() -> None:
    x = torch.randn(3, 2, 4, 4, requires_grad=True)
    direction = torch.randn(3, 2, 4, 4)
    (grad,) = torch.autograd.grad(distribution_matching_loss(x, direction), x)
    assert torch.allclose(grad, direction / x.numel())


def test_the_direction_is_normalised_per_sample() -> None:
    x = torch.zeros(2, 1, 2, 2)
    real = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 2.0)])
    fake = real + 1.0
    direction = distribution_matching_direction(x, real, fake)
    assert torch.allclose(direction[0], torch.full((1, 2, 2), 2.0)) and torch.allclose(direction[1], torch.full((1, 2, 2), 0.5))


def test_unguided_the_term_is_zero_until_the_fake_denoiser_leaves_the_teacher(tmp_path: Path) -> None:
    """At g = 1 the fake denoiser starts as the teacher: the term is 0 (to rounding: the two copies' kernels may
    round differently) and the loss is the regression-only one, while the fake denoiser itself learns."""
    options = {"ode_regression_weight": 1.0, "lr": 1e-3, "guidance_range": (1.0, 1.0)}
    reference = small_distiller(tmp_path / "ref", **options)
    batch = reference.sample_batch()
    ref_loss = reference.train_step(dict(batch))
    on = small_distiller(tmp_path / "on", dmd_weight=1.0, **options)
    fake_before = [p.detach().clone() for p in on.dmd.fake.parameters()]
    on_loss = on.train_step(dict(batch))
    assert on.terms["dmd"] < 1e-9 and on_loss == pytest.approx(ref_loss, abs=1e-8)
    assert any(not torch.equal(a, b) for a, b in zip(fake_before, on.dmd.fake.parameters(), strict=True))
    guided = small_distiller(tmp_path / "guided", dmd_weight=1.0, ode_regression_weight=1.0, guidance_range=(3.0, 3.0))
    guided.train_step()
    assert guided.terms["dmd"] > 1e-6  # guided, the term starts as the pull toward the teacher's CFG denoiser


def test_the_term_changes_the_update_only_from_dmd_start(tmp_path: Path) -> None:
    options = {"ode_regression_weight": 1.0, "lr": 1e-3}
    reference = small_distiller(tmp_path / "ref", **options)
    batch = reference.sample_batch()
    ref_loss = reference.train_step(dict(batch))
    later = small_distiller(tmp_path / "later", dmd_weight=0.5, dmd_start=5, **options)
    on = small_distiller(tmp_path / "on", dmd_weight=0.5, **options)
    later_loss, on_loss = later.train_step(dict(batch)), on.train_step(dict(batch))
    assert later_loss == ref_loss and "dmd" not in later.terms and "fake" in later.terms
    assert all(torch.equal(a, b) for a, b in zip(student_weights(reference), student_weights(later), strict=True))
    assert on.terms["dmd"] > 0 and on_loss == pytest.approx(ref_loss + 0.5 * on.terms["dmd"], abs=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(student_weights(reference), student_weights(on), strict=True))


def test_runs_without_the_term_keep_their_draws(tmp_path: Path) -> None:
    regression = small_distiller(tmp_path / "a", ode_regression_weight=1.0).sample_batch()
    both = small_distiller(tmp_path / "b", ode_regression_weight=1.0, dmd_weight=0.1).sample_batch()
    for key in ("x0", "t", "noise", "g", "ode_noise"):
        assert torch.equal(regression[key], both[key]), key


def test_resume_with_the_fake_denoiser_is_bit_identical(tiny_sd: Path, tmp_path: Path) -> None:
    """A text teacher; 4 steps straight vs 2 + resume + 2: the fake denoiser, its optimizer and every draw resume."""
    options = {"steps": 4, "checkpoint_every": 2, "dmd_weight": 0.5, "dmd_start": 1, "lr": 1e-3, "fake_score_lr": 1e-3}
    straight, resumed = straight_and_resumed(tmp_path, tiny_sd, options)
    assert resumed.history == straight.history and resumed.terms == straight.terms
    assert_same_weights([(straight.target, resumed.target), (straight.dmd.fake, resumed.dmd.fake)])
    assert_same_optimizer_state(straight.dmd.optimizer, resumed.dmd.optimizer)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dmd_weight": -0.1}, "--dmd-weight -0.1: must be >= 0"),
    ({"dmd_start": -1}, "--dmd-start -1: must be >= 0"),
    ({"fake_score_lr": 0.0}, "--fake-score-lr 0.0: must be > 0"),
    ({"fake_score_updates": 0}, "--fake-score-updates 0: must be >= 1"),
    ({"dmd_weight": 0.1, "method": "ect"}, "--dmd-weight with --method ect: "),
    ({"dmd_weight": 0.1, "lora_rank": 4}, "--dmd-weight with --lora-rank: "),
])
def test_bad_dmd_flags_are_one_line(overrides: dict, message: str) -> None:
    assert_refused_in_one_line(overrides, message)


def test_the_model_card_command_carries_the_dmd_flags() -> None:
    from cdx.distill.model_card import distill_command

    recipe = DistillConfig(dmd_weight=0.5, dmd_start=100, fake_score_lr=2e-4, fake_score_updates=4).as_dict()
    command = distill_command(recipe, "out/s")
    assert "--dmd-weight 0.5" in command and "--dmd-start 100" in command and "--fake-score-lr 0.0002" in command
    assert "--fake-score-updates 4" in command


def test_each_fake_update_takes_its_own_optimizer_step(tmp_path: Path) -> None:
    """--fake-score-updates K: K AdamW steps of the fake denoiser per student update (its step count says so)."""
    d = small_distiller(tmp_path, dmd_weight=0.5, fake_score_updates=3)
    d.train_step()
    steps = {int(state["step"]) for state in d.dmd.optimizer.state_dict()["state"].values()}
    assert steps == {3}
