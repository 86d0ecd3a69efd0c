"""`cdx bench device BUNDLE --adb`: run a native runner on a connected Android phone and pull its results file.

Pushes the bundle, the runner binary (built with the Android NDK from `runtimes/native/`, see its README) and the
runner's shared libraries to `/data/local/tmp/cdx/`, runs it with `adb shell`, pulls the `cdx-device-results/1` file
and validates it. It needs `adb` and a phone with USB debugging on: no phone was connected where cdx is developed,
so this path has only been exercised up to its "no phone connected" error.
"""

from __future__ import annotations

import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from cdx.errors import InputError, UnsupportedError

REMOTE_ROOT = "/data/local/tmp/cdx"
STATE_TIMEOUT_S = 30.0  # `adb get-state`: a phone that does not answer within this is not usable
COMMAND_TIMEOUT_S = 600.0  # push / pull / shell
RUN_TIMEOUT_S = 1800.0  # the benchmark itself


def _adb(serial: str | None, *args: str, timeout: float = COMMAND_TIMEOUT_S) -> str:
    cmd = ["adb", *(["-s", serial] if serial else []), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise UnsupportedError("adb not found: install Android platform-tools (Debian: `apt-get install adb`)") from None
    except subprocess.TimeoutExpired:
        raise UnsupportedError(f"`{shlex.join(cmd)}` timed out after {timeout:g} s (phone locked, asleep or "
                               "unauthorised? check `adb devices`)") from None
    if done.returncode != 0:
        message = (done.stderr or done.stdout).strip().splitlines()
        raise UnsupportedError(f"`{shlex.join(cmd)}` failed: {message[-1] if message else f'exit {done.returncode}'}")
    return done.stdout


def adb_device_results(bundle: str | Path, runner: str | Path, libs: list[str | Path] | None = None,
                       serial: str | None = None, runs: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Run `runner` on the phone against `bundle`; return the validated results document."""
    from cdx.bundle import open_bundle

    bundle, runner = Path(bundle), Path(runner)
    if not runner.is_file():
        raise InputError(f"runner not found: {runner} (build it with the NDK: runtimes/native/README.md)")
    state = _adb(serial, "get-state", timeout=STATE_TIMEOUT_S).strip()  # first: cheap, and the usual failure
    if state != "device":
        raise UnsupportedError(f"no phone connected (adb state: {state or 'none'}); enable USB debugging")
    with open_bundle(bundle) as (folder, _):  # checks every sha256 before anything is pushed; a zip's copy is removed
        return _run_on_phone(folder, runner, libs or [], serial, runs, warmup)


def _run_on_phone(folder: Path, runner: Path, libs: list[str | Path], serial: str | None, runs: int,
                  warmup: int) -> dict[str, Any]:
    from cdx.benchmarks.device import load_device_results

    remote = f"{REMOTE_ROOT}/{folder.name}"
    _adb(serial, "shell", f"rm -rf {shlex.quote(remote)} && mkdir -p {shlex.quote(REMOTE_ROOT)}")
    _adb(serial, "push", str(folder), remote)
    for path in [runner, *(Path(p) for p in libs)]:
        _adb(serial, "push", str(path), f"{REMOTE_ROOT}/{path.name}")
    results = f"{remote}/device_results.json"
    command = (f"cd {REMOTE_ROOT} && chmod +x {shlex.quote(runner.name)} && LD_LIBRARY_PATH={REMOTE_ROOT} "
               f"./{shlex.quote(runner.name)} {shlex.quote(remote)} --runs {runs} --warmup {warmup} "
               f"--out {shlex.quote(results)}")
    _adb(serial, "shell", command, timeout=RUN_TIMEOUT_S)
    with tempfile.TemporaryDirectory(prefix="cdx-adb-") as tmp:
        local = Path(tmp) / "device_results.json"
        _adb(serial, "pull", results, str(local))
        return load_device_results(local)
