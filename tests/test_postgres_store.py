"""What only the PostgreSQL store has: its URL and messages, its tables and view, the
advisory lock's session, the state row's version. The store protocol itself is proven by
the conformance suite (``store_location``), on PostgreSQL as on the other stores."""

from __future__ import annotations

import gc
import logging
import os
import re
import signal
import subprocess
import threading
import time
import warnings
from typing import Any

import psycopg
import pytest
from psycopg import sql

from scrapy_checkpoint import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointLostError,
    CheckpointWriteError,
    CorruptCheckpointError,
    EnhancedCheckpoint,
    Status,
)
from scrapy_checkpoint.errors import ConfigError
from scrapy_checkpoint.state import CheckpointState, Owner
from scrapy_checkpoint.stores import open_backend, open_store
from scrapy_checkpoint.stores.postgres import (
    SCHEMA_VERSION,
    PostgresLock,
    PostgresStore,
    PostgresUnreachable,
)
from scrapy_checkpoint.view import read_stage

from .conftest import POSTGRES_URL, PYTHON, SCRIPTS, drop_postgres_schema, python_env


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def _rows(url: str, query: str) -> list[tuple[object, ...]]:
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        return conn.execute(sql.SQL(query).format(s=sql.Identifier(_schema(url)))).fetchall()


def test_an_unreachable_server_at_start_is_one_clear_error_without_the_password() -> None:
    with pytest.raises(CheckpointError) as caught:
        open_backend("postgresql://app:s3cret@127.0.0.1:1/jobs?schema=crawls", "unused")
    message = str(caught.value)
    assert message.startswith("Cannot reach PostgreSQL at postgresql://app@127.0.0.1:1/jobs?schema=crawls: ")
    assert "Start PostgreSQL, or fix the URL in CHECKPOINT_BACKEND" in message
    assert "s3cret" not in message
    assert "\n" not in message


def test_the_location_names_the_server_and_schema_never_the_password(postgresql_backend: str) -> None:
    head, schema = postgresql_backend.split("?schema=")
    url = head.replace("postgresql://postgres@", "postgresql://postgres:s3cret@", 1)
    store = PostgresStore(f"{url}?schema={schema}&password=other")
    try:
        assert "s3cret" not in store.location + repr(store)
        assert "other" not in store.location + repr(store)
        assert store.location == f"{head}?schema={schema}"
        assert store.schema == schema
    finally:
        store.close()
    postgres = PostgresStore(postgresql_backend.replace("postgresql://", "postgres://", 1)
                             .replace("?schema=", "?prefix="))
    assert postgres.schema == schema
    postgres.close()


def test_a_bad_schema_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="Invalid PostgreSQL schema name 'a b'"):
        PostgresStore(f"{POSTGRES_URL}?schema=a b")


def test_a_schema_name_postgresql_reserves_is_refused_before_the_server_is_asked() -> None:
    """``pg_...`` passes the character rule, but PostgreSQL refuses to create such a schema
    (psycopg's traceback at the first write): refused with the other bad names."""
    for name in ("pg_x", "pg_checkpoints"):
        with pytest.raises(ConfigError, match=f"Invalid PostgreSQL schema name '{name}'"):
            PostgresStore(f"{POSTGRES_URL}?schema={name}")


def test_connections_ended_by_the_server_are_replaced_for_queries_and_transactions(
        postgresql_backend: str) -> None:
    name = f"sctest-{os.getpid()}-{id(object())}"
    store = PostgresStore(f"{postgresql_backend}&application_name={name}")
    try:
        ((before,),) = store.db.query("SELECT pg_backend_pid()")
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:  # as a server restart would
            ended = conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                                 "FROM "
                                 "pg_stat_activity WHERE application_name = %s", [name]).fetchone()
        assert ended is not None
        assert ended[0] >= 1
        ((after,),) = store.db.query("SELECT pg_backend_pid()")
        assert after != before
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                         "WHERE application_name = %s", [name])
        with store.db.transaction() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        with store.db.reading() as conn:
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
    finally:
        store.close()


def test_threads_each_get_a_connection_of_the_small_pool(postgresql_backend: str) -> None:
    store = PostgresStore(postgresql_backend)
    inside = threading.Barrier(3)
    pids: list[int] = []

    def hold() -> None:
        with store.db.transaction() as conn:
            pids.append(conn.execute("SELECT pg_backend_pid()").fetchone()[0])
            inside.wait(timeout=600)  # all three transactions open at once: three connections

    try:
        workers = [threading.Thread(target=hold) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert len(set(pids)) == 3
        assert store.db.query_one("SELECT 1") == (1,)
    finally:
        store.close()


def test_a_store_closed_twice_or_collected_leaves_no_thread_and_no_warning(
        postgresql_backend: str) -> None:
    before = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = PostgresStore(postgresql_backend)
        assert store.db.query_one("SELECT 1") == (1,)
        store.close()
        store.close()
        assert set(threading.enumerate()) <= before
        assert store.db.query_one("SELECT 2") == (2,)  # a connection of its own, closed after
        collected = PostgresStore(postgresql_backend)
        assert collected.db.query_one("SELECT 1") == (1,)
        del collected
        gc.collect()
        assert set(threading.enumerate()) <= before
    assert [str(w.message) for w in caught] == []


def test_a_process_leaving_its_store_open_exits_at_once_without_a_word(
        postgresql_backend: str) -> None:
    code = ("import sys; from scrapy_checkpoint.stores.postgres import PostgresStore; "
            "store = PostgresStore(sys.argv[1]); store.db.query_one('SELECT 1'); print('done')")
    run = subprocess.run([PYTHON, "-X", "dev", "-W", "error", "-c", code, postgresql_backend],
                         capture_output=True, text=True, env=python_env(), check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, "done\n", "")


def test_the_tables_are_created_by_the_first_writer_once_with_their_version(
        postgresql_backend: str) -> None:
    store = open_store(postgresql_backend)
    assert store.stages() == []  # reading creates nothing
    assert _rows(postgresql_backend, "SELECT count(*) FROM information_schema.schemata "
                 f"WHERE schema_name = '{_schema(postgresql_backend)}'") == [(0,)]
    store.close()
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    cp.start(total_items=1)  # a writer: it takes the stage's lock, the tables come first
    cp.close()
    open_store(postgresql_backend).close()  # already there: nothing to do
    assert _rows(postgresql_backend, "SELECT max(version) FROM {s}.schema_version") == [
        (SCHEMA_VERSION,)]
    assert _tables(postgresql_backend) == {
        "schema_version", "stages", "owners", "journal", "requests", "snapshots", "corrupt",
        "stage_status", "shared_workers", "shared_claims", "shared_inbox", "shared_queued"}
    _rows(postgresql_backend, "INSERT INTO {s}.schema_version (version) VALUES (99) RETURNING 1")
    with pytest.raises(ConfigError, match="layout version 99, newer than this version"):
        open_store(postgresql_backend)


def _tables(url: str) -> set[str]:
    return {name for (name,) in _rows(url, "SELECT table_name FROM information_schema.tables "
                                           f"WHERE table_schema = '{_schema(url)}'")}


def test_stages_past_their_ttl_are_removed_when_a_writer_starts_and_no_other(
        postgresql_backend: str) -> None:
    for stage, finish in (("done", True), ("running", False), ("held", True)):
        cp = EnhancedCheckpoint(postgresql_backend, stage, log_every=0)
        cp.start(total_items=2)
        cp.update(processed=1, successful=1, index=0)
        if finish:
            cp.update(processed=1, successful=1, index=1)
            cp.complete()
        cp.close()
    held = EnhancedCheckpoint(postgresql_backend, "held", log_every=0)
    held.open()  # a live process holds it: never expired under it
    _rows(postgresql_backend, "UPDATE {s}.stages SET updated_at = now() - interval '2 hours' "
          "RETURNING 1")
    store = PostgresStore(postgresql_backend, ttls={"completed": 3600})  # "active": never
    writer = EnhancedCheckpoint(stage="new", store=store, log_every=0)
    writer.start(total_items=1)  # a writer starting: expired stages go
    writer.close()
    assert sorted(store.stages()) == ["held", "new", "running"]
    assert _rows(postgresql_backend, "SELECT count(*) FROM {s}.journal WHERE stage = 'done'") == [(0,)]
    held.close()
    assert store.expire() == []  # once "held" was written again it is young
    store.close()


def _completed_stage(url: str, stage: str) -> None:
    """A stage of two units, both done, completed."""
    with EnhancedCheckpoint(url, stage, log_every=0) as cp:
        cp.start(total_items=2)
        cp.update(processed=2, successful=2, index=1)
        cp.complete()


def test_a_stage_whose_lock_is_being_taken_is_not_expired_under_its_taker(
        postgresql_backend: str) -> None:
    """A process taking a stage holds its advisory lock a moment before its ``owners`` row
    says so (the row still names the last run's ended session): expiry, which runs as
    another writer starts, must not remove the stage then, nor may the taker load it while
    expiry removes it."""
    with EnhancedCheckpoint(postgresql_backend, "old", log_every=0) as cp:
        cp.start(total_items=2)
        cp.update(processed=2, successful=2, index=1)
        cp.complete()
    _rows(postgresql_backend, "UPDATE {s}.stages SET updated_at = now() - interval '2 hours' "
          "RETURNING 1")
    store = PostgresStore(postgresql_backend, ttls={"completed": 3600})
    with psycopg.connect(POSTGRES_URL, autocommit=True) as taker:  # between lock and row
        assert taker.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                             [store.db.lock_key("old")]).fetchone() == (True,)
        assert store.expire() == []
        assert store.stages() == ["old"]
        # Let go here: a closed session's locks are freed a moment after it closes.
        taker.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                      [store.db.lock_key("old")])
    assert store.expire() == ["old"]  # once nobody holds it
    assert store.stages() == []
    store.close()


def _back_to_layout_1(url: str) -> None:
    """The tables as layout 1 had them: the same without the shared ones."""
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        for statement in ("DROP TABLE {s}.shared_workers, {s}.shared_claims, {s}.shared_inbox, "
                          "{s}.shared_queued", "DROP FUNCTION {s}.worker_alive",
                          "DELETE FROM {s}.schema_version WHERE version > 1"):
            conn.execute(sql.SQL(statement).format(s=sql.Identifier(_schema(url))))


def test_tables_of_layout_1_are_read_as_they_are_and_upgraded_by_migrate_saying_so(
    postgresql_backend: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from scrapy_checkpoint.cli import run

    _completed_stage(postgresql_backend, "old")
    _back_to_layout_1(postgresql_backend)
    # Readers read layout 1 and change nothing.
    assert run(["--backend", postgresql_backend, "show", "old"]) == 0
    assert "2/2 (100.0%)" in capsys.readouterr().out
    assert "shared_workers" not in _tables(postgresql_backend)
    assert run(["--backend", postgresql_backend, "migrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "This will upgrade the checkpoint tables in schema" in out
    assert "from layout version 1 to 2, adding tables shared_workers" in out
    assert "shared_workers" not in _tables(postgresql_backend)
    assert run(["--backend", postgresql_backend, "migrate", "--yes"]) == 0
    assert "are of layout version 2" in capsys.readouterr().out
    assert {"shared_workers", "shared_claims", "shared_inbox", "shared_queued"} <= \
        _tables(postgresql_backend)
    assert run(["--backend", postgresql_backend, "migrate"]) == 0
    assert "are up to date (layout version 2)" in capsys.readouterr().out
    # The stage recorded under layout 1 is untouched.
    assert run(["--backend", postgresql_backend, "show", "old"]) == 0
    assert "2/2 (100.0%)" in capsys.readouterr().out
    # A command that writes says first, on stderr, what it will do to the tables.
    _back_to_layout_1(postgresql_backend)
    assert run(["--backend", postgresql_backend, "requeue", "old", "--failed"]) != 0
    assert "PostgreSQL: this command will first upgrade the checkpoint tables" in \
        capsys.readouterr().err


@pytest.fixture
def job_role():  # type: ignore[no-untyped-def]
    """A login role of its own (no password), with no right but those a test grants it."""
    role = f"sctest_job_{os.getpid()}_{time.monotonic_ns() % 10**9}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    yield role
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {0}; DROP ROLE {0}").format(sql.Identifier(role)))


def test_a_role_not_granted_the_schema_gets_one_paragraph_not_psycopgs_error(
    postgresql_backend: str, job_role: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """The tables exist, made by their owner, and the job's role was granted nothing on
    their schema: a job and every CLI command say what to grant, instead of psycopg's
    InsufficientPrivilege traceback (the store is opened before any command runs)."""
    from scrapy_checkpoint.cli import run

    with EnhancedCheckpoint(postgresql_backend, "s", log_every=0) as cp:
        cp.start(total_items=1)
    job = postgresql_backend.replace("postgres@", f"{job_role}@", 1)
    with pytest.raises(ConfigError, match="may not read the checkpoint tables") as caught:
        EnhancedCheckpoint(job, "s", log_every=0).open()
    assert "USAGE on the schema" in str(caught.value)
    for command in (["list", "--json"], ["show", "s"], ["reset", "s", "--force"]):
        assert run(["--backend", job, *command]) == 1
        out, err = capsys.readouterr()
        assert out == ""
        assert "may not read the checkpoint tables" in err
        assert "Traceback" not in err
    assert read_stage(open_store(postgresql_backend), "s").state.status is Status.PAUSED


def test_a_role_that_may_not_upgrade_layout_1_still_runs_stages_and_is_told_to_migrate(
    postgresql_backend: str, job_role: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """A job role with only the documented grants on layout 1 tables: after the package is
    upgraded, its plain stages run on as before (they need nothing of layout 2), saying
    the tables wait for `migrate`; a shared stage, which needs layout 2, is refused with
    that advice, not psycopg's bare "permission denied"."""
    with EnhancedCheckpoint(postgresql_backend, "old", log_every=0) as cp:
        cp.start(total_items=2)
        cp.update(processed=1, successful=1, index=0)
    _back_to_layout_1(postgresql_backend)
    schema = sql.Identifier(_schema(postgresql_backend))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, sql.Identifier(job_role)))
        conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {} "
                             "TO {}").format(schema, sql.Identifier(job_role)))
    job = postgresql_backend.replace("postgres@", f"{job_role}@", 1)
    assert job != postgresql_backend
    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint"), \
            EnhancedCheckpoint(job, "old", log_every=0) as cp:
        cp.start(total_items=2)
        cp.update(processed=1, successful=1, index=1)
        cp.complete()
    assert read_stage(open_store(postgresql_backend), "old").state.status is Status.COMPLETED
    assert "scrapy-checkpoint migrate" in caplog.text
    assert "shared_workers" not in _tables(postgresql_backend)
    from scrapy_checkpoint.shared import open_shared

    store = open_store(job)
    with pytest.raises(ConfigError, match="scrapy-checkpoint migrate"):
        open_shared(store, "site", worker="w").hold_joining()
    store.close()


def test_the_stage_status_view_has_one_row_per_stage_with_its_live_owner(
    postgresql_backend: str,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=4)
    cp.update(processed=1, successful=1, index=0)
    cp.save(force=True)
    cp.drain_io()
    query = ("SELECT stage, status, total_items, processed_items, owner_pid, owner_host, "
             "updated_at IS NOT NULL FROM {s}.stage_status")
    ((stage, status, total, processed, pid, host, updated),) = _rows(postgresql_backend, query)
    assert (stage, status, total, processed, pid, updated) == ("s", "running", 4, 1, os.getpid(), True)
    assert host == Owner.current().host
    cp.close()
    ((stage, status, total, processed, pid, host, updated),) = _rows(postgresql_backend, query)
    assert (status, processed, pid, host) == ("paused", 1, None, None)


def test_a_killed_holder_leaves_the_stage_to_the_next_run_at_once(postgresql_backend: str) -> None:
    holder = subprocess.Popen([PYTHON, str(SCRIPTS / "hold_stage.py"), postgresql_backend, "s"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env())
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == b"ready"
    store = open_store(postgresql_backend)
    owner = store.live_owner("s")
    assert owner is not None
    assert owner.pid == holder.pid
    with pytest.raises(CheckpointError, match=f"in use by pid {holder.pid} on host"):
        EnhancedCheckpoint(postgresql_backend, "s", log_every=0).start()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    holder.stdout.close()
    assert holder.stdin is not None
    holder.stdin.close()
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    state = cp.start()
    assert state.progress.processed_items == 1
    assert state.recoveries == 1
    cp.close()
    store.close()


def _terminate(url: str) -> None:
    """End the server session holding the stage's lock, as a restart or a cut would."""
    ((backend_pid,),) = _rows(url, "SELECT backend_pid FROM {s}.owners")
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        # With a timeout it returns once the session is gone, its lock freed with it.
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", [backend_pid])


def _unreachable(store: PostgresStore) -> None:
    """Make ``store`` unable to reach the server until the attribute is deleted."""
    def refuse() -> None:
        raise CheckpointError(f"Cannot reach PostgreSQL at {store.location}: refused.")

    store.db.connect = refuse  # type: ignore[method-assign]


def _journal_seqs(url: str) -> list[tuple[object, ...]]:
    return _rows(url, "SELECT gen, seq FROM {s}.journal ORDER BY gen, seq")


@pytest.fixture
def no_retry_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reconnect at the next write, not a second later (no timing in tests)."""
    monkeypatch.setattr(PostgresLock, "RETRY_SECONDS", 0.0)


def test_a_cut_session_is_taken_again_and_the_buffered_group_applied_once(
    postgresql_backend: str, caplog: pytest.LogCaptureFixture,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    _terminate(postgresql_backend)
    with caplog.at_level(logging.WARNING, logger="scrapy_checkpoint"):
        cp.update(processed=1, successful=1, index=1)  # cut: kept in the process
        assert "is lost (terminating connection due to administrator command). 1 group(s) " \
               "buffered until it is back." in caplog.text
        cp.update(processed=1, successful=1, index=2)  # the lock taken again, both sent
        assert "reconnected to PostgreSQL" in caplog.text
    assert cp.store.live_owner("s") is not None
    cp.close()
    again = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    assert again.start().progress.processed_items == 3
    again.close()
    seqs = _journal_seqs(postgresql_backend)
    assert len(seqs) == len(set(seqs))


def test_a_session_the_server_still_holds_is_ended_and_the_lock_taken_again(
    postgresql_backend: str,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    store = cp.store
    assert isinstance(store, PostgresStore)
    lock = store._locks["s"]
    stale, lock.conn = lock.conn, None  # lost to this process, still alive on the server
    cp.update(processed=1, successful=1, index=1)
    assert lock.conn is not None
    with pytest.raises(psycopg.OperationalError, match="terminating connection"):
        stale.execute("SELECT 1")  # ended by the server
    assert cp.store.live_owner("s") is not None
    cp.close()
    stale.close()
    again = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    assert again.start().progress.processed_items == 2
    again.close()


def test_a_group_whose_commit_was_cut_is_applied_once(
    postgresql_backend: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    store = cp.store
    assert isinstance(store, PostgresStore)
    lock = store._locks["s"]
    real_run = lock.run

    def commit_then_cut(query: Any, params: Any = None) -> Any:
        real_run(query, params)  # committed; the answer never arrives
        monkeypatch.setattr(lock, "run", real_run)
        lock.conn.close()
        lock.conn = None
        raise PostgresUnreachable("cut after COMMIT")

    monkeypatch.setattr(lock, "run", commit_then_cut)
    cp.update(processed=1, successful=1, index=1)  # applied, but not known to be
    cp.update(processed=1, successful=1, index=2)  # sent again with the next one
    cp.close()
    again = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    state = again.start()
    assert state.progress.processed_items == 3
    assert state.progress.successful_items == 3
    again.close()


def test_groups_wait_while_the_server_is_unreachable_and_go_once_it_is_back(
    postgresql_backend: str, no_retry_wait: None,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    store = cp.store
    assert isinstance(store, PostgresStore)
    _unreachable(store)
    _terminate(postgresql_backend)
    for index in range(1, 5):
        cp.update(processed=1, successful=1, index=index)
    assert len(_journal_seqs(postgresql_backend)) == 2  # init and the first update
    del store.db.connect  # back
    cp.update(processed=1, successful=1, index=5)
    assert len(_journal_seqs(postgresql_backend)) == 7
    cp.close()
    again = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    assert again.start().progress.processed_items == 6
    again.close()


def test_past_its_buffer_an_unreachable_server_stops_the_job_and_the_next_run_resumes(
    postgresql_backend: str, no_retry_wait: None,
) -> None:
    store = PostgresStore(postgresql_backend, buffer_bytes=0)
    cp = EnhancedCheckpoint(stage="s", store=store, log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    _unreachable(store)
    _terminate(postgresql_backend)
    with pytest.raises(CheckpointWriteError, match=(
            r"PostgreSQL at postgresql://postgres@.* has been unreachable for 1 journal groups "
            r"\(\d+ bytes, over CHECKPOINT_REDIS_BUFFER=0\); stopping rather than losing records")):
        cp.update(processed=1, successful=1, index=1)
    cp.abandon()
    store.close()
    again = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    assert again.start().progress.processed_items == 1
    again.close()


def test_a_stage_taken_by_another_while_the_session_was_cut_stops_the_writer(
    postgresql_backend: str, no_retry_wait: None,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    store = cp.store
    assert isinstance(store, PostgresStore)
    _unreachable(store)
    _terminate(postgresql_backend)
    cp.update(processed=1, successful=1, index=1)  # buffered
    other = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    other.start()  # the stage is free: another run takes it, recovers and goes on
    other.update(processed=1, successful=1, index=7)
    other.close()
    del store.db.connect
    with pytest.raises(CheckpointWriteError, match="was taken by another process while the "
                                                   "connection to PostgreSQL"):
        cp.update(processed=1, successful=1, index=2)
    cp.abandon()
    again = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    assert again.start().progress.processed_items == 2  # the other run's, not the lost ones
    again.close()


def test_tables_dropped_under_a_running_stage_stop_it_as_a_lost_checkpoint(
    postgresql_backend: str,
) -> None:
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0, save_every=1)
    cp.start(total_items=10)
    cp.update(processed=1, successful=1, index=0)
    drop_postgres_schema(_schema(postgresql_backend))
    with pytest.raises(CheckpointLostError, match="no longer holds the tables of schema"):
        cp.update(processed=1, successful=1, index=1)
    cp.abandon()


def test_a_state_write_over_a_row_changed_by_another_is_refused(
    postgresql_backend: str, caplog: pytest.LogCaptureFixture,
) -> None:
    store = open_store(postgresql_backend)
    lock = store.lock("s", Owner.current())
    try:
        first = CheckpointState(stage="s", done_units=1).model_dump_json().encode()
        store.write_state("s", first)
        store.write_state("s", first)
        assert _rows(postgresql_backend, "SELECT version FROM {s}.stages") == [(2,)]
        _rows(postgresql_backend, "UPDATE {s}.stages SET version = version + 1 RETURNING 1")
        with caplog.at_level(logging.ERROR, logger="scrapy_checkpoint"):
            store.write_state("s", CheckpointState(stage="s", done_units=2).model_dump_json().encode())
        assert "was changed by another process (version 2 expected)" in caplog.text
        state, _ = store.read_state("s")
        assert state is not None
        assert state.done_units == 1
    finally:
        lock.release()
        store.close()


def test_a_state_holding_a_nul_character_is_stored_as_jsonb(postgresql_backend: str) -> None:
    store = open_store(postgresql_backend)
    lock = store.lock("s", Owner.current())
    try:
        state = CheckpointState(stage="s", error_message="bad byte \x00 here, a \\u0000 kept")
        store.write_state("s", state.model_dump_json().encode())
        read, problems = store.read_state("s")
        assert read is not None
        assert read.error_message == "bad byte \ufffd here, a \\u0000 kept"
        assert problems == []
    finally:
        lock.release()
        store.close()


def test_a_completed_stage_reads_back_through_the_manager_and_the_cli(
    postgresql_backend: str, capsys: pytest.CaptureFixture[str],
) -> None:
    from scrapy_checkpoint.cli import run

    _completed_stage(postgresql_backend, "s")
    state, problems = open_store(postgresql_backend).read_state("s")
    assert state is not None
    assert state.status is Status.COMPLETED
    assert problems == []
    assert run(["--backend", postgresql_backend, "show", "s"]) == 0
    assert "2/2 (100.0%)" in capsys.readouterr().out
    assert run(["--backend", postgresql_backend, "reset", "s"]) == 0
    assert open_store(postgresql_backend).stages() == []


def test_a_shared_stage_worker_frozen_past_its_lease_is_adopted_and_then_stops(
        postgresql_backend: str) -> None:
    """A worker on another host that stops beating (frozen) still holds its sub-stage
    lock's session: once its lease ran out, the adopter ends that session and takes the
    sub-stage; the frozen process's next write finds the stage taken."""
    from scrapy_checkpoint.shared import open_shared, sub_stage_name

    sub = sub_stage_name("site", "frozen")
    frozen_store = PostgresStore(postgresql_backend, lease_seconds=0.5)
    frozen_cp = EnhancedCheckpoint(stage=sub, store=frozen_store, log_every=0)
    frozen_cp.start()
    frozen_cp.add_unit(1, {"url": "http://127.0.0.1/1"})
    frozen_cp.save()
    frozen = open_shared(frozen_store, "site", worker="frozen")
    frozen._host = "elsewhere"  # as if on another machine: its pid means nothing here
    token = frozen_store.token(sub)
    assert token is not None
    frozen._register(token)
    frozen.beat()  # its last heartbeat: no heartbeat thread, it is frozen from now on
    assert frozen.claim(1)

    store = PostgresStore(postgresql_backend, lease_seconds=0.5)
    adopter = open_shared(store, "site", worker="adopter")
    deadline = time.monotonic() + 600  # a guard: the lease is 0.5 s, a busy machine is slow
    while [w.alive for w in adopter.workers() if w.id == "frozen"] != [False]:
        assert time.monotonic() < deadline, "the lease never ran out"
        time.sleep(0.05)  # polls the store until the lease has run out
    with pytest.raises(CheckpointLockedError):
        EnhancedCheckpoint(stage=sub, store=store, log_every=0).open()  # its session holds it
    [dead] = [w for w in adopter.workers() if w.id == "frozen"]
    adopter.release_dead(dead)
    taken = EnhancedCheckpoint(stage=sub, store=store, log_every=0)
    taken.open()
    assert list(taken.live.pending) == [1]
    assert adopter.claim(1)
    # The frozen process wakes: its next writes find the stage taken (the first finds its
    # session ended and keeps its group; the next connects again and sees the new owner).
    frozen_cp.add_unit(3, {"url": "http://127.0.0.1/3"})
    frozen_cp.save()
    frozen_cp.add_unit(4, {"url": "http://127.0.0.1/4"})
    with pytest.raises((CheckpointWriteError, CheckpointLockedError)):
        frozen_cp.save()
    taken.close()
    assert read_stage(store, sub).state.pending_units == 1  # nothing of the frozen one's landed
    store.close()
    frozen_store.close()


def _abandoned_stage(url: str, stage: str, updates: int) -> None:
    """A stage of ``updates`` groups (one per update) whose process died after its state
    was written: no snapshot holds them, the journal alone does."""
    cp = EnhancedCheckpoint(url, stage, log_every=0, save_every=1)
    cp.start(total_items=2 * updates)
    for i in range(updates):
        cp.update(processed=1, successful=1, index=i)
    cp.save(force=True)
    cp.abandon()
    cp.store.close()


@pytest.mark.parametrize("deleted", ["the last 5", "every"])
def test_journal_rows_deleted_from_the_end_stop_the_stage_instead_of_redoing_them(
        postgresql_backend: str, deleted: str) -> None:
    """The state row records how many groups the journal held when it was written; rows
    deleted from the end (a hole in the middle is seen anyway) make the next start refuse
    the stage with one paragraph, not resume it with their finished units to redo."""
    _abandoned_stage(postgresql_backend, "s", 20)
    limit = "AND seq >= (SELECT max(seq) - 4 FROM {s}.journal WHERE stage = 's')" \
        if deleted == "the last 5" else ""
    _rows(postgresql_backend, f"DELETE FROM {{s}}.journal WHERE stage = 's' {limit} RETURNING 1")
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    with pytest.raises(CorruptCheckpointError) as caught:
        cp.start(total_items=40)
    found = re.search(r"lacks (\d+) of the (\d+) group", str(caught.value))
    assert found is not None, caught.value
    missing, recorded = int(found[1]), int(found[2])
    assert missing == (5 if deleted == "the last 5" else recorded)
    assert recorded >= 20
    assert "reset the stage" in str(caught.value)
    cp.store.close()
    assert _rows(postgresql_backend, "SELECT count(*) FROM {s}.stages WHERE stage = 's'") == [(1,)]


@pytest.mark.parametrize("payload", ["\\x00", "\\x05000000", "\\x020000007b7d"],
                         ids=["one byte", "header cut short", "no counts"])
def test_a_journal_row_altered_to_a_short_or_countless_payload_is_damage(
        postgresql_backend: str, payload: str) -> None:
    """A journal row's payload replaced by bytes too short for a group's header (or a
    header without its counts) is a damaged record like any other: reported, the groups
    before it kept. It was a struct.error (or KeyError) traceback from show, and from the
    next start."""
    _abandoned_stage(postgresql_backend, "s", 10)
    last = _rows(postgresql_backend, "SELECT max(seq) FROM {s}.journal WHERE stage = 's' "
                 "AND gen = (SELECT max(gen) FROM {s}.journal WHERE stage = 's')")[0][0]
    _rows(postgresql_backend, f"UPDATE {{s}}.journal SET payload = '{payload}'::bytea "
          f"WHERE stage = 's' AND seq = {last} AND gen = (SELECT max(gen) FROM {{s}}.journal "
          f"WHERE stage = 's') RETURNING 1")
    shown = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--backend",
                            postgresql_backend, "show", "s"], capture_output=True, text=True,
                           env=python_env(), timeout=900, check=False)
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 3
    assert "unreadable journal record" in shown.stdout
    cp = EnhancedCheckpoint(postgresql_backend, "s", log_every=0)
    cp.start()
    assert len(cp.live.done) >= 9  # the groups before the altered one (the last may be a tail)
    cp.pause()
    cp.close()
    cp.store.close()


def test_an_intact_journal_after_a_crash_resumes_with_every_group(postgresql_backend: str) -> None:
    """The check counts the groups present, and those set aside as damaged: an intact
    journal resumes as before."""
    _abandoned_stage(postgresql_backend, "s", 20)
    with EnhancedCheckpoint(postgresql_backend, "s", log_every=0) as cp:
        cp.start(total_items=40)
        assert cp.live.processed == 20
        assert all(cp.should_skip(i) for i in range(20))
