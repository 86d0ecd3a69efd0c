"""The consistency-distillation target, computed independently of the distiller and compared with what train_step uses.

Independent = written here from diffusers' own pieces (DDIMScheduler's ᾱ, LCMScheduler's boundary scalings, the LCM
pipeline's guidance embedding), not from cdx.distill: the EMA target network at s = t_n applied to one DDIM step from
t = t_{n+k} of the teacher with classifier-free guidance at w (ε_u + w(ε_c − ε_u)). Online student, EMA target and
teacher are made three different networks, so using the online network, evaluating at t instead of s, or dropping
CFG each moves the target far outside the tolerance (checked by planting each bug).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdx.defaults import default_teacher
from cdx.distill.data import FASHION_MNIST_CLASSES, ImageDataset
from cdx.distill.distiller import ConsistencyDistiller, DistillConfig
from cdx.distill.loading import load_latent_pipeline


def _perturb(module: torch.nn.Module, scale: float, seed: int) -> None:
    """Relative noise on every weight (and a non-zero w projection, which the student starts with at zero)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            size = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.05
            p.add_(scale * size * torch.randn(p.shape, generator=gen))
            if "cond_proj" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))


def _tiny_distiller(work: Path, **options: object) -> ConsistencyDistiller:
    """A distiller of the embedded teacher on 8 random images, batch 4, g in [2, 5], seed 3 (+ `options`)."""
    parts = load_latent_pipeline(default_teacher())
    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(8, 1, 32, 32, generator=gen) * 2 - 1, torch.arange(8) % 10, list(FASHION_MNIST_CLASSES))
    config = DistillConfig(steps=1, batch_size=4, guidance_range=(2.0, 5.0), sample_every=0, seed=3, **options)
    return ConsistencyDistiller(parts, data, config, work)


@pytest.fixture(scope="module")
def distiller(tmp_path_factory: pytest.TempPathFactory) -> ConsistencyDistiller:
    d = _tiny_distiller(tmp_path_factory.mktemp("cd_target"), ema_decay=0.95)
    _perturb(d.target, 0.05, seed=1)
    _perturb(d.accelerator.unwrap_model(d.student), 0.05, seed=2)
    return d


def _batch(d: ConsistencyDistiller) -> dict:
    b = d.sample_batch()
    b["t"] = torch.tensor([19, 259, 619, 999])  # t=19 → s=0, where c_skip(s)=1: the boundary is in the case
    b["s"] = (b["t"] - d.skip).clamp(min=0)
    return b


@torch.no_grad()
def independent_target(folder: str, ema: torch.nn.Module, teacher: torch.nn.Module, b: dict, null_class: int,
                       substeps: int = 1) -> torch.Tensor:
    from diffusers import DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler

    ddim = DDIMScheduler.from_pretrained(Path(folder) / "scheduler")
    lcm = LCMScheduler.from_config(ddim.config, timestep_scaling=10.0)
    acp = ddim.alphas_cumprod.to(torch.float32)
    t, s, w, y = b["t"], b["s"], b["g"], b["labels"]

    def col(v: torch.Tensor) -> torch.Tensor:
        return v.reshape(-1, 1, 1, 1)

    a_t, a_s = col(acp[t]), col(acp[s])
    x_s = a_t.sqrt() * b["x0"] + (1 - a_t).sqrt() * b["noise"]
    for j in range(substeps):  # DDIM (η = 0) from t to s, over `substeps` even integer sub-steps
        here, there = t - (t - s) * j // substeps, t - (t - s) * (j + 1) // substeps
        e_c = teacher(x_s, here, encoder_hidden_states=None, class_labels=y).sample
        e_u = teacher(x_s, here, encoder_hidden_states=None, class_labels=torch.full_like(y, null_class)).sample
        eps = e_u + col(w) * (e_c - e_u)
        x0_hat = (x_s - (1 - col(acp[here])).sqrt() * eps) / col(acp[here]).sqrt()
        x_s = col(acp[there]).sqrt() * x0_hat + (1 - col(acp[there])).sqrt() * eps
    w_emb = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w - 1.0, ema.config.time_cond_proj_dim)
    out = ema(x_s, s, encoder_hidden_states=None, class_labels=y, timestep_cond=w_emb).sample
    x0_ema = (x_s - (1 - a_s).sqrt() * out) / a_s.sqrt()
    scalings = [lcm.get_scalings_for_boundary_condition_discrete(int(v)) for v in s]
    c_skip = col(torch.tensor([c[0] for c in scalings], dtype=torch.float32))
    c_out = col(torch.tensor([c[1] for c in scalings], dtype=torch.float32))
    return c_skip * x_s + c_out * x0_ema


def test_cd_target_is_the_ema_network_at_s_on_the_cfg_ddim_step(distiller: ConsistencyDistiller) -> None:
    d = distiller
    b = _batch(d)
    expected = independent_target(default_teacher(), d.target, d.teacher, b, null_class=10)
    torch.testing.assert_close(d.consistency_target(b), expected, atol=2e-5, rtol=1e-4)
    assert float((expected[0] - b["x0"][0]).abs().max()) > 0  # sanity: the s=0 row is the DDIM step itself, not x0


def test_train_step_optimises_toward_that_target(distiller: ConsistencyDistiller, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdx.distill import distiller as module

    d = distiller
    b = _batch(d)
    expected = independent_target(default_teacher(), d.target, d.teacher, b, null_class=10)
    seen: list[torch.Tensor] = []
    real = module.consistency_loss

    def recording(prediction: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        seen.append(target.detach().clone())
        return real(prediction, target, *args, **kwargs)

    monkeypatch.setattr(module, "consistency_loss", recording)
    d.train_step(b)
    assert len(seen) == 1
    torch.testing.assert_close(seen[0], expected, atol=2e-5, rtol=1e-4)


def test_the_three_networks_differ_enough_to_tell_the_bugs_apart(distiller: ConsistencyDistiller) -> None:
    """Guards the test's own power: each planted bug moves the target by far more than the tolerance."""
    d = distiller
    b = _batch(d)
    right = independent_target(default_teacher(), d.target, d.teacher, b, null_class=10)
    online = independent_target(default_teacher(), d.accelerator.unwrap_model(d.student), d.teacher, b, null_class=10)
    at_t = independent_target(default_teacher(), d.target, d.teacher, {**b, "s": b["t"]}, null_class=10)
    no_cfg = independent_target(default_teacher(), d.target, d.teacher, {**b, "g": torch.ones(4)}, null_class=10)
    for wrong in (online, at_t, no_cfg):
        assert float((wrong - right).abs().max()) > 100 * 2e-5


def test_solver_substeps_chain_the_cfg_ddim_step_over_the_hop(tmp_path: Path) -> None:
    """--solver-substeps 4: the teacher's step t → s is four guided DDIM steps on t, t - k/4, …, s."""
    d = _tiny_distiller(tmp_path, ema_decay=0.95, solver_substeps=4)
    _perturb(d.target, 0.05, seed=1)
    b = _batch(d)
    expected = independent_target(default_teacher(), d.target, d.teacher, b, null_class=10, substeps=4)
    torch.testing.assert_close(d.consistency_target(b), expected, atol=2e-5, rtol=1e-4)
    one_hop = independent_target(default_teacher(), d.target, d.teacher, b, null_class=10)
    assert float((one_hop - expected).abs().max()) > 100 * 2e-5  # the test can tell a single step apart


# ---- the ODE-pair regression term (--ode-regression-weight) ------------------------------------------------------
@pytest.fixture(scope="module")
def regressing(tmp_path_factory: pytest.TempPathFactory) -> ConsistencyDistiller:
    d = _tiny_distiller(tmp_path_factory.mktemp("ode_regression"), ode_regression_weight=0.5, ode_regression_steps=3,
                        ode_regression_batch=3)
    _perturb(d.accelerator.unwrap_model(d.student), 0.05, seed=2)
    return d


@torch.no_grad()
def independent_ode_solution(folder: str, teacher: torch.nn.Module, noise: torch.Tensor, labels: torch.Tensor,
                             g: torch.Tensor, steps: int, null_class: int) -> torch.Tensor:
    """diffusers' DDIMScheduler.step (η = 0, trailing spacing, SD's settings) with CFG at each sample's g."""
    from diffusers import DDIMScheduler

    ddim = DDIMScheduler.from_pretrained(Path(folder) / "scheduler", clip_sample=False, set_alpha_to_one=False,
                                         steps_offset=1, timestep_spacing="trailing")
    ddim.set_timesteps(steps)
    x = noise
    for t in ddim.timesteps:
        tt = torch.full((len(x),), int(t))
        e_c = teacher(x, tt, encoder_hidden_states=None, class_labels=labels).sample
        e_u = teacher(x, tt, encoder_hidden_states=None, class_labels=torch.full_like(labels, null_class)).sample
        x = ddim.step(e_u + g.reshape(-1, 1, 1, 1) * (e_c - e_u), t, x, eta=0.0).prev_sample
    return x


def test_ode_regression_target_is_the_teachers_guided_ddim_solution(regressing: ConsistencyDistiller) -> None:
    d = regressing
    b = d.sample_batch()
    assert b["ode_noise"].shape == (3, *b["x0"].shape[1:])
    expected = independent_ode_solution(default_teacher(), d.teacher, b["ode_noise"], b["labels"][:3], b["g"][:3], 3, 10)
    torch.testing.assert_close(d.ode_regression_target(b), expected, atol=2e-5, rtol=1e-4)
    no_cfg = independent_ode_solution(default_teacher(), d.teacher, b["ode_noise"], b["labels"][:3], torch.ones(3), 3, 10)
    assert float((no_cfg - expected).abs().max()) > 100 * 2e-5  # the test can tell a dropped CFG apart


def test_train_step_adds_the_weighted_regression_of_the_one_step_output(regressing: ConsistencyDistiller,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """loss = CD loss + weight × loss(f(z, 999), teacher's ODE solution of z): the one-step output at T - 1."""
    from cdx.distill import distiller as module

    d = regressing
    b = d.sample_batch()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = module.consistency_loss

    def recording(prediction: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        seen.append((prediction.detach().clone(), target.detach().clone()))
        return real(prediction, target, *args, **kwargs)

    student = d.accelerator.unwrap_model(d.student)
    with torch.no_grad():
        t = torch.full((3,), 999)
        one_step = d._f(student, b["ode_noise"], t, d._first(d.cond.batch_kwargs(b), 3), b["w_emb"][:3])
    monkeypatch.setattr(module, "consistency_loss", recording)
    loss = d.train_step(b)
    assert len(seen) == 2
    (cd_pred, cd_target), (reg_pred, reg_target) = seen
    torch.testing.assert_close(reg_pred, one_step, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reg_target, d.ode_regression_target(b), atol=2e-5, rtol=1e-4)
    expected = real(cd_pred, cd_target, "huber", 0.001) + 0.5 * real(reg_pred, reg_target, "huber", 0.001)
    assert abs(loss - float(expected)) < 1e-6


def test_ode_regression_refuses_teacher_free_methods_in_one_line() -> None:
    from cdx.errors import InputError

    config = DistillConfig(ode_regression_weight=1.0, method="ct")
    with pytest.raises(InputError, match=r"^--ode-regression-weight with --method ct: .*use --method cd$"):
        config.validate()


def test_ode_regression_with_a_rollout_cache_is_refused_before_the_teacher_loads(tmp_path: Path) -> None:
    from cdx.distill.distiller import distill_student
    from cdx.errors import InputError

    with pytest.raises(InputError, match=r"^--rollout-cache with --ode-regression-weight: "):
        distill_student(tmp_path / "no-such-teacher", tmp_path / "out", DistillConfig(ode_regression_weight=1.0),
                        rollout_cache=tmp_path / "cache")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.work").exists()


def test_attaching_rollouts_through_the_python_api_refuses_a_regression_term(tmp_path: Path) -> None:
    """The cache replaces the teacher's batches: the regression term would be skipped silently, so it is refused."""
    from cdx.distill.rollout_cache import attach_rollouts
    from cdx.errors import InputError

    d = _tiny_distiller(tmp_path / "work", ode_regression_weight=1.0)
    with pytest.raises(InputError, match=r"^--rollout-cache with --ode-regression-weight: "):
        attach_rollouts(d, tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and d.rollouts is None


def test_decoded_regression_compares_the_decoders_images_of_output_and_ode_solution(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--ode-regression-space decoded`: the regression's two sides are the frozen decoder's images (in [0, 1], image
    channels) of f(z, 999) and of the teacher's ODE solution; the student's gradient passes through the decoder, which
    takes none; the latent-space run on the same batch moves the student differently."""
    from cdx.distill import distiller as module
    from cdx.distill.sampling import decode_latents

    latent = _tiny_distiller(tmp_path / "latent", ode_regression_weight=0.5, ode_regression_steps=3,
                             ode_regression_batch=3, lr=1e-3)
    decoded = _tiny_distiller(tmp_path / "decoded", ode_regression_weight=0.5, ode_regression_steps=3,
                              ode_regression_batch=3, lr=1e-3, ode_regression_space="decoded")
    for d in (latent, decoded):
        _perturb(d.accelerator.unwrap_model(d.student), 0.05, seed=2)
    b = decoded.sample_batch()
    vae, parts = decoded.parts.vae, decoded.parts
    with torch.no_grad():
        one_step = decoded._f(decoded.accelerator.unwrap_model(decoded.student), b["ode_noise"], torch.full((3,), 999),
                              decoded._first(decoded.cond.batch_kwargs(b), 3), b["w_emb"][:3])
        images = decode_latents(vae, one_step, parts.latent_scaling_factor, parts.latent_shift_factor)
        target = decode_latents(vae, decoded.ode_regression_target(b), parts.latent_scaling_factor,
                                parts.latent_shift_factor)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = module.consistency_loss

    def recording(prediction: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        seen.append((prediction.detach().clone(), target.detach().clone()))
        return real(prediction, target, *args, **kwargs)

    monkeypatch.setattr(module, "consistency_loss", recording)
    decoded.train_step(dict(b))
    latent.train_step(dict(b))
    (_, _), (reg_pred, reg_target), (_, _), (latent_pred, _) = seen
    assert reg_pred.shape[1] == int(vae.config.out_channels) != parts.latent_channels
    torch.testing.assert_close(reg_pred, images, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(reg_target, target, atol=1e-5, rtol=1e-4)
    assert latent_pred.shape[1] == parts.latent_channels
    assert all(p.grad is None for p in vae.parameters())
    moved = zip(latent.accelerator.unwrap_model(latent.student).parameters(),
                decoded.accelerator.unwrap_model(decoded.student).parameters(), strict=True)
    assert any(not torch.equal(a, c) for a, c in moved)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"ode_regression_space": "pixels", "ode_regression_weight": 1.0},
     "--ode-regression-space 'pixels': must be one of latent | decoded"),
    ({"ode_regression_space": "decoded"}, "--ode-regression-space decoded without --ode-regression-weight: "),
])
def test_bad_regression_spaces_are_refused_in_one_line(overrides: dict, message: str) -> None:
    import re

    from cdx.errors import InputError

    with pytest.raises(InputError, match="^" + re.escape(message)) as err:
        DistillConfig(**overrides).validate()
    assert "\n" not in str(err.value)


def test_decoded_regression_on_an_rgb_text_teacher_trains_and_resumes_bit_identically(tiny_sd: Path,
                                                                                     tmp_path: Path) -> None:
    """What users bring (an SD-shaped RGB text teacher at 64 px): the decoded regression runs through its RGB decoder,
    and 4 steps straight equal 2 + resume + 2."""
    import math

    from distill_helpers import assert_same_weights, straight_and_resumed

    options = {"steps": 4, "checkpoint_every": 2, "lr": 1e-3, "ode_regression_weight": 1.0,
               "ode_regression_steps": 2, "ode_regression_space": "decoded"}
    straight, resumed = straight_and_resumed(tmp_path, tiny_sd, options)
    assert int(straight.parts.vae.config.out_channels) == 3
    assert resumed.history == straight.history and all(math.isfinite(v) for v in straight.history)
    assert_same_weights([(straight.target, resumed.target)])
