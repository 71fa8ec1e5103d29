"""Layer progress for people: a bar per layer on a terminal, one line per layer in a log."""

from __future__ import annotations

import sys
from typing import IO, Any

from minirun.log import get as get_logger

from .digest import Progress

log = get_logger(__name__)


class LayerProgress:
    """``with LayerProgress():`` reports every layer read inside the block (see Progress)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.fancy = self.stream.isatty()
        self._rich: Any = None
        self._tasks: dict[str, Any] = {}
        self._seen: set[str] = set()

    def __enter__(self) -> LayerProgress:
        Progress.callback = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        Progress.callback = None
        if self._rich is not None:
            self._rich.stop()

    def __call__(self, label: str, done: int, total: int) -> None:
        if label.startswith("read "):
            return  # manifests and configs: not layers
        if not self.fancy:
            if label not in self._seen:  # quiet: one info line per layer and phase
                self._seen.add(label)
                log.info("%s layer %s (%.1f MB)", *label.split(" ", 1), total / 1e6)
            return
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
