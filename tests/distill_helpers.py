"""Shared by the tests of `cdx distill`'s one-step terms (test_distill_adversarial.py, test_distill_dmd.py): a small
distiller on random images, a copy of its student's weights, and the one-line refusal check of a bad option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cdx.defaults import default_teacher
from cdx.distill.data import FASHION_MNIST_CLASSES, ImageDataset
from cdx.distill.distiller import ConsistencyDistiller, DistillConfig
from cdx.distill.loading import load_latent_pipeline
from cdx.errors import InputError


def small_distiller(work: Path, teacher: str | Path | None = None, size: int = 32, **options: object) -> ConsistencyDistiller:
    """A distiller on 8 random images, batch 4, 2 steps (+ `options`); the embedded class teacher by default."""
    gen = torch.Generator().manual_seed(0)
    data = ImageDataset(torch.rand(8, 1 if teacher is None else 3, size, size, generator=gen) * 2 - 1,
                        torch.arange(8) % 10, list(FASHION_MNIST_CLASSES))
    config = DistillConfig(**{"steps": 2, "batch_size": 4, "sample_every": 0, "checkpoint_every": 1, "seed": 3,
                              "ode_regression_batch": 2, **options})
    return ConsistencyDistiller(load_latent_pipeline(teacher or default_teacher()), data, config, work)


def student_weights(d: ConsistencyDistiller) -> list[torch.Tensor]:
    return [p.detach().clone() for p in d.accelerator.unwrap_model(d.student).parameters()]


def assert_refused_in_one_line(overrides: dict, message: str) -> None:
    """DistillConfig(**overrides).validate() raises an InputError that starts with `message` and has one line."""
    with pytest.raises(InputError, match="^" + re.escape(message)) as err:
        DistillConfig(**overrides).validate()
    assert "\n" not in str(err.value)


def straight_and_resumed(work: Path, teacher: Path, options: dict) -> tuple[ConsistencyDistiller, ConsistencyDistiller]:
    """A 64-px run of `options["steps"]` steps straight, and the same run stopped at its first checkpoint, resumed by
    a fresh distiller and finished (the pair a bit-identical-resume test compares)."""
    straight = small_distiller(work / "straight", teacher, 64, **options)
    straight.run(show=False)
    small_distiller(work / "stopped", teacher, 64, **options).run(show=False, stop_at=options["checkpoint_every"])
    resumed = small_distiller(work / "stopped", teacher, 64, **options)
    assert resumed.resume() == options["checkpoint_every"]
    resumed.run(show=False)
    return straight, resumed


def assert_same_weights(pairs: list[tuple[torch.nn.Module, torch.nn.Module]]) -> None:
    for one, other in pairs:
        for a, b in zip(one.parameters(), other.parameters(), strict=True):
            assert torch.equal(a, b)


def assert_same_optimizer_state(one: torch.optim.Optimizer, other: torch.optim.Optimizer) -> None:
    for a, b in zip(one.state_dict()["state"].values(), other.state_dict()["state"].values(), strict=True):
        assert all(torch.equal(a[k], b[k]) for k in a)
