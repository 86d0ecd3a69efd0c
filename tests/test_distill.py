"""Consistency distillation: solvers, losses, student init, EMA, exact resume, NaN stop, saved pipelines."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from cdx.atomic import sha256_file
from cdx.distill.consistency import alphas_cumprod
from cdx.distill.distiller import ConsistencyDistiller, DistillConfig, distill_student, make_student
from cdx.distill.loading import load_latent_pipeline
from cdx.distill.losses import consistency_loss
from cdx.distill.solvers import ddim_step, euler_step, heun_step, skipping_timesteps
from cdx.errors import CdxError, InputError
from cdx.tiny_models import tiny_scheduler

needs_data = pytest.mark.requires("fashion-mnist")  # skips without it (fails under CI=true)
ACP = alphas_cumprod(dict(tiny_scheduler().config)).to(torch.float32)


def _point_mass_eps(x0: torch.Tensor):
    """Exact ε for data concentrated at x0: the PF-ODE keeps ε constant along the trajectory."""
    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ACP[t].reshape(-1, 1, 1, 1)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
    return eps


@pytest.mark.parametrize("step", [ddim_step, euler_step, heun_step])
def test_solvers_are_exact_on_a_point_mass(step) -> None:
    x0, e0 = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    t, s = torch.tensor([999, 500]), torch.tensor([979, 480])
    a_t, a_s = ACP[t].reshape(-1, 1, 1, 1), ACP[s].reshape(-1, 1, 1, 1)
    x_t = a_t.sqrt() * x0 + (1 - a_t).sqrt() * e0
    expected = a_s.sqrt() * x0 + (1 - a_s).sqrt() * e0
    torch.testing.assert_close(step(_point_mass_eps(x0), x_t, t, s, ACP), expected, atol=2e-4, rtol=1e-4)


def test_heun_beats_euler_on_gaussian_data() -> None:
    """Data ~ N(0, 0.25): x̃(σ) = x̃(σ_t)·√(0.25+σ²)/√(0.25+σ_t²) exactly; a moderate step shows the orders."""
    var = 0.25

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ACP[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * var + 1 - a)

    t, s = torch.tensor([600]), torch.tensor([540])
    a_t, a_s = ACP[t], ACP[s]
    sig = lambda a: ((1 - a) / a).sqrt()  # noqa: E731
    x_t = torch.randn(1, 4, 4, 4)
    exact = x_t / a_t.sqrt() * (var + sig(a_s) ** 2).sqrt() / (var + sig(a_t) ** 2).sqrt() * a_s.sqrt()
    err = {name: float((fn(eps, x_t, t, s, ACP) - exact).abs().max()) for name, fn in
           (("euler", euler_step), ("heun", heun_step), ("ddim", ddim_step))}
    assert err["heun"] < 0.3 * err["euler"]  # measured 0.22 for this step
    assert err["ddim"] == pytest.approx(err["euler"], rel=1e-3)  # DDIM is Euler in (σ, x/√ᾱ)


def test_solver_substeps_converge_to_the_exact_ode_solution_on_gaussian_data() -> None:
    """Each hop of a coarse grid (here 200 timesteps, the embedded student's N = 5) solved in k sub-steps: the error
    to the exact solution falls as 1/k (first order), and k = 1 is the plain step."""
    from cdx.distill.solvers import substep_solver

    var = 0.25

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ACP[t].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * x / (a * var + 1 - a)

    t, s = torch.tensor([999, 799, 199]), torch.tensor([799, 599, 0])
    a_t, a_s = ACP[t].reshape(-1, 1, 1, 1), ACP[s].reshape(-1, 1, 1, 1)
    sig = lambda a: ((1 - a) / a).sqrt()  # noqa: E731
    x_t = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = x_t / a_t.sqrt() * (var + sig(a_s) ** 2).sqrt() / (var + sig(a_t) ** 2).sqrt() * a_s.sqrt()
    assert substep_solver(ddim_step, 1) is ddim_step
    err = {k: (substep_solver(ddim_step, k)(eps, x_t, t, s, ACP) - exact).abs().amax(dim=(1, 2, 3)) for k in (1, 4)}
    assert bool((err[4] < 0.35 * err[1]).all())  # measured ≈ 0.26–0.32 per hop
    with pytest.raises(InputError, match=r"--solver-substeps 300: more than the 1000 // 5 timesteps of one hop"):
        DistillConfig(num_solver_steps=5, solver_substeps=300).validate(1000)


def test_skipping_grid_matches_lcm() -> None:
    grid = skipping_timesteps(1000, 50)
    assert grid[0] == 19 and grid[-1] == 999 and len(grid) == 50


def test_pseudo_huber_limits() -> None:
    small, big = torch.full((4,), 1e-5), torch.full((4,), 10.0)
    zero = torch.zeros(4)
    assert float(consistency_loss(small, zero, "huber", 0.001)) == pytest.approx(1e-10 / 0.002, rel=1e-2)  # float32 rounding
    assert float(consistency_loss(big, zero, "huber", 0.001)) == pytest.approx(10.0, rel=1e-3)
    assert float(consistency_loss(big, zero, "l2")) == pytest.approx(100.0)


def test_guided_student_starts_as_the_teacher(tiny_sd: Path) -> None:
    from diffusers import UNet2DConditionModel

    teacher = UNet2DConditionModel.from_config({**load_latent_pipeline(tiny_sd).unet.config, "time_cond_proj_dim": None})
    student = make_student(teacher.eval(), guided=True, embedding_dim=64)
    x, t, emb = torch.randn(1, 4, 16, 16), torch.tensor([500]), torch.randn(1, 16, 32)
    with torch.no_grad():
        ref = teacher(x, t, encoder_hidden_states=emb).sample
        out = student.eval()(x, t, encoder_hidden_states=emb, timestep_cond=torch.randn(1, 64)).sample
    torch.testing.assert_close(out, ref)


def _small_config(**kw) -> DistillConfig:
    return DistillConfig(**{"steps": 4, "batch_size": 4, "lr": 1e-4, "checkpoint_every": 2, "sample_every": 0, **kw})


@needs_data
def test_tiny_sd_distills_saves_and_loads_with_diffusers(tiny_sd: Path, tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    parts = load_latent_pipeline(tiny_sd)
    before = [p.clone() for p in parts.unet.parameters()]
    out = tmp_path / "student"
    result = distill_student(tiny_sd, out, _small_config(steps=3), limit=16, show=False)
    assert result["steps"] == 3 and math.isfinite(result["final_loss"])
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe).__name__ == "LatentConsistencyModelPipeline"
    assert type(pipe.scheduler).__name__ == "LCMScheduler"
    for steps in (1, 4):
        images = pipe("Sneaker", num_inference_steps=steps, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
        assert images.shape == (1, 64, 64, 3) and float(images.std()) > 0
    assert all(torch.equal(a, b) for a, b in zip(before, load_latent_pipeline(tiny_sd).unet.parameters(), strict=True))
    info = json.loads((out / "cdx.json").read_text())  # which teacher UNet it learnt (continue-unet changes only that)
    assert info["teacher_unet_sha256"] == sha256_file(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors")


@needs_data
def test_ema_target_moves_toward_student(tiny_sd: Path, tmp_path: Path) -> None:
    from cdx.distill.data import load_dataset

    distiller = ConsistencyDistiller(load_latent_pipeline(tiny_sd), load_dataset(size=64, limit=16),
                                     _small_config(lr=1e-3, ema_decay=0.5), tmp_path)
    start = [p.clone() for p in distiller.target.parameters()]
    distiller.train_step()
    student = list(distiller.accelerator.unwrap_model(distiller.student).parameters())
    moved = [(t - s0).abs().max() for t, s0 in zip(distiller.target.parameters(), start, strict=True)]
    assert max(float(m) for m in moved) > 0
    for t, s0, s in zip(distiller.target.parameters(), start, student, strict=True):
        torch.testing.assert_close(t, 0.5 * s0 + 0.5 * s)  # EMA with decay 0.5


@needs_data
def test_resume_is_exact(tiny_sd: Path, tmp_path: Path) -> None:
    from cdx.distill.data import load_dataset

    data = load_dataset(size=64, limit=16)
    straight = ConsistencyDistiller(load_latent_pipeline(tiny_sd), data, _small_config(), tmp_path / "a")
    straight.run(show=False)
    first = ConsistencyDistiller(load_latent_pipeline(tiny_sd), data, _small_config(), tmp_path / "b")
    first.run(show=False, stop_at=2)
    state_file = next((tmp_path / "b" / "checkpoints").glob("checkpoint-0000002")) / "state.json"
    state = json.loads(state_file.read_text())
    assert state["seconds"] > 0  # the training time so far travels with the checkpoint
    state_file.write_text(json.dumps({**state, "seconds": 1000.0}))
    resumed = ConsistencyDistiller(load_latent_pipeline(tiny_sd), data, _small_config(), tmp_path / "b")
    assert resumed.resume() == 2 and resumed.seconds_before == 1000.0
    resumed.run(show=False)
    assert resumed.history == straight.history
    for a, b in zip(straight.target.parameters(), resumed.target.parameters(), strict=True):
        assert torch.equal(a, b)


@needs_data
def test_nan_loss_stops_and_names_the_step(tiny_sd: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cdx.distill import distiller as module
    from cdx.distill.data import load_dataset

    calls = {"n": 0}
    real = module.consistency_loss

    def flaky(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(module, "consistency_loss", flaky)
    distiller = ConsistencyDistiller(load_latent_pipeline(tiny_sd), load_dataset(size=64, limit=16), _small_config(),
                                     tmp_path)
    with pytest.raises(CdxError, match=r"NaN/inf loss at step 3.*checkpoint-0000002"):
        distiller.run(show=False)


def test_teacher_without_vae_or_with_v_prediction_is_refused(tiny_sd: Path, tmp_path: Path) -> None:
    import json

    broken = tmp_path / "no_vae"
    shutil.copytree(tiny_sd, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(InputError, match=r"missing vae/config\.json"):
        load_latent_pipeline(broken)
    vpred = tmp_path / "vpred"
    shutil.copytree(tiny_sd, vpred)
    cfg_path = vpred / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="prediction_type 'v_prediction' is not supported"):
        ConsistencyDistiller(load_latent_pipeline(vpred), None, _small_config(), tmp_path / "w")  # type: ignore[arg-type]


def _embedded_teacher() -> str:
    from cdx.defaults import default_teacher

    return default_teacher()


@needs_data
def test_embedded_teacher_loss_decreases_on_a_fixed_batch(tmp_path: Path) -> None:
    """With the target frozen (EMA rate 1), small gradient steps on one batch must lower that batch's loss.

    The student starts as the trained teacher, close to a minimum: Adam's first step moves every weight by about
    `lr`, which at 1e-5 already raises the loss, so the steps here are small (3e-6).
    """
    from cdx.distill.data import load_dataset

    distiller = ConsistencyDistiller(load_latent_pipeline(_embedded_teacher()), load_dataset(limit=64),
                                     _small_config(batch_size=16, lr=3e-6, ema_decay=1.0), tmp_path)
    batch = distiller.sample_batch()
    losses = [distiller.train_step(batch) for _ in range(6)]
    assert losses[-1] < 0.9 * losses[0], losses


@needs_data
def test_embedded_teacher_distills_into_a_loadable_student(tmp_path: Path) -> None:
    from diffusers import DiffusionPipeline

    out = tmp_path / "student"
    distill_student(_embedded_teacher(), out, _small_config(steps=2, batch_size=8), limit=64, show=False)
    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert pipe.unet.config.time_cond_proj_dim == 256  # guidance w distilled into the student
    images = pipe(class_labels=[0, 7], num_inference_steps=2, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 32, 32, 1)
    assert (out / "sample_grid.png").is_file()


@needs_data
def test_lr_warmup_ramps_linearly_from_the_step_counter(tiny_sd: Path, tmp_path: Path) -> None:
    from cdx.distill.data import load_dataset

    distiller = ConsistencyDistiller(load_latent_pipeline(tiny_sd), load_dataset(size=64, limit=16),
                                     _small_config(lr=1e-4, lr_warmup_steps=4), tmp_path)
    seen = []
    for step in range(6):
        distiller.step = step
        distiller.train_step()
        seen.append(distiller.optimizer.param_groups[0]["lr"])
    assert seen == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])


def test_model_card_command_reproduces_the_saved_recipe() -> None:
    from cdx.distill.distiller import DistillConfig
    from cdx.distill.model_card import distill_command

    recipe = DistillConfig(steps=600, lr=2e-4, lr_warmup_steps=50, guidance_range=(2.0, 6.0)).as_dict()
    assert distill_command(recipe, "out/s") == ("cdx distill --out out/s --steps 600 --lr 0.0002 --lr-warmup-steps 50 "
                                                "--guidance-min 2.0 --guidance-max 6.0")
    assert distill_command(DistillConfig().as_dict(), "out/s") == "cdx distill --out out/s"
    rerun = DistillConfig(init_student="out/base", num_solver_steps=10, ode_regression_weight=0.5).as_dict()
    assert distill_command(rerun, "out/s") == ("cdx distill --out out/s --num-solver-steps 10 --init-student out/base "
                                               "--ode-regression-weight 0.5")


def test_every_distill_option_has_a_model_card_flag() -> None:
    """A DistillConfig field added without a flag would silently drop out of every model card's reproduce command."""
    from cdx.distill.distiller import DistillConfig
    from cdx.distill.model_card import _DISTILL_FLAGS, _DISTILL_NOT_FLAGS

    assert set(DistillConfig().as_dict()) == set(_DISTILL_FLAGS) | _DISTILL_NOT_FLAGS


# ---- issue 10: validation, resume refusal, work-folder ownership, EDM export, AutoencoderTiny ----------------------
@pytest.mark.parametrize(("overrides", "message"), [
    ({"num_solver_steps": 0}, "--num-solver-steps 0: must be >= 1"),
    ({"checkpoint_every": 0}, "--checkpoint-every 0: must be >= 1"),
    ({"gradient_accumulation": 0}, "--grad-accum 0: must be >= 1"),
    ({"guidance_range": (5.0, 2.0)}, "--guidance-min 5.0 > --guidance-max 2.0"),
    ({"mixed_precision": "fp8"}, "unknown --mixed-precision 'fp8'"),
    ({"solver": "rk4"}, "unknown --solver 'rk4'"),
    ({"lora_rank": -1}, "--lora-rank -1"),
    ({"batch_size": 0}, "--batch-size 0"),
    ({"solver_substeps": 0}, "--solver-substeps 0: must be >= 1"),
])
def test_every_bad_knob_is_one_line(overrides: dict, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        DistillConfig(**overrides).validate()


def test_more_solver_steps_than_timesteps_is_refused() -> None:
    DistillConfig(num_solver_steps=1000).validate(1000)
    with pytest.raises(InputError, match="exceeds the teacher's num_train_timesteps 1000"):
        DistillConfig(num_solver_steps=1001).validate(1000)


def test_sampling_steps_beyond_the_distillation_grid_are_refused() -> None:
    from cdx.distill.consistency import check_sampling_steps

    check_sampling_steps({"original_inference_steps": 50}, 50)
    for bad in (0, 51):
        with pytest.raises(InputError, match=rf"--steps {bad}: a consistency student samples with 1\.\.50 steps"):
            check_sampling_steps({"original_inference_steps": 50}, bad)


def _cli(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cdx.cli", *args], capture_output=True, text=True, check=False)


@pytest.mark.parametrize("args", [
    ["distill", "--num-solver-steps", "0"],
    ["distill", "--guidance-min", "5", "--guidance-max", "2", "--checkpoint-every", "0"],
    ["sample", "--steps", "51"],
    ["convert", "--steps", "51"],
], ids=["solver-steps-0", "guidance-order", "sample-steps-51", "convert-steps-51"])
def test_cli_bad_arguments_are_one_line_and_exit_nonzero(args: list[str], tiny_sd: Path, tmp_path: Path) -> None:
    model = ["--model", str(tiny_sd)] if args[0] == "sample" else [str(tiny_sd)] if args[0] == "convert" else [
        "--teacher", str(tiny_sd)]
    proc = _cli(*args, *model, "--out", str(tmp_path / "out"))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


@needs_data
def test_resume_refuses_a_checkpoint_made_with_other_options(tiny_sd: Path, tmp_path: Path) -> None:
    from cdx.distill.data import load_dataset

    data = load_dataset(size=64, limit=16)
    ConsistencyDistiller(load_latent_pipeline(tiny_sd), data, _small_config(), tmp_path).run(show=False, stop_at=2)
    changed = ConsistencyDistiller(load_latent_pipeline(tiny_sd), data, _small_config(lr=3e-4), tmp_path)
    with pytest.raises(InputError, match=r"checkpoint was made with lr=0\.0001, this run has lr=0\.0003"):
        changed.resume()
    longer = ConsistencyDistiller(load_latent_pipeline(tiny_sd), data, _small_config(steps=6), tmp_path)
    assert longer.resume() == 2  # more steps is a continuation, not a different run


def test_no_resume_deletes_only_what_cdx_created(tmp_path: Path) -> None:
    from cdx.distill.checkpoint import WORK_MARKER, prepare_work_dir

    user = tmp_path / "project"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a cdx work folder"):
        prepare_work_dir(user, resume=False)  # e.g. --work-dir . on a user's folder
    assert (user / "notes.txt").read_text() == "mine"

    work = tmp_path / "run.work"
    prepare_work_dir(work, resume=True)
    assert (work / WORK_MARKER).is_file()
    (work / "checkpoints" / "checkpoint-0000002").mkdir(parents=True)
    (work / "samples").mkdir()
    (work / "hf-datasets").mkdir()
    (work / "kept.txt").write_text("x")
    prepare_work_dir(work, resume=False)
    assert sorted(p.name for p in work.iterdir()) == sorted([WORK_MARKER, "hf-datasets", "kept.txt"])


def _edm_formula(t: int, acp: torch.Tensor, sigma_data: float = 0.5) -> tuple[float, float]:
    """Song et al. (2023) on the VP noise level, normalised (distill/consistency.py's docstring), written out here."""
    sigma = math.sqrt((1 - float(acp[t])) / float(acp[t]))
    sigma_min = math.sqrt((1 - float(acp[0])) / float(acp[0]))
    d = sigma - sigma_min
    return sigma_data**2 / (d**2 + sigma_data**2), d / math.sqrt(d**2 + sigma_data**2)


def test_an_edm_student_is_exported_with_edm_constants(tiny_sd: Path, tmp_path: Path) -> None:
    import json

    from diffusers import DDPMScheduler

    from cdx.convert.export import ConvertOptions, convert

    student = tmp_path / "edm_student"
    shutil.copytree(tiny_sd, student)
    (student / "cdx.json").write_text(json.dumps({"kind": "student", "parameterization": "edm"}))
    manifest = json.loads(convert(student, tmp_path / "onnx", ConvertOptions(target="onnx", steps=2, seeds=(0,))).read_text())
    schedule = manifest["schedule"]
    assert schedule["parameterization"] == "edm"
    acp = DDPMScheduler.from_pretrained(student / "scheduler").alphas_cumprod.to(torch.float64)
    for step in schedule["steps"]:
        c_skip, c_out = _edm_formula(step["timestep"], acp)
        assert step["c_skip"] == pytest.approx(c_skip, rel=1e-9) and step["c_out"] == pytest.approx(c_out, rel=1e-9)
    t_last = schedule["steps"][-1]["timestep"]
    lcm_c_skip = 0.25 / ((10 * t_last) ** 2 + 0.25)
    assert abs(schedule["steps"][-1]["c_skip"] - lcm_c_skip) > 1e-2  # not the LCM constants
    assert manifest["models"][0]["parity"]["checked"] == "numeric"


def _tiny_autoencoder_pipeline(tiny_sd: Path, folder: Path) -> Path:
    import json

    from diffusers import AutoencoderTiny

    shutil.copytree(tiny_sd, folder)
    shutil.rmtree(folder / "vae")
    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8), decoder_block_out_channels=(8, 8, 8),
                    num_encoder_blocks=(1, 1, 1), num_decoder_blocks=(1, 1, 1), latent_channels=4).save_pretrained(
        folder / "vae", safe_serialization=True)
    index = json.loads((folder / "model_index.json").read_text())
    index["vae"] = ["diffusers", "AutoencoderTiny"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder


def test_autoencoder_tiny_teacher_distills_samples_and_builds_a_generator(tiny_sd: Path, tmp_path: Path) -> None:
    import numpy as np
    from diffusers import DiffusionPipeline

    from cdx.distill.generator import build_generator
    from cdx.tiny_models import write_captioned_imagefolder

    teacher = _tiny_autoencoder_pipeline(tiny_sd, tmp_path / "taesd_teacher")
    parts = load_latent_pipeline(teacher)
    assert type(parts.vae).__name__ == "AutoencoderTiny" and parts.vae_scale_factor == 4
    data = write_captioned_imagefolder(tmp_path / "data", 4, "x {i}", seed=0)
    out = tmp_path / "student"
    distill_student(teacher, out, _small_config(steps=2, batch_size=2, num_solver_steps=10), data=data, show=False)
    pipe = DiffusionPipeline.from_pretrained(out)
    assert type(pipe.vae).__name__ == "AutoencoderTiny"
    images = pipe("x 1", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 3) and np.isfinite(images).all()
    generator, _ = build_generator(load_latent_pipeline(out))
    with torch.no_grad():
        image = generator(*generator.example_inputs(seed=0).values())
    assert tuple(image.shape) == tuple(generator.output_specs()[0].shape) == (1, 3, 64, 64)


@needs_data
def test_init_student_starts_from_that_student_not_the_teacher(tiny_sd: Path, tmp_path: Path) -> None:
    from cdx.distill.data import load_dataset
    from cdx.distill.distiller import student_from_folder

    first = tmp_path / "first"
    distill_student(tiny_sd, first, _small_config(steps=2, lr=1e-2), limit=16, show=False)
    saved = load_latent_pipeline(first).unet.state_dict()
    distiller = ConsistencyDistiller(load_latent_pipeline(tiny_sd), load_dataset(size=64, limit=16),
                                     _small_config(init_student=str(first)), tmp_path / "work")
    started = distiller.accelerator.unwrap_model(distiller.student).state_dict()
    teacher = distiller.teacher.state_dict()
    assert all(torch.equal(started[k], v) for k, v in saved.items())
    assert any(not torch.equal(started[k], teacher[k]) for k in teacher)  # lr 1e-2 moved it away from the teacher
    from diffusers import UNet2DConditionModel

    teacher_unet = load_latent_pipeline(tiny_sd).unet
    unguided = tmp_path / "unguided"
    UNet2DConditionModel.from_config({**teacher_unet.config, "time_cond_proj_dim": None}).save_pretrained(unguided / "unet")
    with pytest.raises(InputError, match="time_cond_proj_dim"):
        student_from_folder(unguided, teacher_unet, guided=True)
    other = tmp_path / "other"
    UNet2DConditionModel.from_config({**teacher_unet.config, "block_out_channels": (16, 32)}).save_pretrained(
        other / "unet")
    with pytest.raises(InputError, match="block_out_channels"):
        student_from_folder(other, teacher_unet, guided=True)
    with pytest.raises(InputError, match="not found"):
        student_from_folder(tmp_path / "studnet", teacher_unet, guided=True)
    with pytest.raises(InputError, match="--lora-rank"):
        _small_config(init_student=str(first), lora_rank=4).validate()
    second = tmp_path / "second"  # its record starts with the first one's, so the model card lists both stages
    distill_student(tiny_sd, second, _small_config(steps=1, init_student=str(first)), limit=16, show=False)
    first_info = json.loads((first / "cdx.json").read_text())
    first_info.pop("class_names", None)
    assert json.loads((second / "cdx.json").read_text())["init_from"] == first_info


def test_a_checkpoint_older_than_an_option_resumes_when_the_option_keeps_its_default(tmp_path: Path) -> None:
    """An option added after a checkpoint was written (absent from its state.json) counts as its default value."""
    from cdx.distill.checkpoint import check_resumable

    now = DistillConfig().as_dict()
    saved = {k: v for k, v in now.items() if not k.startswith("ode_regression")}
    check_resumable({"config": saved}, now, {}, tmp_path, defaults=DistillConfig().as_dict())
    with pytest.raises(InputError, match=r"made with ode_regression_weight=0\.0, this run has ode_regression_weight=1\.0"):
        check_resumable({"config": saved}, {**now, "ode_regression_weight": 1.0}, {}, tmp_path,
                        defaults=DistillConfig().as_dict())


def test_class_teacher_trains_with_label_dropout_and_saves_a_loadable_pipeline(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`cdx teacher train`'s class-conditional path on 8 random images: every UNet batch holds real labels and, at
    dropout 0.5, the null class (the last class embedding) used for CFG; the folder loads as a latent pipeline."""
    from cdx.distill import teacher as module
    from cdx.distill.data import ImageDataset
    from cdx.distill.teacher import TeacherRecipe, train_teacher

    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1, torch.arange(8) % 2, ["a", "b"])
    recipe = TeacherRecipe(image_size=16, vae_channels=(16, 16), vae_steps=2, vae_batch=4, unet_channels=(16, 32),
                           unet_steps=3, unet_batch=8, label_dropout=0.5)
    seen: list[torch.Tensor] = []
    real = module.ddpm_batch

    def recording(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[1].clone())
        return out

    monkeypatch.setattr(module, "ddpm_batch", recording)
    train_teacher(tmp_path, data, recipe, show=False)
    labels = torch.cat(seen)
    assert len(seen) == 3 and set(labels.tolist()) == {0, 1, 2}  # 2 = the null class
    parts = load_latent_pipeline(tmp_path)
    assert parts.conditioning == "class_label" and int(parts.unet.config.num_class_embeds) == 3
