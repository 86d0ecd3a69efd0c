"""A rich progress bar for training loops: step, loss, EMA loss, throughput and ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    """`with TrainingProgress("distill", total) as bar: bar.update(step, loss=..., ...)`."""

    def __init__(self, title: str, total: int, start: int = 0, enabled: bool = True):
        self.enabled = enabled
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
        )
        self._task = self._progress.add_task(title, total=total, completed=start, stats="")
        self._title, self._total = title, total
        # Without a terminal (CI, `nohup … > log`) rich draws nothing: print a line every 5 % instead.
        self._plain = enabled and not self._progress.console.is_terminal
        self._next_line = 0

    def __enter__(self) -> TrainingProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)

    def update(self, step: int, **stats: float) -> None:
        text = "  ".join(f"{k} {v:.4g}" for k, v in stats.items())
        self._progress.update(self._task, completed=step, stats=text)
        if self._plain and (step >= self._next_line or step == self._total):
            elapsed = self._progress.tasks[0].elapsed or 0.0
            print(f"{self._title}: {step}/{self._total}  {text}  ({elapsed:.0f} s)", flush=True)
            self._next_line = step + max(1, self._total // 20)

    def log(self, message: str) -> None:
        self._progress.console.print(message)
