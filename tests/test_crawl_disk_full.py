"""A crawl whose own item pipeline writes to a disk that fills: the crawl stops instead of
completing with the items lost, and the run after space is freed stores them."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import PYTHON
from .crawl import PROJECT, run
from .site import Site
from .test_faults_write import remount, tmpfs

N_PAGES = 600


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.002)
    yield s
    s.close()


@pytest.mark.parametrize("pipeline", ["file", "sqlite"])
def test_a_pipeline_failing_on_a_full_disk_stops_the_crawl_and_its_items_come_next_run(
    site: Site, tmp_path: Path, pipeline: str,
) -> None:
    """Before: each item from the moment the pipeline's disk was full was an item error
    (``OSError: [Errno 28] No space left on device``), its request recorded done, and the
    crawl ended ``[site] Completed. ... Success: 100.0%`` with finish_reason 'finished';
    after space was freed the same command said the stage was completed and fetched
    nothing: those items were never stored. The same with SQLite's "database or disk is
    full" (``sqlite3.OperationalError``) from a database pipeline."""
    checkpoints = tmp_path / "checkpoints"
    with tmpfs(tmp_path / "small", "64k") as small:
        lines, database = small / "pages.txt", small / "items.db"
        own = (["-s", f"ITEMS_FILE={lines}", "-s", "ITEM_PIPELINES=" + json.dumps(
                    {"crawl_project.pipelines.FileLinesPipeline": 300})]
               if pipeline == "file" else
               ["-s", f"ITEMS_DB={database}", "-s", "ITEM_PIPELINES=" + json.dumps(
                   {"crawl_project.pipelines.ItemIdSQLitePipeline": 300})])
        cmd = [PYTHON, "-m", "scrapy", "crawl", "site", "-a", f"base={site.url}",
               "-s", f"CHECKPOINT_DIR={checkpoints}", *own]
        first = run(site, cmd, tmp_path, cwd=PROJECT)
        assert first.returncode == 1, first.log[-3000:]
        assert "'finish_reason': 'checkpoint_error'" in first.log
        assert "Completed." not in first.log
        stops = [line for line in first.log.splitlines() if "the crawl stops" in line]
        assert len(stops) == 1, first.log[-3000:]
        assert "a disk is full" in stops[0]
        assert "Free disk space, then run the same command again" in stops[0]
        remount(small, "10m")
        second = run(site, cmd, tmp_path, cwd=PROJECT)
        assert second.returncode == 0, second.log[-3000:]
        assert "'finish_reason': 'finished'" in second.log
        if pipeline == "file":
            stored = {int(line) for line in lines.read_text().split()}
        else:
            with contextlib.closing(sqlite3.connect(database)) as db:
                stored = {int(page) for (page,) in db.execute("SELECT page FROM pages")}
        assert stored == set(range(N_PAGES))
