"""The PostgreSQL store when its tables are changed behind it: a table dropped, a column
renamed, a privilege revoked. Each is one paragraph saying what to do, from the CLI and
from a job, never psycopg's traceback, and nothing recorded is changed."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from scrapy_checkpoint import CheckpointError, EnhancedCheckpoint
from scrapy_checkpoint.cli import run as cli_run
from scrapy_checkpoint.errors import CorruptCheckpointError

from .conftest import POSTGRES_URL
from .test_postgres_store import job_role  # noqa: F401  (a fixture)


def _sql(url: str, query: str, *names: str) -> None:
    schema = url.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL(query).format(sql.Identifier(schema),
                                           *(sql.Identifier(n) for n in names)))


def _interrupted_stage(url: str) -> None:
    """Stage s: 3 of 6 items done, then stopped without a close (as a kill leaves it)."""
    cp = EnhancedCheckpoint(url, "s", log_every=0)
    cp.start(total_items=6)
    for i in range(3):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.abandon()


@pytest.mark.parametrize("change", [
    "DROP TABLE {0}.journal",
    "DROP TABLE {0}.snapshots",
    "DROP TABLE {0}.requests",
    "ALTER TABLE {0}.journal RENAME COLUMN payload TO p",
])
def test_a_table_dropped_or_altered_is_one_paragraph_and_nothing_is_changed(
    postgresql_backend: str, change: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """Before, show, list and the next run failed with psycopg's UndefinedTable or
    UndefinedColumn traceback (a crawl: 'Task exception was never retrieved')."""
    _interrupted_stage(postgresql_backend)
    _sql(postgresql_backend, change)
    assert cli_run(["--backend", postgresql_backend, "show", "s"]) == 3
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "are not as scrapy-checkpoint made them" in err
    assert "dropped or altered" in err
    with pytest.raises(CorruptCheckpointError, match="not as scrapy-checkpoint made them"):
        EnhancedCheckpoint(postgresql_backend, "s", log_every=0).open()
    cli_run(["--backend", postgresql_backend, "list"])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "damaged" in out + err


def test_privileges_revoked_are_one_paragraph_and_the_stage_resumes_once_granted(
    postgresql_backend: str, job_role: str, capsys: pytest.CaptureFixture[str],  # noqa: F811
) -> None:
    """The job's role loses SELECT on the journal (revoked by a DBA): show and the next
    run said psycopg's InsufficientPrivilege with a traceback. Now one paragraph naming the
    grants; granted again, the stage resumes from what it recorded."""
    job = postgresql_backend.replace("postgres@", f"{job_role}@", 1)
    _interrupted_stage(postgresql_backend)  # the tables, made by their owner
    grant = ("GRANT USAGE ON SCHEMA {0} TO {1}; "
             "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {0} TO {1}; "
             "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA {0} TO {1}; "
             "GRANT USAGE ON ALL SEQUENCES IN SCHEMA {0} TO {1}")
    _sql(postgresql_backend, grant, job_role)
    _sql(postgresql_backend, "REVOKE SELECT ON {0}.journal FROM {1}", job_role)
    assert cli_run(["--backend", job, "show", "s"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "this role may not use the checkpoint tables" in err
    assert "permission denied for table journal" in err
    with pytest.raises(CheckpointError, match="permission denied for table journal"):
        EnhancedCheckpoint(job, "s", log_every=0).open()
    _sql(postgresql_backend, grant, job_role)
    with EnhancedCheckpoint(job, "s", log_every=0) as cp:
        cp.start(total_items=6)
        assert [i for i in range(6) if not cp.should_skip(i)] == [3, 4, 5]


def test_a_shared_stage_whose_claims_table_was_dropped_is_refused_when_a_worker_joins(
    postgresql_backend: str,
) -> None:
    """The claims table of the shared stages dropped behind the package: a worker joining
    is refused with the paragraph at once. Before, it joined, warned for every request that
    it could not claim it ('crawling them here'), crawled pages and only stopped at its
    first journal write."""
    from scrapy_checkpoint.shared import open_shared
    from scrapy_checkpoint.stores import open_store

    _interrupted_stage(postgresql_backend)
    store = open_store(postgresql_backend)
    try:
        first = open_shared(store, "site", worker="w1")
        first.hold_joining()  # the shared tables are made
        first.release_joining()
        _sql(postgresql_backend, "DROP TABLE {0}.shared_claims")
        with pytest.raises(CorruptCheckpointError, match=r"\(table shared_claims missing\)"):
            open_shared(store, "site", worker="w2").hold_joining()
    finally:
        store.close()


@pytest.mark.parametrize("rows", [
    # A snapshot row of a later segment than the stage's (copied in, or its gen written over).
    ["INSERT INTO {0}.snapshots (stage, gen, data, places) "
     "SELECT stage, 50, '\\x00', places FROM {0}.snapshots"],
    ["INSERT INTO {0}.snapshots (stage, gen, data, places) "
     "SELECT stage, 9223372036854775807, data, places FROM {0}.snapshots"],
    # Journal rows of a segment number no segment after them can follow.
    ["UPDATE {0}.journal SET gen = 9223372036854775807"],
    ["UPDATE {0}.journal SET gen = 9223372036854775807 WHERE seq > 0"],
])
def test_rows_of_a_segment_number_the_stage_never_wrote_lose_nothing(
    postgresql_backend: str, rows: list[str], capsys: pytest.CaptureFixture[str],
) -> None:
    """Before, a snapshot row of a later segment than the stage's (even one that does not
    decode, so never used) counted as the newest at retention: with keep_snapshots=1 the
    next run deleted every good snapshot and journal row, and the run after it was refused
    ('The journal and snapshots of stage 's' ... are missing'), all 6 units lost. Journal
    rows of segment 2**63 - 1 were replayed and appended to: the run's close ended in
    psycopg's 'bigint out of range' traceback. Now such rows are damage (reported, set
    aside or left alone), and what the stage recorded is kept."""
    _interrupted_stage(postgresql_backend)
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    cp.start()
    cp.pause()
    cp.close()  # a snapshot of its own, so the journal rows are of the newest segment
    for query in rows:
        _sql(postgresql_backend, query)
    for _ in range(2):
        cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, keep_snapshots=1)
        cp.start()
        for i in range(6):
            if not cp.should_skip(i):
                cp.update(processed=1, successful=1, index=i)
        cp.pause()
        cp.close()
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, keep_snapshots=1)
    cp.start()
    assert len(cp.live.done) == 6
    assert cp.state.progress.processed_items == 6
    cp.pause()
    cp.close()
    assert cli_run(["--backend", postgresql_backend, "show", "s"]) in (0, 3)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert "6/6" in out


def test_snapshot_rows_deleted_after_retention_are_damage_not_a_resume_from_the_tail(
    postgresql_backend: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """Retention deletes the journal rows the kept snapshots cover. With every snapshot row
    then deleted (by hand, or a restore that missed the table), the next run took the
    journal rows left for the whole stage: it resumed with part of the 3000 units done and
    redid the rest unsaid. Now reading and resuming the stage say it is damaged, and
    nothing is changed."""
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1,
                            compact_min_bytes=4096)
    cp.start(total_items=3000)
    for i in range(3000):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.drain_io()
    cp.abandon()
    schema = postgresql_backend.rsplit("schema=", 1)[1]
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        first = conn.execute(sql.SQL("SELECT min(gen) FROM {}.journal").format(
            sql.Identifier(schema))).fetchone()
        assert first is not None
        assert first[0] > 0, "retention deleted no journal row"
    _sql(postgresql_backend, "DELETE FROM {0}.snapshots")
    assert cli_run(["--backend", postgresql_backend, "show", "s"]) == 3
    out, err = capsys.readouterr()
    assert "does not begin with the stage's creation" in err
    assert "Traceback" not in out + err
    with pytest.raises(CorruptCheckpointError, match="does not begin with the stage's creation"):
        EnhancedCheckpoint(postgresql_backend, "s", log_every=0).open()
