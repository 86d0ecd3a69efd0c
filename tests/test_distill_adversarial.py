"""Issue 12: the adversarial term of `cdx distill` (a latent critic, real latents vs the one-step outputs) and the
critic module it shares with `cdx distill-decoder`."""

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

from cdx.distill.critic import AdversarialCritic, PatchDiscriminator, hinge_critic_loss, seeded_critic
from cdx.distill.distiller import DistillConfig
from cdx.errors import InputError


def test_runs_without_the_term_keep_their_draws_and_the_term_reuses_the_regression_noise(tmp_path: Path) -> None:
    plain = small_distiller(tmp_path / "a").sample_batch()
    assert "ode_noise" not in plain
    regression = small_distiller(tmp_path / "b", ode_regression_weight=1.0).sample_batch()
    both = small_distiller(tmp_path / "c", ode_regression_weight=1.0, adversarial_weight=0.1).sample_batch()
    assert set(regression) == set(both)
    for key in ("x0", "t", "noise", "g", "ode_noise"):
        assert torch.equal(regression[key], both[key]), key
    alone = small_distiller(tmp_path / "d", adversarial_weight=0.1).sample_batch()
    assert torch.equal(alone["ode_noise"], regression["ode_noise"])  # its own noise, drawn where the regression's is


def test_the_term_changes_the_update_only_when_on(tmp_path: Path) -> None:
    """Same batch, same regression: the student moves differently exactly when the generator term is on, by a loss
    that differs by weight × −critic(f(z, T)); before `adversarial_start` only the critic learns."""
    options = {"ode_regression_weight": 1.0, "lr": 1e-3}
    reference = small_distiller(tmp_path / "ref", **options)
    batch = reference.sample_batch()
    ref_loss = reference.train_step(dict(batch))
    on = small_distiller(tmp_path / "on", adversarial_weight=0.5, **options)
    later = small_distiller(tmp_path / "later", adversarial_weight=0.5, adversarial_start=5, **options)
    critic_before = [p.detach().clone() for p in later.critic.critic.parameters()]
    on_loss, later_loss = on.train_step(dict(batch)), later.train_step(dict(batch))

    assert later_loss == ref_loss and "generator" not in later.terms
    assert all(torch.equal(a, b) for a, b in zip(student_weights(reference), student_weights(later), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(critic_before, later.critic.critic.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(student_weights(reference), student_weights(on), strict=True))
    assert on_loss == pytest.approx(ref_loss + 0.5 * on.terms["generator"], abs=1e-6)


def test_the_decoded_critic_judges_the_frozen_decoders_images_and_passes_the_gradient_to_the_student(
        tmp_path: Path) -> None:
    """`critic_input="decoded"`: the critic takes the decoder's image channels, the generator term is −critic of the
    one-step outputs' decoded images (the critic as it was before this step's update), and the decoder — frozen —
    neither learns nor keeps a gradient, while the student's update differs from the run without the term."""
    from cdx.distill.sampling import decode_latents

    options = {"ode_regression_weight": 1.0, "lr": 1e-3}
    reference = small_distiller(tmp_path / "ref", **options)
    batch = reference.sample_batch()
    ref_loss = reference.train_step(dict(batch))
    on = small_distiller(tmp_path / "on", adversarial_weight=0.5, critic_input="decoded", **options)
    vae = on.parts.vae
    assert on.critic.critic.net[0].in_channels == int(vae.config.out_channels) != on.parts.latent_channels
    decoder_before = [p.detach().clone() for p in vae.parameters()]
    b = on._on_device(dict(batch))
    with torch.no_grad():
        images = decode_latents(vae, on.one_step(b), on.parts.latent_scaling_factor, on.parts.latent_shift_factor)
        expected = -on.critic.critic(images, b["labels"][: len(images)]).mean()
    on_loss = on.train_step(dict(batch))

    assert on.terms["generator"] == pytest.approx(float(expected), abs=1e-6)
    assert on_loss == pytest.approx(ref_loss + 0.5 * on.terms["generator"], abs=1e-6)
    assert all(p.grad is None for p in vae.parameters())
    assert all(torch.equal(a, p) for a, p in zip(decoder_before, vae.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(student_weights(reference), student_weights(on), strict=True))


def test_the_default_depth_keeps_the_two_level_critics_layout() -> None:
    """Checkpoints and committed runs hold the two-level critic: depth 2 keeps its module names and shapes."""
    critic = PatchDiscriminator(4, 64, num_classes=10)
    shapes = {name: tuple(v.shape) for name, v in critic.state_dict().items()}
    assert shapes == {"net.0.weight": (64, 4, 4, 4), "net.0.bias": (64,), "net.2.weight": (128, 64, 4, 4),
                      "net.2.bias": (128,), "net.3.weight": (128,), "net.3.bias": (128,),
                      "net.5.weight": (1, 128, 3, 3), "net.5.bias": (1,), "project.weight": (10, 128)}


@pytest.mark.parametrize(("depth", "side"), [(1, 16), (2, 8), (3, 4)])
def test_each_level_of_the_critic_halves_its_score_map_and_doubles_its_width(depth: int, side: int) -> None:
    """A 32-px input gives a (32 / 2**depth)² score map from features 16 · 2**(depth − 1) wide, which the label
    projection matches."""
    critic = seeded_critic(0, 1, 16, num_classes=10, depth=depth)
    convs = [m for m in critic.net if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == depth + 1 and [c.stride[0] for c in convs] == [2] * depth + [1]
    assert convs[-1].in_channels == critic.project.weight.shape[1] == 16 * 2 ** (depth - 1)
    with torch.no_grad():
        scores = critic(torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([3, 4]))
    assert scores.shape == (2, 1, side, side)


def test_a_deeper_decoded_critic_trains_and_one_too_deep_is_refused_before_training(tmp_path: Path) -> None:
    deeper = small_distiller(tmp_path / "deep", adversarial_weight=0.5, critic_input="decoded", critic_depth=3,
                             ode_regression_weight=1.0)
    assert len([m for m in deeper.critic.critic.net if isinstance(m, torch.nn.Conv2d)]) == 4
    deeper.train_step(deeper.sample_batch())
    assert "generator" in deeper.terms and "critic" in deeper.terms
    with pytest.raises(InputError, match=r"^--critic-depth 4: the critic halves its 8-px latent input 4 times; "
                                         r"at most 3 here$"):
        small_distiller(tmp_path / "too-deep", adversarial_weight=0.5, critic_depth=4)


def test_the_two_step_critic_judges_the_students_own_two_step_samples(tmp_path: Path) -> None:
    """`critic_steps=2`: the critic sees the one-step outputs and then the 2-step samples of the same noises, equal
    to diffusers' LCMScheduler (the exported scheduler) stepping the student with the batch's re-noising draw; the
    first step is detached (only the last step trains); runs without it keep their draws."""
    from diffusers import LCMScheduler

    options = {"adversarial_weight": 0.5, "num_solver_steps": 5, "critic_input": "decoded"}
    d = small_distiller(tmp_path / "two", critic_steps=2, **options)
    plain = small_distiller(tmp_path / "one", **options).sample_batch()
    b = d.sample_batch()
    assert "renoise" not in plain and all(torch.equal(plain[k], b[k]) for k in ("x0", "t", "noise", "ode_noise"))
    n = len(b["ode_noise"])
    assert b["renoise"].shape == (1, *b["ode_noise"].shape)
    b["renoise"] = torch.randn(b["renoise"].shape, generator=torch.Generator().manual_seed(5))
    b = d._on_device(b)
    one_step = d.one_step(b).requires_grad_()
    samples = d.critic_samples(b, one_step)
    assert samples.shape[0] == 2 * n and torch.equal(samples[:n], one_step)
    (grad,) = torch.autograd.grad(samples[n:].sum(), one_step, allow_unused=True)
    assert grad is None or not grad.any()  # the second step's input is the first step's output, detached

    scheduler = LCMScheduler.from_config(d.parts.scheduler_config, timestep_scaling=10.0, original_inference_steps=5)
    scheduler.set_timesteps(2)
    cond, w_emb = d.one_step_conditions(b)
    unet = d.accelerator.unwrap_model(d.student)
    latents, gen = b["ode_noise"], torch.Generator().manual_seed(5)
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = unet(latents, t.expand(n), **cond, timestep_cond=w_emb).sample
            latents, denoised = scheduler.step(eps, t, latents, generator=gen, return_dict=False)
    assert torch.allclose(samples[n:].detach(), denoised, atol=1e-5)


def test_the_two_step_critics_generator_term_trains_the_students_second_step(tmp_path: Path) -> None:
    """The generator term is −critic over both samplers' outputs, and it moves the student differently from the
    one-step critic on the same batch."""
    options = {"adversarial_weight": 0.5, "num_solver_steps": 5, "lr": 1e-3}
    one, two = small_distiller(tmp_path / "one", **options), small_distiller(tmp_path / "two", critic_steps=2,
                                                                               **options)
    batch = two.sample_batch()
    b = two._on_device(dict(batch))
    with torch.no_grad():
        samples = two.critic_samples(b, two.one_step(b))
        labels = b["labels"][: len(b["ode_noise"])]
        expected = -two.critic.critic(samples, torch.cat([labels, labels])).mean()
    one.train_step({k: v for k, v in batch.items() if k != "renoise"})
    two.train_step(dict(batch))
    assert two.terms["generator"] == pytest.approx(float(expected), abs=1e-6)
    assert any(not torch.equal(a, c) for a, c in zip(student_weights(one), student_weights(two), strict=True))


def _toy_critic_losses(real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor | None, steps: int) -> list[float]:
    from accelerate import Accelerator

    critic = seeded_critic(0, real.shape[1], 16, num_classes=0 if labels is None else 2)
    trainer = AdversarialCritic(Accelerator(cpu=True), critic, lr=2e-3)
    fake_labels = None if labels is None else 1 - labels
    return [trainer.update(real, fake, labels, fake_labels) for _ in range(steps)]


def test_the_critic_learns_real_from_fake_latents() -> None:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(32, 4, 8, 8, generator=gen) + 0.5
    fake = 0.5 * torch.randn(32, 4, 8, 8, generator=gen)
    losses = _toy_critic_losses(real, fake, None, 60)
    assert losses[-1] < 0.5 * losses[0] and losses[-1] < 0.5, losses[::10]


def test_the_projection_critic_learns_which_label_a_latent_fits() -> None:
    """Real: +1 latents labelled 0, −1 latents labelled 1; fake: the same latents with the other label. The
    marginals are equal, so only the class projection can tell them apart."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(32) % 2
    latents = (1 - 2 * labels.float()).reshape(-1, 1, 1, 1) + 0.3 * torch.randn(32, 4, 8, 8, generator=gen)
    losses = _toy_critic_losses(latents, latents, labels, 80)
    assert losses[0] == pytest.approx(2.0, abs=0.2)  # zero-initialised projection: starts unconditional, at chance
    assert losses[-1] < 1.0, losses[::10]


def test_r1_adds_half_gamma_times_the_squared_gradient_at_real_latents() -> None:
    """A linear critic (one 1×1 conv, no projection): its input gradient is known, so the penalty is too."""
    from accelerate import Accelerator

    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(2, 1, 1, bias=False)
            torch.nn.init.constant_(self.conv.weight, 0.5)

        def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
            return self.conv(x)

    real, fake = torch.full((2, 2, 3, 3), 4.0), torch.full((2, 2, 3, 3), -4.0)  # hinge margins hold: hinge = 0
    plain = AdversarialCritic(Accelerator(cpu=True), Linear(), lr=1e-9)
    penalised = AdversarialCritic(Accelerator(cpu=True), Linear(), lr=1e-9, r1=2.0)
    # Σ over the score map of ∂/∂x: each input position feeds one output with weight 0.5 → ‖∇‖² = 2·9·0.25 = 4.5
    assert plain.update(real, fake) == 0.0
    assert penalised.update(real, fake) == pytest.approx(2.0 / 2 * 4.5)


def test_hinge_loss_is_zero_once_the_margins_hold() -> None:
    assert float(hinge_critic_loss(torch.full((3,), 1.5), torch.full((3,), -2.0))) == 0.0
    assert float(hinge_critic_loss(torch.zeros(3), torch.zeros(3))) == 2.0


def test_the_decoder_critic_is_the_shared_one() -> None:
    from cdx.distill import decoder

    assert decoder.PatchDiscriminator is PatchDiscriminator and decoder.AdversarialCritic is AdversarialCritic


@pytest.mark.parametrize(("critic_input", "critic_steps"), [("latent", 1), ("decoded", 2)])
def test_resume_with_the_critic_is_bit_identical(tiny_sd: Path, tmp_path: Path, critic_input: str,
                                                 critic_steps: int) -> None:
    """A text teacher (the critic projects the pooled prompt embedding; decoded: RGB images, with the 2-step
    samples' re-noising draws); 4 steps straight vs 2 + resume + 2."""
    options = {"steps": 4, "checkpoint_every": 2, "adversarial_weight": 0.3, "adversarial_start": 1, "lr": 1e-3,
               "critic_r1": 0.5, "critic_input": critic_input, "critic_steps": critic_steps}
    straight, resumed = straight_and_resumed(tmp_path, tiny_sd, options)
    assert resumed.history == straight.history and resumed.terms == straight.terms
    assert_same_weights([(straight.target, resumed.target), (straight.critic.critic, resumed.critic.critic)])
    assert_same_optimizer_state(straight.critic.optimizer, resumed.critic.optimizer)


def test_a_plain_checkpoint_is_not_resumed_with_the_term(tmp_path: Path) -> None:
    small_distiller(tmp_path, steps=1).run(show=False)
    with pytest.raises(InputError, match=r"adversarial_weight=0\.0, this run has adversarial_weight=0\.1"):
        small_distiller(tmp_path, steps=1, adversarial_weight=0.1).resume()


@pytest.mark.parametrize(("overrides", "message"), [
    ({"adversarial_weight": -0.1}, "--adversarial-weight -0.1: must be >= 0"),
    ({"adversarial_start": -1}, "--adversarial-start -1: must be >= 0"),
    ({"critic_lr": 0.0}, "--critic-lr 0.0: must be > 0"),
    ({"critic_r1": -1.0}, "--critic-r1 -1.0: must be >= 0"),
    ({"critic_input": "pixels"}, "--critic-input 'pixels': must be one of latent | decoded"),
    ({"critic_input": "decoded"}, "--critic-input decoded without --adversarial-weight: "),
    ({"critic_depth": 0, "adversarial_weight": 0.1}, "--critic-depth 0: must be >= 1"),
    ({"critic_depth": 3}, "--critic-depth 3 without --adversarial-weight: "),
    ({"critic_steps": 0, "adversarial_weight": 0.1}, "--critic-steps 0: must be in 1..50 (--num-solver-steps"),
    ({"critic_steps": 6, "num_solver_steps": 5, "adversarial_weight": 0.1}, "--critic-steps 6: must be in 1..5 "),
    ({"critic_steps": 2}, "--critic-steps 2 without --adversarial-weight: "),
    ({"adversarial_weight": 0.1, "method": "ct"}, "--adversarial-weight with --method ct: "),
])
def test_bad_adversarial_flags_are_one_line(overrides: dict, message: str) -> None:
    assert_refused_in_one_line(overrides, message)


@pytest.mark.parametrize(("option", "flag"), [("adversarial_weight", "--adversarial-weight"),
                                             ("dmd_weight", "--dmd-weight")])
def test_a_one_step_term_with_a_rollout_cache_is_refused_before_the_teacher_loads(tmp_path: Path, option: str,
                                                                                 flag: str) -> None:
    from cdx.distill.distiller import distill_student

    with pytest.raises(InputError, match=rf"^--rollout-cache with {flag}: "):
        distill_student(tmp_path / "no-such-teacher", tmp_path / "out", DistillConfig(**{option: 0.1}),
                        rollout_cache=tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_cli_refuses_a_negative_weight_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cdx.cli", "distill", "--adversarial-weight", "-1", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, check=False)
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "adversarial" in line]
    assert proc.returncode != 0 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr


def test_the_model_card_command_carries_the_critics_input_and_depth() -> None:
    from cdx.distill.model_card import distill_command

    recipe = DistillConfig(adversarial_weight=0.1, critic_input="decoded").as_dict()
    assert "--critic-input decoded" in distill_command(recipe, "o")
    assert "--critic-input" not in distill_command(DistillConfig(adversarial_weight=0.1).as_dict(), "o")
    deeper = DistillConfig(adversarial_weight=0.1, critic_input="decoded", critic_depth=3, critic_steps=2).as_dict()
    assert "--critic-steps 2" in distill_command(deeper, "o")
    assert "--critic-depth 3" in distill_command(deeper, "o")
    assert "--critic-depth" not in distill_command(DistillConfig(adversarial_weight=0.1).as_dict(), "o")
