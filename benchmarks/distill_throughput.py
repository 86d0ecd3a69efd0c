"""Distillation throughput of `cdx distill` on the tiny SD-shaped text teacher: steps/s and images/s for 1 vs 2
processes (`accelerate launch --multi_gpu --num_processes 2`, gloo ranks on a CPU box) and with/without
--cache-latents. Each row is a fresh run of the real CLI; the time is the training loop's own (model loading,
data decoding for the cache and process start-up are excluded), as `cdx distill` reports it.

    python -m cdx.benchmarks.distill_throughput --out out/distill_throughput.json [--steps 20] [--batch-size 4]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images(folder: Path, n: int = 32) -> Path:
    """An imagefolder + metadata.jsonl of random RGB images at the teacher's 64 px."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file_name": f"{i}.png", "text": f"random picture {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n", "utf-8")
    return folder


def run_case(teacher: Path, data: Path, work: Path, processes: int, cache: bool, steps: int, batch: int,
             threads: int) -> dict[str, Any]:
    """One `cdx distill` run; returns its loop seconds, steps/s and images/s (all processes together)."""
    out = work / f"student_p{processes}_c{int(cache)}"
    args = ["distill", "--teacher", str(teacher), "--data", str(data), "--out", str(out), "--steps", str(steps),
            "--batch-size", str(batch), "--checkpoint-every", str(steps), "--sample-every", "0",
            "--num-solver-steps", "50", "--no-resume"]
    if cache:
        args += ["--cache-latents", str(work / "latents")]
    if processes == 1:
        cmd = [sys.executable, "-m", "cdx.cli", *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--main_process_port", str(_free_port()), "-m", "cdx.cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"distill failed ({processes} processes, cache={cache}):\n{proc.stderr[-2000:]}")
    info = json.loads((out / "cdx.json").read_text("utf-8"))
    seconds = float(info["train_seconds"])
    return {"processes": processes, "cache_latents": cache, "steps": steps, "batch_per_process": batch,
            "threads_per_process": threads, "loop_seconds": seconds, "wall_seconds": round(wall, 1),
            "steps_per_s": round(steps / seconds, 3), "images_per_s": round(steps * batch * processes / seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/distill_throughput.json"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    args = parser.parse_args()
    from cdx.tiny_models import build_tiny_sd

    with tempfile.TemporaryDirectory(prefix="cdx-throughput-") as tmp:
        work = Path(tmp)
        teacher = build_tiny_sd(work / "teacher")
        data = _images(work / "data")
        rows = [run_case(teacher, data, work, p, c, args.steps, args.batch_size, args.threads)
                for p, c in ((1, False), (1, True), (2, False), (2, True))]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{os.cpu_count()} CPU cores", "rows": rows}, indent=2) + "\n", "utf-8")
    print("| processes | --cache-latents | steps/s | images/s | loop s |")
    print("|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['processes']} | {'yes' if r['cache_latents'] else 'no'} | {r['steps_per_s']} | {r['images_per_s']} "
              f"| {r['loop_seconds']} |")


if __name__ == "__main__":
    main()
