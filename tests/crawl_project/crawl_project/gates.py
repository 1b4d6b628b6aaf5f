"""Hold a crawl at a chosen point of its close, so that a test can kill it exactly there.

Both read ``GATE_DIR`` (a directory): when the crawl reaches the gate they write
``GATE_DIR/reached``, then wait until ``GATE_DIR/open`` exists (at most ten minutes),
blocking the reactor. Without ``GATE_DIR`` they are not enabled.

- :class:`BeforeCompletionGate` (``ITEM_PIPELINES``): holds in the pipelines'
  ``close_spider``, which Scrapy calls before the ``spider_closed`` signal: every
  request of a finished crawl is done, and the stage is not marked completed yet.
- :class:`AfterFinishedGate` (``EXTENSIONS``): holds at ``engine_stopped``, after
  Scrapy logged ``Spider closed (finished)`` and before the process exits.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from scrapy import signals
from scrapy.exceptions import NotConfigured


def _hold(directory: Path) -> None:
    (directory / "reached").write_text("reached\n")
    deadline = time.monotonic() + 600
    while not (directory / "open").exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def _gate_dir(crawler: Any) -> Path:
    directory = crawler.settings.get("GATE_DIR")
    if not directory:
        raise NotConfigured("GATE_DIR is not set")
    return Path(directory)


class BeforeCompletionGate:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def from_crawler(cls, crawler: Any) -> BeforeCompletionGate:
        return cls(_gate_dir(crawler))

    def process_item(self, item: Any) -> Any:
        return item

    def close_spider(self) -> None:
        _hold(self.directory)


class AfterFinishedGate:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @classmethod
    def from_crawler(cls, crawler: Any) -> AfterFinishedGate:
        gate = cls(_gate_dir(crawler))
        crawler.signals.connect(gate.engine_stopped, signal=signals.engine_stopped)
        return gate

    def engine_stopped(self) -> None:
        _hold(self.directory)
