"""`cdx ARGS` run in the test's own process, as the console script runs it, for the bad-input tests."""

from __future__ import annotations

import sys

import pytest


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str]:
    """(exit code, the one error line) of `cdx ARGS`; fails the test on a traceback or on more than one line (the
    ✓ stage lines of a multi-stage command are not counted)."""
    from cdx.cli import main

    monkeypatch.setattr(sys, "argv", ["cdx", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.strip().startswith("✓")]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return code, lines[0]
