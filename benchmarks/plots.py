"""The report's PNG plots: latency per runtime/precision, drift vs size, and a side-by-side image grid (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_bars(report: dict[str, Any], path: Path) -> Path:
    """Median latency per row (bar) with the p90 as the whisker; log scale when the teacher is in."""
    plt = _pyplot()
    rows = report["results"]
    names = [f"{r['name']}\n{r['runtime']} {r['precision']}" for r in rows]
    median = np.array([r["latency"]["median_ms"] for r in rows])
    p90 = np.array([r["latency"]["p90_ms"] for r in rows])
    colors = ["#888888" if r["target"] == "teacher" else "#4c72b0" if r["runtime"] == "torch" else "#55a868"
              if r["runtime"] == "onnxruntime" else "#c44e52" for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(rows)), 4.5))
    ax.bar(range(len(rows)), median, yerr=[np.zeros_like(median), np.maximum(p90 - median, 0)], color=colors, capsize=3)
    ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("ms per image (median, whisker = p90)")
    if median.max() / max(median.min(), 1e-9) > 30:
        ax.set_yscale("log")
    ax.set_title(f"One-step latency, {report['settings']['threads']} threads — {report['machine']['cpu']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def drift_vs_size(report: dict[str, Any], path: Path) -> Path | None:
    """PSNR vs the eager float student (y) against artifact size (x), one labelled point per artifact."""
    rows = [r for r in report["results"] if r.get("drift_vs_eager") and r.get("file_size_bytes")]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows.sort(key=lambda r: (r["drift_vs_eager"]["psnr_db"], r["file_size_bytes"]))
    for i, r in enumerate(rows):
        x, y = r["file_size_bytes"] / 1e6, min(r["drift_vs_eager"]["psnr_db"], 120.0)
        ax.scatter(x, y, s=30)
        # neighbours in PSNR get labels staggered up/down so close points stay readable
        ax.annotate(f"{r['runtime']} {r['precision']}", (x, y), fontsize=7, xytext=(5, 8 - 12 * (i % 2)),
                    textcoords="offset points")
    ax.axhline(35, color="#c44e52", lw=0.8, ls="--", label="35 dB (float/fp16 gate)")
    ax.axhline(30, color="#dd8452", lw=0.8, ls=":", label="30 dB (quantized gate)")
    ax.set_xlabel("artifact size (MB)")
    ax.set_ylabel("PSNR vs eager float student (dB, capped at 120)")
    ax.legend(fontsize=7)
    ax.set_title("Quality drift vs size", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def image_grid(grid: dict[str, np.ndarray], path: Path, columns: list[str] | None = None) -> Path | None:
    """One row per sampler/artifact (teacher full | eager float student | each artifact), same seeds per column;
    `columns` labels each column with its conditioning (a text student's prompt, a class name)."""
    import textwrap

    rows = [(name, images) for name, images in grid.items() if images.ndim == 4 and images.shape[1] in (1, 3)]
    if not rows:
        return None
    plt = _pyplot()
    count = max(len(images) for _, images in rows)
    fig, axes = plt.subplots(len(rows), count, figsize=(1.1 * count + 2.2, 1.1 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows):
        for c in range(count):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                picture = np.clip(images[c].transpose(1, 2, 0), 0, 1)
                ax.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            if c == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=7)
            if r == 0 and columns and c < len(columns):
                ax.set_title(textwrap.shorten(columns[c], 40), fontsize=5, wrap=True)
    fig.suptitle("Same seeds and prompts per column" if columns else "Same seeds and labels per column", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def draw_plots(report: dict[str, Any], grid: dict[str, np.ndarray], out: Path,
               columns: list[str] | None = None) -> dict[str, str]:
    """Write every plot that has data into `out`; returns {title: file name} for the report."""
    drawn = {
        "latency": latency_bars(report, out / "latency.png"),
        "drift vs size": drift_vs_size(report, out / "drift_vs_size.png"),
        "image grid": image_grid(grid, out / "image_grid.png", columns),
    }
    return {title: path.name for title, path in drawn.items() if path is not None}
