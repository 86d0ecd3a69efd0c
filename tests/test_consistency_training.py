"""Teacher-free consistency training (CT, ECT, bootstrap) and the variance-reduced target, on a case with a known answer.

Gaussian data x₀ ~ N(μ, s²I) under the VP schedule: x_t = √ᾱ x₀ + √(1-ᾱ) ε. In the VE variable x̃ = x/√ᾱ with
σ² = (1-ᾱ)/ᾱ the ideal denoiser is D(x̃, σ) = μ + s²/(s²+σ²)(x̃-μ) and the PF-ODE dx̃/dσ = (x̃-D)/σ = (x̃-μ)σ/(s²+σ²)
is linear, so x̃(σ) - μ ∝ √(s²+σ²) along a trajectory: the consistency function to the boundary σ_b is
f(x_t, t) = μ + (x_t/√ᾱ_t - μ)·√(s²+σ_b²)/√(s²+σ_t²); for σ_b = 0, f = μ + (x_t - √ᾱ_t μ)·s/√(ᾱ_t s² + 1 - ᾱ_t).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

from cdx.distill.consistency import alphas_cumprod
from cdx.distill.consistency_training import (
    P_MEAN,
    P_STD,
    TeacherFreeMethod,
    ddim_from_x0,
    ect_sigma_r,
    ict_num_steps,
    karras_timesteps,
    lognormal_pair_probs,
    nearest_timestep,
    posterior_x0,
    pseudo_huber,
    sigmas,
)
from cdx.distill.solvers import heun_step
from cdx.distill.teacher import teacher_scheduler

ACP = alphas_cumprod(dict(teacher_scheduler().config)).to(torch.float64)
SIG = sigmas(ACP)
MU, S = 0.7, 0.4  # data mean and std per dimension


def col(v: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, 1, 1, 1)


def f_exact(x: torch.Tensor, t: torch.Tensor, sigma_b: float = 0.0) -> torch.Tensor:
    """Closed-form consistency function of N(μ, s²I) data (module docstring), to the boundary σ_b."""
    a = col(ACP[t])
    sigma_t = col(SIG[t])
    return MU + (x / a.sqrt() - MU) * math.sqrt(S**2 + sigma_b**2) / (S**2 + sigma_t**2).sqrt()


def posterior_mean(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """E[x₀ | x_t] for Gaussian data: μ + s²√ᾱ/(ᾱ s² + 1 - ᾱ)·(x_t - √ᾱ μ)."""
    a = col(ACP[t])
    return MU + S**2 * a.sqrt() / (a * S**2 + 1 - a) * (x_t - a.sqrt() * MU)


def gaussian_batch(n: int, t: torch.Tensor, d: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x0 = MU + S * torch.randn(n, d, 1, 1, generator=gen, dtype=torch.float64)
    noise = torch.randn(n, d, 1, 1, generator=gen, dtype=torch.float64)
    a = col(ACP[t])
    return {"x0": x0, "noise": noise, "t": t, "x_t": a.sqrt() * x0 + (1 - a).sqrt() * noise}


# ---- the analytic case itself ------------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [50, 300, 700, 999])
def test_closed_form_consistency_function_matches_integrating_the_ode(t: int) -> None:
    """Integrate the PF-ODE with many small Heun steps in σ from σ_t to σ_b and compare with the closed form."""
    sigma_b = float(SIG[0])
    x_ve = torch.tensor([-2.0, 0.1, 1.3, 3.0], dtype=torch.float64)
    sig = torch.linspace(float(SIG[t]), sigma_b, 4001, dtype=torch.float64)

    def slope(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return (x - MU) * sigma / (S**2 + sigma**2)

    y = x_ve.clone()
    for hi, lo in itertools.pairwise(sig):
        k1 = slope(y, hi)
        k2 = slope(y + (lo - hi) * k1, lo)
        y = y + (lo - hi) * 0.5 * (k1 + k2)
    x_t = x_ve * ACP[t].sqrt()
    closed = f_exact(x_t.reshape(-1, 1, 1, 1), torch.full((4,), t), sigma_b).flatten()
    torch.testing.assert_close(y, closed, atol=1e-6, rtol=1e-6)


def test_the_project_solvers_follow_the_same_trajectory() -> None:
    """cdx's Heun step on the discrete timesteps with the exact ε reaches f(x_t, t) at σ(0): the formula is the ODE's."""
    t0 = 600
    x = gaussian_batch(8, torch.full((8,), t0))["x_t"]
    expected = f_exact(x, torch.full((8,), t0), float(SIG[0])) * ACP[0].sqrt()  # VP value at timestep 0

    def eps(xx: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        return (xx - col(ACP[tt]).sqrt() * posterior_mean(xx, tt)) / (1 - col(ACP[tt])).sqrt()

    for t in range(t0, 0, -1):
        x = heun_step(eps, x, torch.full((8,), t), torch.full((8,), t - 1), ACP)
    torch.testing.assert_close(x, expected, atol=2e-5, rtol=1e-5)


# ---- the variance-reduced x̂₀ -------------------------------------------------------------------------------------
def test_variance_reduced_x0_converges_to_the_posterior_mean_with_less_variance() -> None:
    t = 450  # ᾱ ≈ 0.4: neither regime is trivial
    errors = {}
    for n in (16, 256, 4096):
        batch = gaussian_batch(n, torch.full((n,), t), seed=n)
        exact = posterior_mean(batch["x_t"], batch["t"])
        vr = posterior_x0(batch["x_t"], ACP[batch["t"]], batch["x0"])
        errors[n] = float((vr - exact).pow(2).mean())
        single = float((batch["x0"] - exact).pow(2).mean())  # the one-sample x₀: error = the posterior variance
    posterior_var = float(S**2 * (1 - ACP[t]) / (ACP[t] * S**2 + 1 - ACP[t]))
    assert single == pytest.approx(posterior_var, rel=0.1)
    assert errors[16] > errors[256] > errors[4096]
    assert errors[4096] < 0.02 * single, (errors, single)


def test_variance_reduced_x0_uses_only_the_same_label() -> None:
    """Two classes with opposite means: the estimate is the class-conditional posterior mean."""
    n, t = 2048, 450
    batch = gaussian_batch(n, torch.full((n,), t), seed=5)
    labels = torch.arange(n) % 2
    shift = torch.where(labels == 0, -1.5, 1.5).double().reshape(-1, 1, 1, 1)
    x0 = batch["x0"] + shift
    a = col(ACP[batch["t"]])
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * batch["noise"]
    exact = shift + posterior_mean(x_t - a.sqrt() * shift, batch["t"])  # shifted Gaussian per class
    vr = posterior_x0(x_t, ACP[batch["t"]], x0, labels)
    pooled = posterior_x0(x_t, ACP[batch["t"]], x0)
    assert float((vr - exact).pow(2).mean()) < 0.2 * float((pooled - exact).pow(2).mean())
    assert float((vr - exact).pow(2).mean()) < 0.01


# ---- the CT target at the optimum --------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [100, 450, 900])
def test_ct_target_of_the_exact_f_is_f_with_the_ideal_denoiser(t: int) -> None:
    """With x̂₀ = E[x₀|x_t] the target f(x_s, s) equals f(x_t, t) up to DDIM's local error, shrinking as O(dt²)."""
    x = gaussian_batch(64, torch.full((64,), t))["x_t"]
    tt = torch.full((64,), t)
    gaps = []
    for k in (8, 4, 2, 1):
        s = tt - k
        x_s = ddim_from_x0(x, posterior_mean(x, tt), col(ACP[tt]), col(ACP[s]))
        gaps.append(float((f_exact(x_s, s) - f_exact(x, tt)).abs().max()))
    assert gaps[-1] < 1e-5 * float(f_exact(x, tt).abs().max()) + 1e-7
    assert gaps[0] / gaps[-1] > 40  # 8× dt → ≈ 64× error: second order, i.e. DDIM's local error, no bias


def test_ct_target_with_single_samples_is_unbiased_and_the_method_builds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """CT's target from one posterior sample of x₀ (same ε) averages to f(x_t, t); the reduced one is already there."""
    t, n = 450, 20000
    tt = torch.full((n,), t)
    x_t = gaussian_batch(1, tt[:1], seed=3)["x_t"].expand(n, -1, -1, -1)
    gen = torch.Generator().manual_seed(4)
    a = col(ACP[tt])
    post_std = math.sqrt(S**2 * (1 - float(ACP[t])) / (float(ACP[t]) * S**2 + 1 - float(ACP[t])))
    x0 = posterior_mean(x_t, tt) + post_std * torch.randn(x_t.shape, generator=gen, dtype=torch.float64)
    noise = (x_t - a.sqrt() * x0) / (1 - a).sqrt()  # the ε that made x_t from this x₀
    method = TeacherFreeMethod("ct")
    b = {"x0": x0, "noise": noise, "t": tt, "s": tt - 1}
    target = method.target(lambda x, s: f_exact(x, s), ACP, b)
    truth = f_exact(x_t[:1], tt[:1])
    spread = float(target.std(0).max())
    assert spread > 1e-4  # single-sample targets really vary (one timestep apart: a small but real spread)
    assert float((target.mean(0) - truth[0]).abs().max()) < 4 * spread / math.sqrt(n) + 1e-6
    vr = TeacherFreeMethod("ct", variance_reduction=True)
    batch = gaussian_batch(4096, torch.full((4096,), t), seed=9)
    b = {**batch, "s": batch["t"] - 1}
    err_vr = (vr.target(lambda x, s: f_exact(x, s), ACP, b) - f_exact(batch["x_t"], batch["t"])).pow(2).mean()
    err_single = (method.target(lambda x, s: f_exact(x, s), ACP, b) - f_exact(batch["x_t"], batch["t"])).pow(2).mean()
    assert float(err_vr) < 0.05 * float(err_single)


def test_clean_rows_target_x0_and_pseudo_huber_uses_c_from_the_dimension() -> None:
    b = gaussian_batch(4, torch.tensor([10, 20, 30, 40]))
    b["s"] = torch.tensor([-1, 9, -1, 39])
    target = TeacherFreeMethod("ect").target(lambda x, s: torch.zeros_like(x), ACP, b)
    torch.testing.assert_close(target[[0, 2]], b["x0"][[0, 2]])
    assert float(target[[1, 3]].abs().max()) == 0
    pred = torch.zeros(2, 4, 8, 8)
    c = 0.00054 * math.sqrt(256)
    assert pseudo_huber(pred, pred + 0).max() == 0
    assert float(pseudo_huber(pred, torch.full_like(pred, 1e-6))[0]) == pytest.approx(256e-12 / (2 * c), rel=1e-2)


# ---- schedules ---------------------------------------------------------------------------------------------------
def test_ict_curriculum_doubles_and_the_grid_is_discrete_timesteps() -> None:
    total = 800  # K' = 100
    assert [ict_num_steps(k, total) for k in (0, 99, 100, 250, 799)] == [11, 11, 21, 41, 1281]
    grid = karras_timesteps(SIG, 11)
    assert len(grid) == 11 and grid[0] == 0 and grid[-1] == 999 and bool((grid[1:] > grid[:-1]).all())
    assert len(karras_timesteps(SIG, 1281)) <= 1000  # capped by the teacher's T timesteps
    assert nearest_timestep(SIG, SIG[[0, 5, 999]]).tolist() == [0, 5, 999]


def test_ct_pairs_follow_the_discretised_lognormal() -> None:
    """KS-type check: the empirical CDF of drawn pairs vs iCT's erf-difference probabilities, which themselves
    equal the lognormal(P_mean, P_std) mass between adjacent grid σ's."""
    n = 20000
    method = TeacherFreeMethod("ct")
    total = 1000
    pairs = method.pairs(ACP.float(), n, step=total - 1, total=total, gen=torch.Generator().manual_seed(0))
    grid = karras_timesteps(SIG, ict_num_steps(total - 1, total))
    probs = lognormal_pair_probs(SIG[grid])
    index = torch.searchsorted(grid, pairs["s"])
    assert bool((grid[index + 1] == pairs["t"]).all())  # adjacent grid points
    empirical = torch.bincount(index, minlength=len(probs)).double().cumsum(0) / n
    assert float((empirical - probs.cumsum(0)).abs().max()) < 1.63 / math.sqrt(n)  # KS at 99 %
    normal = torch.distributions.Normal(P_MEAN, P_STD)
    lo, hi = normal.cdf(SIG[grid[0]].log()), normal.cdf(SIG[grid[-1]].log())
    mid = len(grid) // 2
    assert float(probs[:mid].sum()) == pytest.approx(float((normal.cdf(SIG[grid[mid]].log()) - lo) / (hi - lo)), abs=1e-7)
    torch.testing.assert_close(pairs["weight"].double(), 1 / (SIG[pairs["t"]] - SIG[pairs["s"]]), rtol=1e-5, atol=0)


def test_ect_sigma_t_is_lognormal_on_the_discrete_grid() -> None:
    n = 20000
    pairs = TeacherFreeMethod("ect").pairs(ACP.float(), n, step=0, total=100, gen=torch.Generator().manual_seed(1))
    normal = torch.distributions.Normal(P_MEAN, P_STD)
    checks = torch.tensor([20, 100, 250, 500, 800])
    edges = (SIG[checks].log() + SIG[checks + 1].log()) / 2  # snapping boundary above each checked timestep
    empirical = torch.tensor([float((pairs["t"] <= int(c)).double().mean()) for c in checks], dtype=torch.float64)
    assert float((empirical - normal.cdf(edges)).abs().max()) < 1.63 / math.sqrt(n)


def test_ect_dt_shrinks_by_q_per_stage() -> None:
    sigma_t = torch.tensor([1.0, 2.0, 8.0], dtype=torch.float64)  # r > 0 from stage 0 on at these σ
    dt = [sigma_t - ect_sigma_r(sigma_t, stage, q=4.0) for stage in range(4)]
    assert bool((ect_sigma_r(sigma_t, 0) > 0).all())
    for a, b in zip(dt[1:], dt[:-1], strict=True):
        torch.testing.assert_close(a, b / 4)
    assert float(ect_sigma_r(torch.tensor([0.05]), 0)) == 0  # stage 0 at low noise: r = 0, the denoising loss
    method = TeacherFreeMethod("ect", ect_q=4.0, ect_stages=4)
    assert [method.ect_stage(k, 400) for k in (0, 99, 100, 250, 399)] == [0, 0, 1, 2, 3]
    gaps = []
    for stage in range(4):
        p = method.pairs(ACP.float(), 4000, step=stage * 100, total=400, gen=torch.Generator().manual_seed(2))
        sig_s = torch.where(p["s"] < 0, torch.zeros((), dtype=torch.float64), SIG[p["s"].clamp(min=0)])
        gaps.append(float((SIG[p["t"]] - sig_s).mean()))
        assert bool((p["s"] < p["t"]).all())
    assert gaps[0] > 3 * gaps[1] > 9 * gaps[2]  # ≈ 4× per stage until the one-timestep floor


# ---- wired into the distiller: no teacher calls, the online network's target at the same noise --------------------
@pytest.fixture(scope="module")
def embedded_parts():
    from cdx.defaults import default_teacher
    from cdx.distill.loading import load_latent_pipeline

    return load_latent_pipeline(default_teacher())


@pytest.mark.parametrize("name,vr", [("ct", False), ("ct", True), ("ect", False), ("bootstrap", False)])
def test_teacher_free_methods_train_without_the_teacher(name: str, vr: bool, embedded_parts, tmp_path: Path) -> None:
    from cdx.distill.data import FASHION_MNIST_CLASSES, ImageDataset
    from cdx.distill.distiller import ConsistencyDistiller, DistillConfig

    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(16, 1, 32, 32, generator=gen) * 2 - 1, torch.arange(16) % 10, list(FASHION_MNIST_CLASSES))
    config = DistillConfig(steps=10, batch_size=4, sample_every=0, method=name, variance_reduction=vr)
    d = ConsistencyDistiller(embedded_parts, data, config, tmp_path)
    calls = {"n": 0}
    handle = d.teacher.register_forward_pre_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        b = d.draw_batch()
        student = d.accelerator.unwrap_model(d.student)
        with torch.no_grad():  # independent: the online student at s on the same-noise point (x̂₀ where s = -1)
            s = b["s"].clamp(min=0)
            a_s = d.acp[s].reshape(-1, 1, 1, 1)
            x_s = a_s.sqrt() * b["x0"] + (1 - a_s).sqrt() * b["noise"]
            expected = d._f(student, x_s, s, d.cond.kwargs(b["labels"]), b["w_emb"])
            expected = torch.where((b["s"] < 0).reshape(-1, 1, 1, 1), b["x0"], expected)
        got = d.consistency_target(b)
        if not vr:
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
        loss = d.train_step(b)
        assert math.isfinite(loss) and loss > 0
    finally:
        handle.remove()
    assert calls["n"] == 0


def test_unknown_method_is_one_line_from_the_cli(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cdx.cli", "distill", "--method", "dmd", "--out", str(tmp_path / "s")],
                          capture_output=True, text=True, check=False)
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert lines == ["error: unknown --method 'dmd'; valid: cd, ct, ect, bootstrap"], proc.stderr
    assert not (tmp_path / "s").exists()
