"""Benchmark statistics, the report schema, and a real bench run on the ONNX artifact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cdx.benchmarks.metrics import max_abs_diff, percentile_stats, psnr
from cdx.errors import ManifestError


def test_percentile_stats_on_known_samples() -> None:
    stats = percentile_stats([float(v) for v in range(1, 101)])
    assert stats["median_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["min_ms"] == 1.0 and stats["max_ms"] == 100.0 and stats["runs"] == 100
    assert stats["iqr_ms"] == pytest.approx(49.5)
    with pytest.raises(ValueError):
        percentile_stats([])


def test_psnr_and_max_abs() -> None:
    import numpy as np

    a = np.zeros((1, 3, 4, 4), np.float32)
    b = a + 0.1
    assert psnr(a, b) == pytest.approx(20.0)
    assert psnr(a, a) == float("inf")
    assert max_abs_diff(a, b) == pytest.approx(0.1)


def test_bench_writes_a_valid_report(onnx_export: Path, tmp_path: Path) -> None:
    from cdx.benchmarks.bench import BenchOptions, bench
    from cdx.benchmarks.report import validate_report, write_report

    report = bench(onnx_export, BenchOptions(runs=5, warmup=1, threads=2))
    json_path, md_path = write_report(report, tmp_path)
    loaded = json.loads(json_path.read_text())
    validate_report(loaded)
    rows = {r["runtime"]: r for r in loaded["results"]}
    assert set(rows) == {"torch", "onnxruntime"}
    ort_row = rows["onnxruntime"]
    assert ort_row["latency"]["runs"] == 5 and ort_row["latency"]["median_ms"] > 0
    assert ort_row["drift_vs_eager"]["max_abs"] <= 1e-4 and ort_row["drift_vs_eager"]["samples"] == 4
    assert ort_row["file_size_bytes"] > 1_000_000 and ort_row["peak_rss_mb"] > 10
    assert "| generator_16x16 | onnxruntime | fp32 |" in md_path.read_text()


def test_report_schema_refuses_malformed() -> None:
    from cdx.benchmarks.report import validate_report

    with pytest.raises(ManifestError, match="required property"):
        validate_report({"report_version": "1.0"})
