"""Distillation at scale, for real: 2 gloo ranks through `accelerate launch`, kill -9 and exact resume, one writer.

`accelerate launch --multi_gpu --num_processes 2` runs two CPU ranks over gloo on a machine without a GPU
(../shared/STACK.md), so the DDP all-reduce, the per-rank data/generators and the main-process-only writes are the
real ones. Kill/resume runs the CLI in a subprocess and kills it with SIGKILL right after a checkpoint appears.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

PROBE = Path(__file__).with_name("distill_probe.py")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def captioned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An imagefolder + metadata.jsonl (diffusers' --train_data_dir layout) of 8 random RGB images."""
    from cdx.tiny_models import write_captioned_imagefolder

    return write_captioned_imagefolder(tmp_path_factory.mktemp("captioned"), 8, "picture number {i}", seed=0)


def test_two_ranks_agree_on_weights_draw_different_batches_and_write_once(tiny_sd: Path, captioned: Path,
                                                                          tmp_path: Path) -> None:
    out, work, report = tmp_path / "student", tmp_path / "work", tmp_path / "report"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--main_process_port", str(_free_port()), str(PROBE), str(tiny_sd), str(captioned), str(out), str(work),
           str(report), "4", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]  # two real processes, not one
    assert ranks[0]["student"] == ranks[1]["student"]  # DDP kept the replicas identical
    assert ranks[0]["target"] == ranks[1]["target"]
    assert ranks[0]["history"] == ranks[1]["history"] and len(ranks[0]["history"]) == 4  # loss averaged over ranks
    assert len(ranks[0]["batches"]) == 4 and not set(ranks[0]["batches"]) & set(ranks[1]["batches"])  # different draws
    # Exactly one output and one checkpoint set: the main process wrote them, each rank added its generator state.
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no staging left behind
    checkpoints = sorted(p.name for p in (work / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint-0000002", "checkpoint-0000004"]
    last = work / "checkpoints" / "checkpoint-0000004"
    assert {p.name for p in last.glob("generator-*.safetensors")} == {"generator-0.safetensors", "generator-1.safetensors"}
    assert len(list(last.glob("model*.safetensors"))) == 1 and (last / "target.safetensors").is_file()
    state = json.loads((last / "state.json").read_text())
    assert state["architecture"]["processes"] == 2 and state["step"] == 4
    saved = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    target = load_file(last / "target.safetensors")
    assert all(torch.equal(saved[k], target[k]) for k in target)  # the saved student is the EMA target


def _distill_cmd(teacher: Path, data: Path, out: Path, steps: int = 8) -> list[str]:
    return [sys.executable, "-m", "cdx.cli", "distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out),
            "--steps", str(steps), "--batch-size", "2", "--grad-accum", "2", "--checkpoint-every", "2",
            "--sample-every", "0", "--num-solver-steps", "10", "--lr", "1e-3"]


def test_kill_9_mid_run_then_the_same_command_resumes_exactly_with_grad_accum(tiny_sd: Path, captioned: Path,
                                                                              tmp_path: Path) -> None:
    straight = tmp_path / "straight"
    proc = subprocess.run(_distill_cmd(tiny_sd, captioned, straight), capture_output=True, text=True, env=_env(),
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    first_checkpoint = Path(str(killed) + ".work") / "checkpoints" / "checkpoint-0000002" / "state.json"
    running = subprocess.Popen(_distill_cmd(tiny_sd, captioned, killed), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=_env())
    deadline = time.monotonic() + 300
    while not first_checkpoint.is_file() and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    running.send_signal(signal.SIGKILL)
    assert running.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert first_checkpoint.is_file() and not killed.exists()

    resumed = subprocess.run(_distill_cmd(tiny_sd, captioned, killed), capture_output=True, text=True, env=_env(),
                             timeout=600, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step" in resumed.stdout
    a = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(killed / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads((p / "cdx.json").read_text())["final_loss"] for p in (straight, killed)]
    assert history[0] == history[1]
