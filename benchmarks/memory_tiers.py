"""Does an artifact's runtime peak RSS fit a phone? App memory budgets for 4 / 6 / 8 / 12 GB devices.

Neither Apple nor Google publishes a per-app limit, so every budget below is an ESTIMATE from the sources named with it,
rounded down; what the bench measures is the runtime's peak RSS on this machine (x86 Linux, its own process), which is
a proxy for a phone's footprint (ORT upcasts fp16 weights on x86; phones' fp16 kernels do not; an app adds its UI).

Sources:
- iOS, default (jetsam per-process limit): measured crash points collected in Stack Overflow "iOS app maximum memory
  budget" (questions/5887248): apps are killed at ≈ 50–55 % of RAM on 2–4 GB iPhones (iPhone XS, 4 GB: ≈ 2,040 MB);
  a 12 GB iPhone measured ≈ 3.3 GB without the entitlement (github.com/LNPANDY/NX2Apple ENTITLEMENTS.md), so the
  default appears capped near 3.3 GB on current devices.
- iOS, `com.apple.developer.kernel.increased-memory-limit`: Apple documents no number ("only available on some device
  models; call os_proc_available_memory()", developer.apple.com entitlement page; DTS on forum thread 740831: no change
  on some models). Reported: 6–8 GB on a 12 GB iPhone (NX2Apple), ≈ 6 GB (75 %) on an 8 GB iPad before iPadOS 26.4 and
  ≈ 3 GB after it (Apple forum thread 826325). 4/6 GB values are our interpolation.
- Android: `android:largeHeap` raises only the ART (Java) heap to `dalvik.vm.heapsize` (typically 256–512 MB;
  ActivityManager.getLargeMemoryClass()); ONNX Runtime's and ExecuTorch's native allocations do not count against it.
  The practical limit is the low-memory killer, i.e. RAM minus the system and other resident apps (≈ 2–5 GB): our
  estimate is ≈ 50 % of RAM at 4–6 GB and ≈ 55–60 % at 8–12 GB.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MB = 1024 * 1024  # peak RSS is reported in MiB (VmHWM kB / 1024)


@dataclass(frozen=True)
class MemoryTier:
    """One phone RAM size and the app budgets (MiB) estimated for it."""

    ram_gb: int
    ios_mb: int  # default jetsam limit
    ios_increased_mb: int  # with com.apple.developer.kernel.increased-memory-limit
    android_mb: int  # native memory before the low-memory killer (largeHeap does not cover it)


TIERS: tuple[MemoryTier, ...] = (
    MemoryTier(4, 2000, 2000, 2000),
    MemoryTier(6, 3000, 4000, 3000),
    MemoryTier(8, 3300, 6000, 4500),
    MemoryTier(12, 3300, 6000, 7000),
)
BUDGET_SOURCE = ("estimates (benchmarks/memory_tiers.py: iOS jetsam measurements, the increased-memory-limit entitlement, "
                 "Android low-memory killer); peak RSS measured on this machine is a proxy for a phone's footprint")


def tier_verdict(peak_rss_mb: float, tier: MemoryTier) -> str:
    """'yes' (fits every budget of the tier), 'entitlement/android' (only with iOS's increased limit or on Android's
    larger budget), or 'no'."""
    if peak_rss_mb <= min(tier.ios_mb, tier.android_mb):
        return "yes"
    if peak_rss_mb <= max(tier.ios_increased_mb, tier.android_mb):
        return "entitlement/android"
    return "no"


def memory_fit(peak_rss_mb: float, size_bytes: int | None) -> dict[str, Any]:
    """The row's memory verdict: per tier, and peak RSS over the artifact's size (how much the runtime adds)."""
    fit: dict[str, Any] = {"tiers": {f"{t.ram_gb}GB": tier_verdict(peak_rss_mb, t) for t in TIERS}}
    if size_bytes:
        fit["rss_over_size"] = peak_rss_mb * MB / size_bytes
    return fit


def tiers_table() -> list[dict[str, int]]:
    """The budgets, for the report (so a reader sees what each verdict was judged against)."""
    return [{"ram_gb": t.ram_gb, "ios_mb": t.ios_mb, "ios_increased_mb": t.ios_increased_mb, "android_mb": t.android_mb}
            for t in TIERS]
