"""A live progress bar on stderr (rich), for a tracker's loop or a crawl.

It shows the stage's own figures (:class:`~scrapy_checkpoint.metrics.Metrics`): the
percent of the total (``~`` while a crawl's total is an estimate), the count, the
throughput and the ETA the progress line gives, not figures of its own. While it is
shown, log lines written to stderr by ``logging`` handlers print above it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from .metrics import Metrics, format_duration, format_percent


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` (``sys.stderr``, ``sys.stdout``) is a terminal. False when the
    program has no such stream (``2>&-``, ``>&-``, a service or ``pythonw``: Python then sets
    it to None), or when it was closed: no bar, no terminal layout, nothing raised."""
    if stream is None:
        return False
    try:
        return bool(stream.isatty())
    except (ValueError, OSError, AttributeError):
        return False


class ProgressBar:
    """One bar for ``stage``: :meth:`start`, :meth:`update` with each reading, :meth:`stop`."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self._progress: Any = None
        self._task: Any = None
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    @property
    def shown(self) -> bool:
        return self._progress is not None

    def start(self, m: Metrics) -> None:
        """Show the bar (on stderr), at ``m``."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        if self._progress is not None:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.fields[line]}"),
            transient=False, console=Console(stderr=True), redirect_stderr=True)
        self._task = self._progress.add_task(self.stage, total=m.total or None,
                                             completed=m.processed, line=_line(m))
        before = sys.stderr
        self._progress.start()
        # Handlers made before the bar write to the stderr they found: point them at the
        # one the bar prints above (put back at stop).
        if sys.stderr is not before:
            for name in ("", "scrapy_checkpoint"):
                for handler in logging.getLogger(name).handlers:
                    if isinstance(handler, logging.StreamHandler) and handler.stream is before:
                        handler.setStream(sys.stderr)
                        self._handlers.append((handler, before))

    def update(self, m: Metrics) -> None:
        """Move the bar to ``m``."""
        if self._progress is not None:
            self._progress.update(self._task, total=m.total or None, completed=m.processed,
                                  line=_line(m))

    def stop(self, m: Metrics | None = None) -> None:
        """Leave the bar (at ``m`` if given) as the last line."""
        if self._progress is None:
            return
        if m is not None:
            self.update(m)
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()
        self._progress.stop()
        self._progress = None


def _line(m: Metrics) -> str:
    about = "~" if m.estimated else ""
    head = (f"{about}{format_percent(m.percent)} {m.processed}/{about}{m.total}"
            if m.percent is not None else f"{m.processed}")
    rate = "" if m.throughput is None else f" | {m.throughput:.1f}/s"
    return f"{head}{rate} | ETA {format_duration(m.eta_seconds)}"


__all__ = ["ProgressBar"]
