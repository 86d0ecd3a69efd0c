"""The seed's evaluation protocol (benchmarks/consistency_eval.py) on cases with a known answer, and end to end on a
tiny random class-conditional pipeline."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cdx.benchmarks.consistency_eval import (
    Schedule,
    bin_by_t,
    distillation_grid,
    evaluate_consistency,
    reconstruction_errors,
    self_consistency_gaps,
    student_consistency_fn,
    teacher_trajectories,
)
from cdx.tiny_models import build_tiny_class_pipeline, tiny_scheduler


@pytest.fixture(scope="module")
def schedule_config() -> dict:
    return dict(tiny_scheduler().config)


def _dirac(schedule: Schedule, mu: torch.Tensor):
    """Data = one point μ. The exact ε̂ is (x − √ᾱ_t μ)/√(1−ᾱ_t); DDIM is then exact, and the exact consistency
    function (boundary at t = 0) is f(x, t) = √ᾱ₀ μ + √(1−ᾱ₀)·ε̂(x, t) — perfectly self-consistent by construction."""
    acp = schedule.alphas_cumprod.float()

    def eps(x, t, _labels):
        a = acp[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * mu) / (1 - a).sqrt()

    def f(x, t, labels):
        return acp[0].sqrt() * mu + (1 - acp[0]).sqrt() * eps(x, t, labels)

    return eps, f


def test_self_consistency_gap_is_zero_for_an_exactly_consistent_model(schedule_config) -> None:
    schedule = Schedule.of(schedule_config)
    mu = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    eps, f = _dirac(schedule, mu)
    grid = distillation_grid(1000, 50)
    assert grid[:2] == [999, 979] and grid[-2:] == [19, 0] and len(grid) == 51
    labels = torch.zeros(5, dtype=torch.int64)
    noise = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    path = teacher_trajectories(eps, noise, labels, schedule, grid)
    assert len(path) == len(grid) and all(x.shape == noise.shape for x in path)
    gaps = self_consistency_gaps(f, path, labels, grid)
    assert len(gaps["rows"]) == len(grid) - 1
    assert max(r["adjacent_mean"] for r in gaps["rows"]) < 1e-4
    assert max(r["boundary_mean"] for r in gaps["rows"]) < 1e-4
    # the same trajectories under a model that ignores t (f = x) are far from self-consistent
    inconsistent = self_consistency_gaps(lambda x, t, y: x, path, labels, grid)
    assert inconsistent["rows"][0]["boundary_mean"] > 1.0


def test_reconstruction_distance_matches_the_closed_form(schedule_config) -> None:
    schedule = Schedule.of(schedule_config)
    mu = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    _, f = _dirac(schedule, mu)
    z0 = mu.repeat(3, 1, 1, 1)
    out = reconstruction_errors(f, z0, torch.zeros(3, dtype=torch.int64), schedule, per_image=16, seed=3, batch=7)
    assert out["t"].shape == out["latent_l2"].shape == (48,) and int(out["latent_dim"]) == 256
    # f(z_t, t) = √ᾱ₀ μ + √(1−ᾱ₀) ε whatever t is: the distance to z₀ = μ is ‖(√ᾱ₀ − 1) μ + √(1−ᾱ₀) ε‖
    gen = torch.Generator().manual_seed(3)
    torch.randint(0, schedule.num_timesteps, (48,), generator=gen)
    noise = torch.randn((48, 4, 8, 8), generator=gen)
    a0 = schedule.alphas_cumprod[0].float()
    expected = ((a0.sqrt() - 1) * mu + (1 - a0).sqrt() * noise).flatten(1).norm(dim=1).numpy()
    np.testing.assert_allclose(out["latent_l2"], expected, rtol=1e-4)


@pytest.mark.parametrize("parameterization", ["lcm", "edm"])
def test_student_consistency_function_is_the_identity_at_the_boundary(tmp_path, parameterization, schedule_config) -> None:
    from cdx.distill.conditioning import TeacherConditioning
    from cdx.distill.loading import load_latent_pipeline

    parts = load_latent_pipeline(build_tiny_class_pipeline(tmp_path / "m", channels=8, vae_levels=1))
    cond = TeacherConditioning(parts, ["a", "b", "c"])
    f = student_consistency_fn(parts.unet.eval(), parts.scheduler_config, cond, 2.0, parameterization)
    z = torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 0])
    torch.testing.assert_close(f(z, torch.zeros(4, dtype=torch.int64), labels), z)  # c_skip(0) = 1, c_out(0) = 0
    far = f(z, torch.full((4,), 999, dtype=torch.int64), labels)
    assert (far - z).abs().max() > 1e-2  # at high noise f is the network's x̂₀, not its input
    # the reconstruction distance at t = 0 is therefore just the noise added at t = 0: √(1−ᾱ₀)·‖ε‖ (≈ 0)
    schedule = Schedule.of(parts.scheduler_config)
    out = reconstruction_errors(f, z, labels, schedule, per_image=400, seed=0)
    t0 = out["t"] < 2
    assert t0.any() and out["latent_l2"][t0].max() < 0.1 * out["latent_l2"][out["t"] > 900].mean()


def test_bins_cover_every_timestep_once() -> None:
    t = np.array([0, 99, 100, 999, 500])
    rows = bin_by_t(t, t.astype(float), 1000, bins=10)
    assert [r["count"] for r in rows] == [2, 1, 0, 0, 0, 1, 0, 0, 0, 1]
    assert rows[0]["mean"] == pytest.approx(49.5) and np.isnan(rows[2]["mean"])


def test_evaluate_consistency_writes_json_and_plots(tmp_path) -> None:
    folder = str(build_tiny_class_pipeline(tmp_path / "m", channels=8, vae_levels=1))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 8, 8, generator=gen) * 2 - 1
    result = evaluate_consistency(folder, folder, tmp_path / "out", n_images=3, per_image=8, trajectories=2,
                                  guidance=1.5, images=images, labels=torch.tensor([0, 1, 2]))
    saved = json.loads((tmp_path / "out" / "consistency.json").read_text())
    assert saved["held_out"]["images"] == 3 and saved["held_out"]["timesteps_per_image"] == 8
    assert sum(r["count"] for r in saved["reconstruction"]["latent_l2"]) == 24
    assert len(saved["self_consistency"]["rows"]) == 50 and saved["self_consistency"]["grid"][-1] == 0
    for name in result["plots"]:
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
