"""The stage display: finished stages get a tick and a time; a `warning:` line is printed as it is, not as a stage."""

from __future__ import annotations

import pytest

from cdx.ui import stages


def test_warning_is_its_own_line_and_not_a_finished_stage(capsys: pytest.CaptureFixture[str]) -> None:
    with stages("job") as say:
        say("loading")
        say("warning: --decoder [d] was distilled from another VAE decoder")
        say("exporting")
    lines = [line.strip() for line in capsys.readouterr().err.splitlines() if line.strip()]
    ticked = [line for line in lines if line.startswith("✓")]
    assert [line.split(" (")[0] for line in ticked] == ["✓ loading", "✓ exporting"]
    assert "warning: --decoder [d] was distilled from another VAE decoder" in lines
