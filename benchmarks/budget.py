"""`cdx bench --time-budget`: how many seeds, warm-up and timed runs fit, chosen from a measured call time.

A 512 px SD-1.5 generator takes ≈ 10 s per call here, so the defaults (64 seeds, 3 warm-up, 20 runs) would run for hours.
The bench splits its budget over the worker processes still to run (what one leaves unspent goes to the next); each
worker times its first seeded calls and plans the rest with `plan_calls`. The first worker also picks the seed count,
which every later worker then uses (drift compares outputs seed by seed).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MIN_SEEDS = 2
MIN_RUNS = 3
DEFAULT_TIME_BUDGET_S = 900.0


@dataclass(frozen=True)
class CallPlan:
    """What one worker will run."""

    seeds: int
    warmup: int
    runs: int
    limited: bool  # fewer than asked because of the budget

    def as_dict(self, budget_s: float, call_ms: float) -> dict[str, Any]:
        return {**asdict(self), "budget_s": round(budget_s, 3), "call_ms": round(call_ms, 3)}


def plan_calls(budget_s: float | None, call_s: float, seeds: int, warmup: int, runs: int, contrast: bool = False,
               choose_seeds: bool = True, done_calls: int = 0) -> CallPlan:
    """Seeds, warm-up and timed runs that fit `budget_s` at `call_s` per call (`done_calls` already spent; None:
    no budget, everything asked; <= 0: the minimum).

    Seeds first (they are the drift sample; with `contrast` each costs two calls), then timed runs, then warm-up
    (the seeded calls already warm the model). Never below MIN_SEEDS seeds and MIN_RUNS runs (or what was asked).
    With `choose_seeds=False` the seed count is fixed (an earlier worker chose it).
    """
    if budget_s is None:
        return CallPlan(seeds, warmup, runs, False)
    per_seed = 2 if contrast else 1
    calls = int(max(budget_s, 0.0) / max(call_s, 1e-9)) - done_calls
    s = min(seeds, MIN_SEEDS) if choose_seeds else seeds
    r = min(runs, MIN_RUNS)
    left = calls - s * per_seed - r
    if choose_seeds and left > 0:
        more = min(seeds - s, left // per_seed)
        s, left = s + more, left - more * per_seed
    if left > 0:
        more = min(runs - r, left)
        r, left = r + more, left - more
    w = min(warmup, max(left, 0))
    return CallPlan(s, w, r, (s, w, r) != (seeds, warmup, runs))


class Budget:
    """The bench's time budget, shared out over the worker processes still to run."""

    def __init__(self, total_s: float | None, workers: int):
        self.total_s = total_s if total_s and total_s > 0 else None
        self.left_s = self.total_s
        self.workers_left = max(workers, 1)

    def share(self) -> float | None:
        """The next worker's budget (None: unlimited)."""
        return None if self.left_s is None else max(self.left_s, 0.0) / self.workers_left

    def spent(self, seconds: float) -> None:
        if self.left_s is not None:
            self.left_s -= seconds
        self.workers_left = max(self.workers_left - 1, 1)

    def add_workers(self, count: int) -> None:
        self.workers_left += count
