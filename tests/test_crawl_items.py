"""Items into databases exactly once, proven with real ``scrapy crawl`` processes killed with
SIGKILL at random moments, then run to completion.

A user's pipeline that inserts into SQLite keyed by ``item_id(item)`` with ``ON CONFLICT DO
NOTHING`` (crawl_project/pipelines.py), and SQLPipeline into SQLite and into PostgreSQL, end
with exactly one row per page: none lost, none twice, though a killed crawl hands the items
of the requests it was doing to the pipelines again in the next run.
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from scrapy_checkpoint import Status, read_stage
from scrapy_checkpoint.stores import open_store

from .crawl import Outputs, crawl, sigkill
from .site import Site

N_PAGES = 300
KILLS = 5


@pytest.fixture
def site() -> Iterator[Site]:
    s = Site(N_PAGES, delay=0.004)
    yield s
    s.close()


def _torture(site: Site, outputs: Outputs, seed: int, *extra: str) -> None:
    """Kill the crawl ``KILLS`` times at random moments, then run it to the end."""
    rng = random.Random(seed)
    for _ in range(KILLS):
        run = crawl(site, outputs, *extra, interrupt=sigkill,
                    interrupt_after_hits=rng.randint(5, N_PAGES // 8))
        assert run.returncode == -9, run.log[-3000:]
    final = crawl(site, outputs, *extra)
    assert final.returncode == 0, final.log[-3000:]
    state = read_stage(open_store(outputs.location), "site").state
    assert (state.status, state.done_units, state.recoveries) == (Status.COMPLETED, N_PAGES, KILLS)


def _user_rows(path: Path) -> tuple[list[int], int]:
    """Pages in the user pipeline's table, and how many inserts it tried."""
    db = sqlite3.connect(path)
    try:
        pages = [page for (page,) in db.execute("SELECT page FROM pages")]
        (tries,) = db.execute("SELECT COUNT(*) FROM tries").fetchone()
    finally:
        db.close()
    return pages, tries


def _sql_pipeline_rows(url: str) -> list[tuple[str, str, int]]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            table = sa.Table("items", sa.MetaData(), autoload_with=conn)
            rows = conn.execute(sa.select(table.c.stage, table.c.item_id, table.c.data)).all()
    finally:
        engine.dispose()
    return [(stage, key, (data if isinstance(data, dict) else json.loads(data))["page"])
            for stage, key, data in rows]


def _assert_one_row_per_page(user_db: Path, url: str) -> None:
    pages, tries = _user_rows(user_db)
    assert sorted(pages) == list(range(N_PAGES)), "user pipeline: lost or duplicated rows"
    # The kills made the pipelines see items again (without the key: duplicate rows).
    assert tries > N_PAGES
    rows = _sql_pipeline_rows(url)
    assert sorted(page for _, _, page in rows) == list(range(N_PAGES)), \
        "SQLPipeline: lost or duplicated rows"
    assert len({key for _, key, _ in rows}) == N_PAGES
    assert {stage for stage, _, _ in rows} == {"site"}


def _pipelines(url: str, user_db: Path) -> tuple[str, ...]:
    return ("-s", "ITEM_PIPELINES={\"crawl_project.pipelines.ItemIdSQLitePipeline\": 300, "
                  "\"scrapy_checkpoint.pipelines.SQLPipeline\": 800}",
            "-s", f"CHECKPOINT_SQL_URL={url}", "-s", f"ITEMS_DB={user_db}",
            "-s", "CHECKPOINT_SQL_BATCH_SIZE=50")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [41, 42])
def test_kills_leave_one_row_per_page_in_sqlite_with_item_ids(
    tmp_path: Path, site: Site, seed: int
) -> None:
    url, user_db = f"sqlite:///{tmp_path / 'sql.db'}", tmp_path / "user.db"
    _torture(site, Outputs(tmp_path), seed, *_pipelines(url, user_db))
    _assert_one_row_per_page(user_db, url)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [43, 44])
def test_kills_leave_one_row_per_page_in_postgresql_with_item_ids(
    tmp_path: Path, site: Site, seed: int, postgres_database: str
) -> None:
    user_db = tmp_path / "user.db"
    _torture(site, Outputs(tmp_path), seed, *_pipelines(postgres_database, user_db))
    _assert_one_row_per_page(user_db, postgres_database)
