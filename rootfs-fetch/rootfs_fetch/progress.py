"""Layer progress for people: a bar per layer and phase on a terminal.

In a log, the store and the unpacker already say one info line per layer; nothing more is
printed there."""

from __future__ import annotations

import sys
from typing import IO, Any

from .digest import Progress


class LayerProgress:
    """``with LayerProgress():`` reports every layer read inside the block (see Progress)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.fancy = self.stream.isatty()
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> LayerProgress:
        Progress.callback = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        Progress.callback = None
        if self._rich is not None:
            self._rich.stop()

    def __call__(self, label: str, done: int, total: int) -> None:
        if label.startswith("read ") or not self.fancy:
            return  # manifests and configs are not layers; a log has its lines already
        if self._rich is None:
            from rich.console import Console
            from rich.progress import DownloadColumn, Progress, TextColumn

            self._rich = Progress(TextColumn("{task.description}"),
                                  *Progress.get_default_columns()[1:3], DownloadColumn(),
                                  console=Console(file=self.stream), transient=False)
            self._rich.start()
        if label not in self._tasks:
            self._tasks[label] = self._rich.add_task(label, total=total)
        self._rich.update(self._tasks[label], completed=done)
