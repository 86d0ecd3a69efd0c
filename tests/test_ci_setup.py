"""One test command that is the CI: `make test` runs the setup (.ci/setup.sh) before lint and the suite, `.ci/run` is
`make test`, a failed setup step fails under CI=true, and a test whose tool is missing fails under CI=true instead of
skipping (tests/conftest.py `require_tool`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from conftest import TOOLS, Tool, require_tool

REPO = Path(__file__).resolve().parents[1]


def _setup(tmp_path: Path, ci: str | None, steps: str = "inception") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    # a venv that does not exist: the inception step fails at once, with no network and no install
    env.update(VENV=str(tmp_path / "no-venv"), CDX_SETUP_STEPS=steps)
    return subprocess.run(["bash", str(REPO / ".ci" / "setup.sh")], capture_output=True, text=True, env=env,
                          timeout=60, check=False)


def test_a_failed_setup_step_fails_under_ci_and_warns_elsewhere(tmp_path: Path) -> None:
    proc = _setup(tmp_path, "true")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED under CI=true: inception" in proc.stderr
    proc = _setup(tmp_path, None)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING: inception not set up" in proc.stderr
    assert _setup(tmp_path, None, "nonsense").returncode == 2


def test_make_test_runs_the_setup_before_the_suite_and_ci_runs_make_test() -> None:
    plan = subprocess.run(["make", "-n", "-B", "test"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True).stdout
    assert plan.index(".ci/setup.sh") < plan.index("ruff check") < plan.index("pytest"), plan
    run = (REPO / ".ci" / "run").read_text()
    commands = [line for line in run.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert any(line.endswith("make test") for line in commands), commands
    assert not any("setup.sh" in line or "apt-get" in line or "make install" in line for line in commands), commands


@pytest.fixture()
def fake_tool(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(TOOLS, "fake-tool", Tool(lambda: "fake-tool binary missing", "apt-get install fake-tool"))
    return "fake-tool"


def test_a_missing_tool_skips_with_the_install_command(fake_tool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"fake-tool binary missing \(install: apt-get install fake-tool\)"):
        require_tool(fake_tool)


def test_a_missing_tool_fails_under_ci(fake_tool: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"CI=true and the setup did not provide 'fake-tool'"):
        require_tool(fake_tool)


def test_a_present_tool_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TOOLS, "here", Tool(lambda: None, "nothing"))
    monkeypatch.setenv("CI", "true")
    require_tool("here")

