"""`cdx bench --compare OLD.json`: what got slower or drifted between two reports, against thresholds the user sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Thresholds:
    """A row regresses when its median latency grows past `max_slowdown`× or its PSNR vs eager drops by more dB."""

    max_slowdown: float = 1.25
    max_psnr_drop_db: float = 1.0


def compare_reports(old: dict[str, Any], new: dict[str, Any], limits: Thresholds) -> dict[str, list[str]]:
    """Rows matched by (name, runtime); returns {"regressions": [...], "notes": [...]} as one line each."""
    before = {(r["name"], r["runtime"]): r for r in old["results"]}
    regressions, notes = [], []
    for row in new["results"]:
        key = (row["name"], row["runtime"])
        if key not in before:
            notes.append(f"{row['name']} on {row['runtime']}: new (not in the old report)")
            continue
        prev = before.pop(key)
        ratio = row["latency"]["median_ms"] / prev["latency"]["median_ms"]
        line = (f"{row['name']} on {row['runtime']}: median {prev['latency']['median_ms']:.2f} → "
                f"{row['latency']['median_ms']:.2f} ms ({ratio:.2f}×)")
        if ratio > limits.max_slowdown:
            regressions.append(f"slower: {line} > {limits.max_slowdown:.2f}×")
        elif ratio < 1 / limits.max_slowdown:
            notes.append(f"faster: {line}")
        old_psnr = (prev.get("drift_vs_eager") or {}).get("psnr_db")
        new_psnr = (row.get("drift_vs_eager") or {}).get("psnr_db")
        if old_psnr is not None and new_psnr is not None and old_psnr - new_psnr > limits.max_psnr_drop_db:
            regressions.append(f"drifted: {row['name']} on {row['runtime']}: PSNR vs eager {old_psnr:.1f} → "
                               f"{new_psnr:.1f} dB (drop > {limits.max_psnr_drop_db:.1f} dB)")
    notes += [f"{name} on {runtime}: gone (only in the old report)" for name, runtime in before]
    return {"regressions": regressions, "notes": notes}
