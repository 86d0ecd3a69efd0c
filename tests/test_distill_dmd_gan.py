"""Issue 12: DMD2's GAN branch of `cdx distill` (`--dmd-gan-weight`): a head on the DMD fake denoiser's bottleneck
that tells noised real latents from noised one-step outputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from distill_helpers import (
    assert_refused_in_one_line,
    assert_same_optimizer_state,
    assert_same_weights,
    small_distiller,
    straight_and_resumed,
)

from cdx.distill.bottleneck_critic import FakeScoreWithCritic, critic_loss, generator_gan_loss
from cdx.distill.distiller import DistillConfig

GAN = {"dmd_weight": 0.5, "dmd_gan_weight": 0.1, "ode_regression_weight": 1.0}


def _inputs(d, n: int = 2):
    """A batch's one-step outputs (detached), their conditions and guidance embedding, and the same samples' data."""
    b = d._on_device(d.draw_batch())
    cond, w_emb = d.one_step_conditions(b)
    return d.one_step(b).detach(), cond, w_emb, b["x0"][:n]


def test_without_logits_the_wrapper_is_the_unet(tmp_path: Path) -> None:
    d = small_distiller(tmp_path, **GAN)
    fake = d.dmd.fake
    assert isinstance(fake, FakeScoreWithCritic)
    x, cond, w_emb, _ = _inputs(d)
    t = torch.tensor([500, 100])
    kwargs = d.dmd._kwargs(cond, w_emb)
    with torch.no_grad():
        plain = fake.unet(x, t, **kwargs).sample
        wrapped = fake(x, t, **kwargs).sample
        out, logits = fake(x, t, logits=True, **kwargs)
    assert torch.equal(plain, wrapped) and torch.equal(plain, out.sample)
    side = int(fake.config.sample_size) // 2 ** (len(fake.config.block_out_channels) - 1)  # the mid block's grid
    assert logits.shape == (2, 1, side, side)


def test_the_up_head_adds_the_finest_maps_patches_to_the_bottlenecks(tmp_path: Path) -> None:
    """`--dmd-gan-heads mid+up`: the logits are the mid head's patches (the same head, from the same seed, as with
    `mid`) followed by one per location of the last up block's map (the latent's grid)."""
    mid_only = small_distiller(tmp_path / "mid", **GAN)
    both = small_distiller(tmp_path / "both", dmd_gan_heads="mid+up", **GAN)
    assert both.dmd.fake.up_head is not None and mid_only.dmd.fake.up_head is None
    x, cond, w_emb, _ = _inputs(both)
    t = torch.tensor([500, 100])
    kwargs = both.dmd._kwargs(cond, w_emb)
    with torch.no_grad():
        _, mid_logits = mid_only.dmd.fake(x, t, logits=True, **kwargs)
        out, logits = both.dmd.fake(x, t, logits=True, **kwargs)
        plain = both.dmd.fake(x, t, **kwargs).sample
    side = int(both.dmd.fake.config.sample_size)
    assert logits.shape == (2, mid_logits[0].numel() + side * side)
    assert torch.allclose(logits[:, : mid_logits[0].numel()], mid_logits.flatten(1), atol=1e-6)
    assert torch.equal(plain, out.sample)


def test_the_generator_term_reaches_the_outputs_but_not_the_fake_denoiser(tmp_path: Path) -> None:
    d = small_distiller(tmp_path, **GAN)
    x, cond, w_emb, _ = _inputs(d)
    x = x.clone().requires_grad_(True)
    d.dmd.gan_generator_loss(x, cond, w_emb, d.rng).backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in d.dmd.fake.parameters())  # no stale gradient for the fake's own update
    assert all(p.requires_grad for p in d.dmd.fake.parameters())  # unfrozen again for that update


@pytest.mark.parametrize("heads", ["mid", "mid+up"])
def test_the_head_learns_to_tell_real_latents_from_outputs(tmp_path: Path, heads: str) -> None:
    """Outputs shifted far from the data: updates of the fake denoiser with its head(s) must take the heads' loss at a
    fixed noise level from chance (2 ln 2) to well below it, the data scoring above the outputs."""
    d = small_distiller(tmp_path, fake_score_lr=3e-3, dmd_critic_weight=1.0, dmd_gan_heads=heads, **GAN)
    x, cond, w_emb, real = _inputs(d)
    fake_outputs = x + 3.0
    t = torch.full((len(real),), 300)

    def scores() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return tuple(d.dmd.fake(v, t, logits=True, **d.dmd._kwargs(cond, w_emb))[1] for v in (real, fake_outputs))

    before = float(critic_loss(*scores()))
    for _ in range(30):
        d.dmd.update(fake_outputs, cond, w_emb, d.rng, real=real)
    real_logits, fake_logits = scores()
    assert before == pytest.approx(2 * math.log(2), abs=0.3)
    assert float(critic_loss(real_logits, fake_logits)) < 0.5 * before
    assert float(real_logits.mean()) > float(fake_logits.mean())


def test_the_losses_are_the_non_saturating_pair() -> None:
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    softplus = torch.nn.functional.softplus
    assert float(critic_loss(real, fake)) == pytest.approx(float(softplus(-real).mean() + softplus(fake).mean()))
    assert float(generator_gan_loss(fake)) == pytest.approx(float(softplus(-fake).mean()))


@pytest.mark.parametrize("dmd_start", [0, 5])
def test_the_term_joins_the_student_loss_from_dmd_start(tmp_path: Path, dmd_start: int) -> None:
    options = {"ode_regression_weight": 1.0, "dmd_weight": 0.5, "dmd_start": dmd_start, "lr": 1e-3}
    reference = small_distiller(tmp_path / "ref", **options)
    batch = reference.sample_batch()
    ref_loss = reference.train_step(dict(batch))
    on = small_distiller(tmp_path / "on", dmd_gan_weight=0.1, **options)
    assert torch.equal(on.sample_batch()["x0"], batch["x0"])  # the same draws, so the DMD terms' draws match too
    on_loss = on.train_step(dict(batch))
    assert "dmd_critic" in on.terms  # the head trains from step 0 either way
    if dmd_start:
        assert on_loss == ref_loss and "gan" not in on.terms
    else:
        assert on.terms["gan"] > 0 and on_loss == pytest.approx(ref_loss + 0.1 * on.terms["gan"], abs=1e-5)


@pytest.mark.parametrize("heads", ["mid", "mid+up"])
def test_resume_with_the_gan_head_is_bit_identical(tiny_sd: Path, tmp_path: Path, heads: str) -> None:
    """A text teacher (its prompt embeddings stacked for the head's pass); 4 steps straight vs 2 + resume + 2."""
    options = {"steps": 4, "checkpoint_every": 2, "dmd_weight": 0.5, "dmd_start": 1, "dmd_gan_weight": 0.05,
               "lr": 1e-3, "fake_score_lr": 1e-3, "dmd_gan_heads": heads}
    straight, resumed = straight_and_resumed(tmp_path, tiny_sd, options)
    assert resumed.history == straight.history and resumed.terms == straight.terms
    assert "gan" in straight.terms and "dmd_critic" in straight.terms
    assert_same_weights([(straight.target, resumed.target), (straight.dmd.fake, resumed.dmd.fake)])
    assert_same_optimizer_state(straight.dmd.optimizer, resumed.dmd.optimizer)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"dmd_gan_weight": 0.01}, "--dmd-gan-weight 0.01 without --dmd-weight: "),
    ({"dmd_weight": 0.5, "dmd_gan_weight": -1.0}, "--dmd-gan-weight -1.0: must be >= 0"),
    ({"dmd_weight": 0.5, "dmd_critic_weight": 0.0}, "--dmd-critic-weight 0.0: must be > 0"),
    ({"dmd_weight": 0.5, "dmd_gan_heads": "up"}, "--dmd-gan-heads 'up': must be one of mid | mid+up"),
])
def test_bad_gan_flags_are_one_line(overrides: dict, message: str) -> None:
    assert_refused_in_one_line(overrides, message)


def test_the_model_card_command_carries_the_gan_flags() -> None:
    from cdx.distill.model_card import distill_command

    recipe = DistillConfig(dmd_weight=0.5, dmd_gan_weight=0.02, dmd_critic_weight=0.05, dmd_gan_heads="mid+up")
    command = distill_command(recipe.as_dict(), "o")
    assert "--dmd-gan-weight 0.02" in command and "--dmd-critic-weight 0.05" in command
    assert "--dmd-gan-heads mid+up" in command
