"""Measure one model on one runtime in a fresh process, so cold load time and peak RSS mean what they say.

Run as `python -m cdx.benchmarks.worker SPEC.json`; writes the JSON result and the outputs (.npy) it names.
"""

from __future__ import annotations

import importlib
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _rss_mb() -> float:
    """Peak resident set of this process (VmHWM; unlike ru_maxrss it is not inherited from the parent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def save_inputs(path: Path, samples: list[dict[str, np.ndarray]], contrast: list[dict[str, np.ndarray]] | None) -> None:
    """Per-sample input dicts (and their contrast-conditioning twins) in one .npz."""
    arrays = {f"s{i}.{k}": v for i, sample in enumerate(samples) for k, v in sample.items()}
    arrays |= {f"c{i}.{k}": v for i, sample in enumerate(contrast or []) for k, v in sample.items()}
    np.savez(path, **arrays)


def load_inputs(path: str | Path) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]]:
    """Inverse of `save_inputs` (input order as saved)."""
    groups: dict[str, dict[int, dict[str, np.ndarray]]] = {"s": {}, "c": {}}
    with np.load(path) as data:
        for key in data.files:
            head, name = key.split(".", 1)
            groups[head[0]].setdefault(int(head[1:]), {})[name] = data[key]
    return [groups["s"][i] for i in sorted(groups["s"])], [groups["c"][i] for i in sorted(groups["c"])]


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Cold load, first run, warm runs and peak RSS of `spec['model']` on `spec['runtime']`."""
    from cdx.golden_io import read_golden, unstack
    from cdx.manifest import find_model, load_manifest
    from cdx.metrics import percentile_stats
    from cdx.runtimes.base import RUNTIMES, open_runner

    started = time.perf_counter()
    folder = Path(spec["folder"])
    manifest = load_manifest(folder, verify=True)
    model = find_model(manifest, spec["model"])
    contrast: list[dict[str, np.ndarray]] | None = None
    if spec.get("inputs_path"):  # built by the parent (torch's RNG), so this process imports only its runtime
        samples, contrast = load_inputs(spec["inputs_path"])
    else:
        inputs, _ = read_golden(folder, model)
        samples = unstack(inputs)
    start = time.perf_counter()
    importlib.import_module(RUNTIMES[spec["runtime"]][0])  # runtime libraries load here, not in the cold load
    import_ms = (time.perf_counter() - start) * 1e3
    rss_before = _rss_mb()

    start = time.perf_counter()
    runner = open_runner(folder, manifest, model, spec["runtime"], spec.get("threads"))
    cold_load_ms = (time.perf_counter() - start) * 1e3

    start = time.perf_counter()
    outputs = [runner.run(samples[0])]
    first_run_ms = (time.perf_counter() - start) * 1e3
    call_s = first_run_ms / 1e3
    if len(samples) > 1:  # a warm call: what every later call costs (the first one also pays lazy initialisation)
        start = time.perf_counter()
        outputs.append(runner.run(samples[1]))
        call_s = min(call_s, time.perf_counter() - start)
    plan = _plan(spec, call_s, len(samples), bool(contrast), started)
    outputs += [runner.run(sample) for sample in samples[len(outputs):plan.seeds]]
    outputs = outputs[:plan.seeds]

    for _ in range(plan.warmup):
        runner.run(samples[0])
    timings = []
    for _ in range(plan.runs):
        start = time.perf_counter()
        runner.run(samples[0])
        timings.append((time.perf_counter() - start) * 1e3)

    name = runner.output_names[0]
    np.save(spec["outputs_path"], np.concatenate([o[name] for o in outputs]))
    if contrast:
        np.save(spec["contrast_path"], np.concatenate([runner.run(b)[name] for b in contrast[:plan.seeds]]))
    return {
        **runner.describe(),
        "import_ms": import_ms,
        "cold_load_ms": cold_load_ms,
        "first_run_ms": first_run_ms,
        "latency": percentile_stats(timings),
        "rss_before_load_mb": rss_before,
        "peak_rss_mb": _rss_mb(),
        "plan": plan.as_dict(spec.get("budget_s") or 0.0, call_s * 1e3),
    }


def _plan(spec: dict[str, Any], call_s: float, seeds: int, contrast: bool, started: float) -> Any:
    """Seeds/warm-up/runs for this worker: as asked, or what fits what is left of `spec['budget_s']` (budget.py)."""
    from cdx.benchmarks.budget import plan_calls

    budget = spec.get("budget_s")
    left = None if budget is None else budget - (time.perf_counter() - started)  # <= 0: the minimum plan
    return plan_calls(left, call_s, seeds, spec["warmup"], spec["runs"], contrast,
                      choose_seeds=spec.get("choose_seeds", True))


def _open_graph(folder: Path, manifest: dict[str, Any], model: dict[str, Any], runtime: str, threads: int | None) -> Any:
    """A runner for one of the teacher's graphs (its entries are not in an artifact manifest, so no format lookup)."""
    from cdx.runtimes.base import RUNTIMES

    module_name, class_name, _ = RUNTIMES[runtime]
    return getattr(importlib.import_module(module_name), class_name)(folder, manifest, model, threads)


def measure_teacher(spec: dict[str, Any]) -> dict[str, Any]:
    """The teacher's DDIM sampler (CFG) on `spec['runtime']` at each of `spec['steps']`, batch 1; images per seed.

    Its step and decoder graphs come from `spec['teacher_manifest']` (bench_teacher.py); the loop is
    `loops.run_teacher`, the same on every runtime.
    """
    from cdx.benchmarks.budget import plan_calls
    from cdx.distill.loops import run_teacher
    from cdx.metrics import percentile_stats
    from cdx.runtimes.base import RUNTIMES

    path = Path(spec["teacher_manifest"])
    manifest = json.loads(path.read_text("utf-8"))
    samples, _ = load_inputs(spec["inputs_path"])
    start = time.perf_counter()
    importlib.import_module(RUNTIMES[spec["runtime"]][0])
    import_ms = (time.perf_counter() - start) * 1e3
    rss_before = _rss_mb()
    start = time.perf_counter()
    step, decoder = (_open_graph(path.parent, manifest, model, spec["runtime"], spec.get("threads"))
                     for model in manifest["models"])
    cold_load_ms = (time.perf_counter() - start) * 1e3
    prediction_type = manifest["schedule"]["prediction_type"]
    by_steps: dict[str, Any] = {}
    budget = spec.get("budget_s")
    started = time.perf_counter()
    for index, steps in enumerate(spec["steps"]):
        schedule = manifest["schedule"]["ddim"][str(steps)]

        def sample(inputs: dict[str, np.ndarray], schedule: list[dict[str, Any]] = schedule) -> np.ndarray:
            return run_teacher(step, decoder, schedule, inputs, prediction_type)

        step_started = time.perf_counter()
        start = time.perf_counter()
        images = [sample(samples[0])]
        first_run_ms = (time.perf_counter() - start) * 1e3
        images += [sample(inputs) for inputs in samples[1:]]
        call_s = min(first_run_ms / 1e3, (time.perf_counter() - start) / len(samples))
        share = None
        if budget is not None:  # what is left, shared out over the step counts still to run in proportion to their steps
            left = budget - (time.perf_counter() - started)
            share = max(left, 0.0) * steps / sum(spec["steps"][index:]) - (time.perf_counter() - step_started)
        plan = plan_calls(share, call_s, len(samples), spec["warmup"], spec["runs"], choose_seeds=False)
        for _ in range(plan.warmup):
            sample(samples[0])
        timings = []
        for _ in range(plan.runs):
            start = time.perf_counter()
            sample(samples[0])
            timings.append((time.perf_counter() - start) * 1e3)
        np.save(f"{spec['outputs_prefix']}.{steps}.npy", np.concatenate(images))
        by_steps[str(steps)] = {"first_run_ms": first_run_ms, "latency": percentile_stats(timings),
                                "plan": plan.as_dict(share or 0.0, call_s * 1e3)}
    return {**step.describe(), "import_ms": import_ms, "cold_load_ms": cold_load_ms, "by_steps": by_steps,
            "rss_before_load_mb": rss_before, "peak_rss_mb": _rss_mb()}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text("utf-8"))
    try:
        result = {"ok": True, **(measure_teacher(spec) if spec.get("kind") == "teacher" else measure(spec))}
    except Exception as exc:  # reported to the parent as one line
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    Path(spec["result_path"]).write_text(json.dumps(result), "utf-8")


if __name__ == "__main__":
    main()
