"""Progress bars for slow loops (rich, on stderr), one helper for every stage."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)


class ProgressBar:
    """A single rich task with free-form fields (loss, tokens/s, ...) shown after the bar."""

    def __init__(self, description: str, total: int | None, enabled: bool) -> None:
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=_console,
            disable=not enabled,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=total, info="")
        self._progress.start()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def update(self, *, advance: int = 1, **fields: float | int | str) -> None:
        info = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
        self._progress.update(self._task, advance=advance, info=info)

    def close(self) -> None:
        self._progress.stop()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(description: str, *, total: int | None, enabled: bool = True) -> ProgressBar:
    """A progress bar on stderr; shown only when ``enabled`` and stderr is a terminal."""
    return ProgressBar(description, total, enabled and sys.stderr.isatty())
