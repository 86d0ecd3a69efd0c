"""Progress display: a rich spinner with elapsed time that names the current stage of a long job."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

console = Console(stderr=True)


@contextlib.contextmanager
def stages(title: str) -> Iterator[Callable[[str], None]]:
    """Yield a callback that announces each stage; finished stages are printed with their duration."""
    progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), TimeElapsedColumn(),
                        console=console, transient=True)
    state = {"label": title, "start": time.perf_counter()}

    def finish() -> None:
        console.print(f"  [green]✓[/green] {state['label']} [dim]({time.perf_counter() - state['start']:.1f} s)[/dim]")

    with progress:
        task = progress.add_task(title, total=None)

        def announce(label: str) -> None:
            if label.startswith("warning:"):  # a line of its own, not a stage
                console.print(f"  [yellow]{escape(label)}[/yellow]")
                return
            if state["label"] != title:
                finish()
            state.update(label=label, start=time.perf_counter())
            progress.update(task, description=label)

        yield announce
        if state["label"] != title:
            finish()
