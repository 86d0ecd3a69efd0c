"""The methods benchmark (benchmarks/consistency_methods.py): its records, teacher-call counts, gap probes, table."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from cdx.benchmarks import consistency_methods as cm
from cdx.errors import InputError


def test_unknown_method_key_is_one_line_naming_the_valid_ones():
    with pytest.raises(InputError, match="unknown --methods ctt; valid: cd, cd-cached, ct"):
        cm.parse_methods("ct,ctt")


def test_gap_roughness_is_zero_for_a_straight_curve_and_grows_with_zigzag():
    rows = [{"adjacent_mean": v} for v in (1.0, 2.0, 3.0, 4.0)]
    assert cm.gap_roughness(rows) == pytest.approx(0.0)
    zigzag = [{"adjacent_mean": v} for v in (1.0, 3.0, 1.0, 3.0)]
    assert cm.gap_roughness(zigzag) == pytest.approx(2.0)  # |second differences| 4, 4 over a mean of 2
    assert np.isnan(cm.gap_roughness(rows[:2]))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Two updates each of online CD, cached CD and CT + VR on the embedded teacher, gaps probed every update."""
    out = tmp_path_factory.mktemp("methods")
    cm.main(["--methods", "cd,cd-cached,ct-vr", "--steps", "2", "--snapshots", "1", "--batch", "4", "--limit", "64",
             "--gap-every", "1", "--gap-trajectories", "2", "--gap-grid", "3", "--n", "10", "--no-inception",
             "--validation-images", "8", "--validation-timesteps", "4", "--out", str(out)])
    return out, {p.stem: json.loads(p.read_text()) for p in (out / "methods").glob("*.json")}


def test_teacher_calls_per_update_are_counted_not_assumed(tiny_run):
    _, records = tiny_run
    online = records["cd"]["snapshots"][-1]["teacher_calls_per_update"]
    assert online > 0  # the guided DDIM step of online CD calls the teacher every update
    assert records["cd-cached"]["snapshots"][-1]["teacher_calls_per_update"] == 0
    assert records["cd-cached"]["cache"]["teacher_calls"] > 0  # paid once, when the cache was written
    assert records["ct-vr"]["snapshots"][-1]["teacher_calls_per_update"] == 0


def test_every_snapshot_is_saved_and_scored_by_the_evaluate_rows(tiny_run):
    _, records = tiny_run
    snaps = records["ct-vr"]["snapshots"]
    assert [s["updates"] for s in snaps] == [1, 2]
    assert sorted(r["steps"] for r in snaps[0]["rows"]) == list(cm.SAMPLE_STEPS)
    assert all(np.isfinite(r["fd_classifier"]) for s in snaps for r in s["rows"])


def test_gaps_are_probed_from_update_zero_on_fixed_trajectories(tiny_run):
    _, records = tiny_run
    gaps = records["cd"]["gaps"]
    assert [g["updates"] for g in gaps] == [0, 1, 2]
    # update 0 is the same network (the teacher's weights) and the same trajectories for every method
    assert gaps[0]["rows"] == records["ct-vr"]["gaps"][0]["rows"]
    assert gaps[1]["rows"] != gaps[0]["rows"]


def test_render_joins_the_saved_records(tiny_run):
    out, _ = tiny_run
    text = cm.main(["--render", "--out", str(out)])
    assert text.index("CD (online)") < text.index("CD (cached rollouts)") < text.index("CT + variance-reduced target")
    assert "writing the cache" in text and "roughness over t" in text
    assert (out / "gap_drift.png").stat().st_size > 0


def test_validation_mse_is_on_the_same_held_out_draws_for_every_snapshot(tiny_run):
    _, records = tiny_run
    snaps = records["cd"]["snapshots"]
    assert all(s["validation"]["images"] == 8 and s["validation"]["timesteps_per_image"] == 4 for s in snaps)
    again = cm.validation_mse(Path(snaps[-1]["student"]), 3.0, 8, 4)
    assert again["mse"] == pytest.approx(snaps[-1]["validation"]["mse"], rel=1e-6)  # seeded draws, not fresh noise
    assert snaps[0]["validation"]["mse"] != snaps[-1]["validation"]["mse"]  # a different network scores differently


def test_validate_fills_a_snapshot_that_lacks_it_and_the_table_shows_it(tiny_run):
    out, records = tiny_run
    record = copy.deepcopy(records["ct-vr"])
    expected = record["snapshots"][0].pop("validation")
    (out / "methods" / "ct-vr.json").write_text(json.dumps(record))
    cm.main(["--validate", "--validation-images", "8", "--validation-timesteps", "4", "--out", str(out)])
    filled = json.loads((out / "methods" / "ct-vr.json").read_text())["snapshots"][0]["validation"]
    assert filled["mse"] == pytest.approx(expected["mse"], rel=1e-6)
    text = (out / "consistency_methods.md").read_text()
    assert f"{filled['mse']:.4f} ± " in text and "8 Fashion-MNIST test images × 4 seeded random t" in text
