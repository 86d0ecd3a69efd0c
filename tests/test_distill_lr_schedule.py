"""Issue 12: `cdx distill --lr-schedule linear|cosine` (after the warm-up, decay to 0 at --steps; a lower learning
rate at the end of a run is what moved the one-step FID)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
from distill_helpers import assert_refused_in_one_line, small_distiller

from cdx.distill.distiller import DistillConfig, learning_rate
from cdx.errors import InputError


def test_constant_keeps_the_linear_warm_up_then_the_base_rate() -> None:
    config = DistillConfig(lr=1e-4, lr_warmup_steps=4, steps=10)
    assert [learning_rate(config, s) for s in range(6)] == pytest.approx([2.5e-5, 5e-5, 7.5e-5, 1e-4, 1e-4, 1e-4])


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_decays_reach_zero_at_the_last_step_from_the_warm_up_end(schedule: str) -> None:
    config = DistillConfig(lr=1e-4, lr_warmup_steps=2, steps=12, lr_schedule=schedule)
    rates = [learning_rate(config, s) for s in range(2, 13)]
    assert rates[0] == pytest.approx(1e-4) and rates[-1] == pytest.approx(0.0, abs=1e-12)
    assert rates[5] == pytest.approx(0.5e-4)  # halfway: both shapes are at half the rate
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_cosine_is_the_half_cosine() -> None:
    config = DistillConfig(lr=1.0, steps=100, lr_schedule="cosine")
    assert learning_rate(config, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))


def test_each_step_trains_at_its_scheduled_rate(tmp_path: Path) -> None:
    d = small_distiller(tmp_path, steps=4, lr=1e-3, lr_schedule="linear")
    for step in range(4):
        d.run(show=False, stop_at=step + 1)
        assert d.optimizer.param_groups[0]["lr"] == pytest.approx(learning_rate(d.config, step))
    assert d.optimizer.param_groups[0]["lr"] == pytest.approx(0.25e-3)


def test_resuming_a_decay_with_other_steps_is_refused_in_one_line(tmp_path: Path) -> None:
    small_distiller(tmp_path, steps=2, lr_schedule="cosine").run(show=False, stop_at=1)
    with pytest.raises(InputError, match="with --lr-schedule cosine the decay ends at --steps") as err:
        small_distiller(tmp_path, steps=4, lr_schedule="cosine").resume()
    assert "\n" not in str(err.value)
    assert small_distiller(tmp_path, steps=2, lr_schedule="cosine").resume() == 1


def test_an_unknown_schedule_is_one_line() -> None:
    assert_refused_in_one_line({"lr_schedule": "step"}, "unknown --lr-schedule 'step'; valid: constant, linear, cosine")


def test_the_model_card_command_carries_the_schedule() -> None:
    from cdx.distill.model_card import distill_command

    assert "--lr-schedule cosine" in distill_command(DistillConfig(lr_schedule="cosine").as_dict(), "out/s")
    assert "--lr-schedule" not in distill_command(DistillConfig().as_dict(), "out/s")
