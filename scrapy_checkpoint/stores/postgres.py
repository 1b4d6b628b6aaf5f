"""The PostgreSQL store: the same journal, snapshots and state as the file store, in
tables of one schema (default ``scrapy_checkpoint``; ``?schema=NAME`` in the URL).

Tables (created by the store on first use, see :data:`SCHEMA_VERSION`)::

    schema_version  version, applied_at: the versions of this layout applied
    stages          one row per stage: stage, created_at, state (the readable state,
                    JSONB), version (bumped by each state write: optimistic locking),
                    updated_at (of the state)
    owners          stage, owner (JSONB: pid, host, started_at), backend_pid (the server
                    session holding the lock), token (random, one per taking of the
                    lock), locked_at; kept through a reset
    journal         stage, gen, seq, payload: group records
                    (:func:`~scrapy_checkpoint.journal.groups.encode_group` bytes), in
                    order of (gen, seq)
    requests        stage, gen, pos, record: request records
                    (:func:`~scrapy_checkpoint.journal.groups.encode_request` bytes); a
                    record's ref is ``gen << OFFSET_BITS | pos``
    snapshots       stage, gen, data (:mod:`~scrapy_checkpoint.journal.snapshot` bytes),
                    places (the generations its pending units' records are in), created_at
    corrupt         journal records set aside as unreadable, with when
    stage_status    a view: one row per stage, its status, counters and live owner

A group and the request records put since the one before it are written by one SQL
statement (one round trip, one transaction): in the table whole or not at all. The
stage's lock is a session-level advisory lock (``pg_try_advisory_lock`` on
``hashtextextended('<schema>:<stage>', 0)``) held by a connection of its own, which
also carries every write of the holder: the server drops the lock when that session
ends (the process died, its connection was cut). A holder whose session was cut takes
the lock again at its next write only if no other process took the stage meanwhile (the
``owners`` row still holds its token); until the server answers, its journal writer
keeps the groups in the process, in order, and sends each once (``ON CONFLICT DO
NOTHING`` on the journal's key).
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from ..errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointLostError,
    CheckpointWriteError,
    ConfigError,
    CorruptCheckpointError,
    redact,
)
from ..journal.doneset import DoneSet
from ..journal.groups import REQUEST_OVERHEAD, decode_group, decode_request, encode_request
from ..journal.pending import OFFSET_BITS
from ..journal.snapshot import PLACES, decode_header, decode_snapshot
from ..state import CheckpointState, Owner, pid_alive
from .base import Loaded, Store, check_stage_name, is_stage_name

logger = logging.getLogger("scrapy_checkpoint")

DEFAULT_SCHEMA = "scrapy_checkpoint"
#: The layout of the tables this version of the package reads and writes.
SCHEMA_VERSION = 1
#: URL schemes of a PostgreSQL store.
SCHEMES = ("postgresql://", "postgres://")
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")
_POSITION = (1 << OFFSET_BITS) - 1
#: Server-side TCP keepalives of a lock's session: a holder whose machine vanished (no
#: FIN ever comes) loses the lock after about 30 + 3 * 10 seconds.
_KEEPALIVES = ("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
               "SET tcp_keepalives_count = 3")
#: Seconds a lock waits for the session of a dead holder on this host to end.
_DEAD_HOLDER_WAIT = "10s"
# A JSON escape of U+0000 (not preceded by an escaped backslash): JSONB refuses it.
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")

_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.schema_version (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.stages (
    stage text PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    state jsonb,
    version bigint NOT NULL DEFAULT 0,
    updated_at timestamptz);
CREATE TABLE IF NOT EXISTS {s}.owners (
    stage text PRIMARY KEY,
    owner jsonb NOT NULL,
    backend_pid integer NOT NULL,
    token text NOT NULL,
    locked_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS {s}.journal (
    stage text NOT NULL,
    gen bigint NOT NULL,
    seq integer NOT NULL,
    payload bytea NOT NULL,
    PRIMARY KEY (stage, gen, seq));
CREATE TABLE IF NOT EXISTS {s}.requests (
    stage text NOT NULL,
    gen bigint NOT NULL,
    pos bigint NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (stage, gen, pos));
CREATE TABLE IF NOT EXISTS {s}.snapshots (
    stage text NOT NULL,
    gen bigint NOT NULL,
    data bytea NOT NULL,
    places bigint[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, gen));
CREATE TABLE IF NOT EXISTS {s}.corrupt (
    stage text NOT NULL,
    gen bigint NOT NULL,
    seq integer NOT NULL,
    payload bytea NOT NULL,
    set_aside_at timestamptz NOT NULL DEFAULT now());
CREATE OR REPLACE VIEW {s}.stage_status AS
SELECT st.stage,
       st.state ->> 'status' AS status,
       (st.state -> 'progress' ->> 'total_items')::bigint AS total_items,
       (st.state -> 'progress' ->> 'processed_items')::bigint AS processed_items,
       (st.state -> 'progress' ->> 'successful_items')::bigint AS successful_items,
       (st.state -> 'progress' ->> 'failed_items')::bigint AS failed_items,
       (st.state -> 'progress' ->> 'skipped_items')::bigint AS skipped_items,
       (st.state ->> 'pending_units')::bigint AS pending_units,
       (st.state ->> 'throughput')::double precision AS throughput,
       (st.state -> 'progress' ->> 'start_time')::timestamptz AS start_time,
       (st.state -> 'progress' ->> 'estimated_completion_time')::timestamptz AS eta,
       st.state ->> 'error_message' AS error_message,
       st.updated_at,
       st.version,
       CASE WHEN held.pid IS NOT NULL THEN ow.owner ->> 'host' END AS owner_host,
       CASE WHEN held.pid IS NOT NULL THEN (ow.owner ->> 'pid')::integer END AS owner_pid,
       CASE WHEN held.pid IS NOT NULL THEN (ow.owner ->> 'started_at')::timestamptz END
           AS owner_since
FROM {s}.stages st
LEFT JOIN {s}.owners ow ON ow.stage = st.stage
LEFT JOIN LATERAL (
    SELECT l.pid FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.pid = ow.backend_pid
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid = ((hashtextextended({schema_text} || ':' || st.stage, 0) >> 32)
                       & 4294967295)::oid
      AND l.objid = (hashtextextended({schema_text} || ':' || st.stage, 0) & 4294967295)::oid
    LIMIT 1) held ON true;
INSERT INTO {s}.schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
"""


def _driver() -> Any:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - an install problem, said plainly
        raise ConfigError("The PostgreSQL backend needs psycopg 3: "
                          "pip install 'scrapy-checkpoint[postgres]'.") from None
    return psycopg


def _one_line(exc: BaseException) -> str:
    """The server's or driver's message on one line, passwords redacted, without a final
    full stop."""
    return redact(" ".join(str(exc).split())).rstrip(".")


def _sentence(exc: BaseException) -> str:
    """:func:`_one_line` ending as a sentence."""
    text = _one_line(exc)
    return text if text.endswith(("?", "!")) else text + "."


def _columns(records: list[tuple[int, int, bytes]]) -> list[list[Any]]:
    """Request records as the three arrays a statement unnests: gens, positions, records."""
    return [[g for g, _, _ in records], [p for _, p, _ in records], [r for _, _, r in records]]


class PostgresUnreachable(CheckpointWriteError):
    """The session of a stage's lock is gone (the connection was cut, the server
    restarted) and the server cannot be reached to take the lock again yet. A journal
    writer keeps its groups meanwhile; anything else stops."""


class PostgresLock:
    """A stage's lock: a session-level advisory lock held by ``conn``, a connection of its
    own, until :meth:`release` or the end of that session. The holder's writes go through
    ``conn`` (serialised by ``mutex``), so none can land once the lock is gone.

    ``token`` (random) is recorded with the owner: when the session is cut, the next
    write takes the lock again on a new connection only if the ``owners`` row still holds
    this token, i.e. no other process took the stage meanwhile (:meth:`run`).
    """

    #: Seconds between two attempts to reach the server while the session is gone.
    RETRY_SECONDS = 1.0

    def __init__(self, store: PostgresStore, stage: str, owner: Owner) -> None:
        self._store, self._stage, self._owner = store, stage, owner
        self.token = uuid.uuid4().hex
        self.conn: Any = None
        self.mutex = threading.Lock()
        self.released = False
        self._retry_at = 0.0
        #: The version of the stage's state row when the lock was (last) taken.
        self.version = 0

    def take(self) -> None:
        """Take the lock on a new connection and record the owner (see
        :meth:`PostgresStore.lock` for what it raises)."""
        psycopg = _driver()
        db, stage = self._store.db, self._stage
        conn = db.connect()
        key = db.lock_key(stage)
        try:
            conn.execute(_KEEPALIVES)
            held = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                [key]).fetchone()[0]
            recorded = None if held else self._store.recorded_owner(stage)
            if (not held and recorded is not None and recorded.host == socket.gethostname()
                    and not pid_alive(recorded.pid)):
                try:
                    conn.execute(f"SET lock_timeout = '{_DEAD_HOLDER_WAIT}'")
                    conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", [key])
                    held = True
                except psycopg.errors.LockNotAvailable:
                    pass
                conn.execute("SET lock_timeout = 0")
            if not held:
                conn.close()
                if recorded is None:
                    raise CheckpointLockedError(stage, None, None, None)
                raise CheckpointLockedError(stage, recorded.pid, recorded.host,
                                            recorded.started_at.isoformat())
            conn.execute(db.sql(
                "INSERT INTO {s}.owners (stage, owner, backend_pid, token) "
                "VALUES (%s, %s::jsonb, pg_backend_pid(), %s) ON CONFLICT (stage) DO UPDATE SET "
                "owner = EXCLUDED.owner, backend_pid = EXCLUDED.backend_pid, "
                "token = EXCLUDED.token, locked_at = now()"),
                [stage, self._owner.model_dump_json(), self.token])
            row = conn.execute(db.sql("SELECT version FROM {s}.stages WHERE stage = %s"),
                               [stage]).fetchone()
        except psycopg.Error as exc:
            conn.close()
            raise CheckpointError(f"Cannot lock stage {stage!r} in PostgreSQL at {db.location}: "
                                  f"{_sentence(exc)}") from None
        self.conn, self.version = conn, (row[0] if row is not None else 0)

    def _restore(self) -> None:
        """Take the lock again on a new connection after its session was lost (call with
        ``mutex`` held). Raises PostgresUnreachable while the server cannot be reached,
        CheckpointLockedError if another process holds the stage now, CheckpointWriteError
        if one held it meanwhile."""
        psycopg = _driver()
        db, stage = self._store.db, self._stage
        if time.monotonic() < self._retry_at:
            raise PostgresUnreachable(self._lost_message("not reachable yet"))
        try:
            conn = db.connect()
        except CheckpointError as exc:
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
            raise PostgresUnreachable(self._lost_message(str(exc))) from None
        try:
            conn.execute(_KEEPALIVES)
            held = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                [db.lock_key(stage)]).fetchone()[0]
            row = conn.execute(db.sql("SELECT token FROM {s}.owners WHERE stage = %s"),
                               [stage]).fetchone()
            ours = row is not None and row[0] == self.token
            if not held and ours:
                # The server has not seen the end of this process's previous session yet
                # (a cut network): end it (waiting up to 5 s) and take the lock.
                conn.execute(db.sql("SELECT pg_terminate_backend(backend_pid, 5000) "
                                    "FROM {s}.owners WHERE stage = %s AND token = %s"),
                             [stage, self.token])
                held = conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                                    [db.lock_key(stage)]).fetchone()[0]
                if not held:
                    conn.close()
                    self._retry_at = time.monotonic() + self.RETRY_SECONDS
                    raise PostgresUnreachable(self._lost_message(
                        "the server still holds the lock for this process's previous session"))
            if held and ours:
                conn.execute(db.sql("UPDATE {s}.owners SET backend_pid = pg_backend_pid() "
                                    "WHERE stage = %s"), [stage])
                version = conn.execute(db.sql("SELECT version FROM {s}.stages WHERE stage = %s"),
                                       [stage]).fetchone()
                self.conn, self.version = conn, (version[0] if version is not None else 0)
                self._store.lock_restored(stage, self)
                logger.warning("Stage %s: reconnected to PostgreSQL at %s and took the lock "
                               "again.", stage, db.location)
                return
        except psycopg.OperationalError as exc:
            conn.close()
            self._retry_at = time.monotonic() + self.RETRY_SECONDS
            raise PostgresUnreachable(self._lost_message(_one_line(exc))) from None
        conn.close()
        self.released = True
        self._store.forget_lock(stage, self)
        recorded = self._store.recorded_owner(stage) if not held else None
        if recorded is not None:
            raise CheckpointLockedError(stage, recorded.pid, recorded.host,
                                        recorded.started_at.isoformat())
        raise CheckpointWriteError(
            f"Stage {stage!r} was taken by another process while the connection to PostgreSQL "
            f"at {db.location} was lost: this run records nothing more. Run it again to resume "
            f"from what the stage holds now.")

    def _lost_message(self, reason: str) -> str:
        return (f"The connection to PostgreSQL at {self._store.location} that held the lock of "
                f"stage {self._stage!r} is lost ({reason.rstrip('.')}).")

    def _check(self) -> Any:
        """The lock's live connection (call with ``mutex`` held): taken again if its
        session was lost. Raises as :meth:`_restore`, CheckpointError once released."""
        if self.released:
            raise CheckpointError(f"Stage {self._stage!r} is not locked by this process.")
        if self.conn is None:
            self._restore()
        return self.conn

    def _drop(self, exc: BaseException) -> PostgresUnreachable:
        """The session broke under a statement: forget it, return the error to raise."""
        self.conn.close()
        self.conn = None
        return PostgresUnreachable(self._lost_message(_one_line(exc)))

    def run(self, query: Any, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        """Execute ``query`` on the lock's session (one statement, its own transaction) and
        return the cursor. Raises PostgresUnreachable if the session is gone and cannot be
        restored now, CheckpointLockedError or CheckpointWriteError if the stage was taken
        meanwhile, CheckpointError if the lock was released."""
        psycopg = _driver()
        with self.mutex:
            conn = self._check()
            try:
                return conn.execute(query, params)
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed:
                    raise self._drop(exc) from None
                raise

    def transaction(self) -> Any:
        """A context manager: the lock's mutex held and a transaction open on its session
        (raises as :meth:`run`)."""
        return _LockTransaction(self)

    def release(self, *, unlink: bool = False) -> None:
        """See :meth:`~.base.Lock.release` (``unlink`` has no meaning here). Idempotent; a
        server error is logged (the lock then goes with the session, closed here)."""
        with self.mutex:
            if self.released:
                return
            self.released = True
            conn, self.conn = self.conn, None
            try:
                if conn is not None and not conn.closed:
                    conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                                 [self._store.db.lock_key(self._stage)])
            except Exception as exc:
                logger.warning("Stage %s: cannot release the PostgreSQL lock (%s); it goes with "
                               "its session.", self._stage, _one_line(exc))
            finally:
                if conn is not None:
                    conn.close()
        self._store.forget_lock(self._stage, self)

    def __del__(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None and not conn.closed:
            conn.close()


class _LockTransaction:
    def __init__(self, lock: PostgresLock) -> None:
        self._lock = lock
        self._tx: Any = None
        self._conn: Any = None

    def __enter__(self) -> Any:
        lock = self._lock
        lock.mutex.acquire()
        try:
            self._conn = lock._check()
            self._tx = self._conn.transaction()
            self._tx.__enter__()
        except _driver().OperationalError as exc:
            error = lock._drop(exc) if self._broken() else None
            lock.mutex.release()
            if error is None:
                raise
            raise error from None
        except BaseException:
            lock.mutex.release()
            raise
        return self._conn

    def _broken(self) -> bool:
        return self._conn is not None and (self._conn.broken or self._conn.closed)

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        lock, operational = self._lock, _driver().OperationalError
        try:
            try:
                self._tx.__exit__(exc_type, exc, tb)
            except operational as error:
                if self._broken():
                    raise lock._drop(error) from None
                raise
            if isinstance(exc, operational) and self._broken():
                raise lock._drop(exc) from None
        finally:
            lock.mutex.release()


class PostgresJournalWriter:
    """Appends groups to a stage's journal, each with the request records put since the
    group before it, in one statement on the lock's session; one writer per stage, kept
    through compactions (:meth:`rotate`).

    While the lock's session is lost and the server cannot be reached, groups wait in
    the process, in order, up to ``buffer_limit`` bytes (then CheckpointWriteError); each
    is sent once the lock is taken again. A group whose statement was cut after its
    COMMIT is sent again and refused by the journal's key (``ON CONFLICT DO NOTHING``):
    applied once. ``size`` counts the bytes of the groups and request records put in the
    current segment. Raises CheckpointLockedError or CheckpointWriteError if another
    process took the stage meanwhile, CheckpointLostError if the tables were dropped.
    """

    def __init__(self, store: PostgresStore, lock: PostgresLock, stage: str, gen: int,
                 seq: int, pos: int, buffer_limit: int) -> None:
        self._store, self.lock, self._stage = store, lock, stage
        self._gen, self._seq, self._pos = gen, seq, pos
        #: Request records waiting for the next group: (gen, position, record).
        self._requests: list[tuple[int, int, bytes]] = []
        #: Groups not yet in the table: gen, seq, payload, the request records sent with it.
        self._pending: deque[tuple[int, int, bytes, list[tuple[int, int, bytes]]]] = deque()
        self._pending_bytes = 0
        self._buffer_limit = buffer_limit
        self.size = 0

    def rotate(self, gen: int) -> None:
        """Start segment ``gen`` (a compaction): later groups and records go there."""
        self._gen, self._seq, self._pos, self.size = gen, 0, 0, 0

    @property
    def backlog(self) -> int:
        """Groups waiting in the process, not yet in the table."""
        return len(self._pending)

    def put_request(self, code: int, data: bytes) -> int:
        """See :meth:`~.base.JournalWriter.put_request`: sent with the next group, in its
        statement (or by :meth:`flush`)."""
        if self._pos >= _POSITION:
            raise CheckpointError(f"Stage {self._stage!r}: over {_POSITION} request records in "
                                  f"one journal segment; lower compact_min_bytes.")
        self._pos += 1
        record = encode_request(code, data)
        self._requests.append((self._gen, self._pos, record))
        self.size += len(record)
        return self._gen << OFFSET_BITS | self._pos

    def unwritten(self, ref: int) -> bytes | None:
        """The request record ``ref`` if it has not reached the server yet, else None."""
        gen, position = ref >> OFFSET_BITS, ref & _POSITION
        for batch in (self._requests, *(requests for *_, requests in self._pending)):
            for g, p, record in batch:
                if (g, p) == (gen, position):
                    return record
        return None

    def append(self, payload: bytes) -> None:
        """See :meth:`~.base.JournalWriter.append`: one statement, one transaction (the
        group is buffered while the server is unreachable)."""
        requests, self._requests = self._requests, []
        self._pending.append((self._gen, self._seq, bytes(payload), requests))
        self._pending_bytes += len(payload) + sum(len(r) for *_, r in requests)
        self._seq += 1
        self.size += len(payload)
        self.flush()

    def flush(self) -> None:
        """Send the buffered groups, oldest first, each in one statement, then the request
        records no group has carried yet (before a compaction, whose new segment's groups
        may name them). Returns quietly, keeping them, while the server is unreachable;
        raises CheckpointWriteError once they pass ``buffer_limit``."""
        s = self._store.db.schema_sql
        sql = _driver().sql
        insert = ("INSERT INTO {s}.requests (stage, gen, pos, record) SELECT %s, g, p, r "
                  "FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[]) AS t(g, p, r) "
                  "ON CONFLICT DO NOTHING")
        try:
            while self._pending:
                gen, seq, payload, requests = self._pending[0]
                group = [self._stage, gen, seq, payload]
                if requests:
                    self.lock.run(sql.SQL(
                        f"WITH r AS ({insert}) INSERT INTO {{s}}.journal (stage, gen, seq, payload) "
                        f"VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING").format(s=s),
                        [self._stage, *_columns(requests), *group])
                else:
                    self.lock.run(sql.SQL(
                        "INSERT INTO {s}.journal (stage, gen, seq, payload) VALUES (%s, %s, %s, %s) "
                        "ON CONFLICT DO NOTHING").format(s=s), group)
                self._pending.popleft()
                self._pending_bytes -= len(payload) + sum(len(r) for *_, r in requests)
            if self._requests:
                self.lock.run(sql.SQL(insert).format(s=s),
                              [self._stage, *_columns(self._requests)])
                self._requests = []
        except _driver().errors.UndefinedTable:
            raise CheckpointLostError(
                f"PostgreSQL at {self._store.location} no longer holds the tables of schema "
                f"{self._store.schema!r} (dropped while stage {self._stage!r} was running), with "
                f"the journal this stage had recorded. This run stops: nothing more can be "
                f"recorded.") from None
        except PostgresUnreachable as exc:
            if self._pending_bytes > self._buffer_limit:
                raise CheckpointWriteError(
                    f"PostgreSQL at {self._store.location} has been unreachable for "
                    f"{len(self._pending)} journal groups ({self._pending_bytes} bytes, over "
                    f"CHECKPOINT_REDIS_BUFFER={self._buffer_limit}); stopping rather than "
                    f"losing records. Bring PostgreSQL back and run again.") from exc
            logger.warning("%s %d group(s) buffered until it is back.", exc, len(self._pending))

    def sync(self) -> None:
        """A committed statement is durable by the server's own settings
        (``synchronous_commit``)."""

    def fsync(self) -> None:
        """:meth:`flush`."""
        self.flush()

    def close(self) -> None:
        """:meth:`flush`; groups that still cannot be sent, or that may not be since the
        lock was lost, are logged (their units are redone by the next run)."""
        if not self.lock.released:
            self.flush()
        if self._pending:
            logger.error("Stage %s: %d journal group(s) could not reach PostgreSQL at %s.",
                         self._stage, len(self._pending), self._store.location)


class PostgresRequestReader:
    """Reads a stage's request records by ref (one indexed ``SELECT`` each), and from its
    writer's buffer for records not sent yet."""

    def __init__(self, store: PostgresStore, stage: str,
                 writer: PostgresJournalWriter | None) -> None:
        self._store, self._stage, self.writer = store, stage, writer

    def read(self, ref: int, length: int, code: int) -> bytes:
        """See :meth:`~scrapy_checkpoint.journal.pending.RequestReader.read` (ValueError for
        a record that is not there)."""
        raw = self.writer.unwritten(ref) if self.writer is not None else None
        if raw is None:
            row = self._store.db.query_one(
                "SELECT record FROM {s}.requests WHERE stage = %s AND gen = %s AND pos = %s",
                [self._stage, ref >> OFFSET_BITS, ref & _POSITION])
            if row is None:
                raise ValueError(f"request record {ref} of stage {self._stage!r} is missing from "
                                 f"{self._store.schema}.requests")
            raw = row[0]
        if len(raw) != REQUEST_OVERHEAD + length:
            raise ValueError(f"request record {ref} has the wrong length")
        return decode_request(raw, code)


class PostgresDatabase:
    """The server and schema of a :class:`PostgresStore`: its URL, its connections, its
    tables (created on first use).

    ``url``: ``postgresql://[user[:password]@]host[:port]/dbname`` (or ``postgres://``),
    with libpq's query parameters (``sslmode=...``) and optionally ``?schema=NAME`` (or
    ``?prefix=NAME``, the same) for the schema holding the tables; ``schema`` wins over
    the URL's. ``location`` is the URL without its password. Raises
    :class:`~scrapy_checkpoint.errors.CheckpointError` when the server cannot be reached
    or refuses the connection, ConfigError for a bad schema name or a schema made by a
    newer version of the package.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        psycopg = _driver()
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        named = [v for k, v in query if k in ("schema", "prefix")]
        self.schema = schema or (named[-1] if named else DEFAULT_SCHEMA)
        if not _SCHEMA_RE.fullmatch(self.schema):
            raise ConfigError(f"Invalid PostgreSQL schema name {self.schema!r}: use 1-63 letters, "
                              f"digits, '_' or '-', starting with a letter or '_'.")
        rest = [(k, v) for k, v in query if k not in ("schema", "prefix")]
        self._conninfo = urlunsplit(parts._replace(query=urlencode(rest)))
        #: libpq parameters the URL may set otherwise.
        self._defaults = {k: v for k, v in (("connect_timeout", 10),
                                            ("application_name", "scrapy-checkpoint"))
                          if k not in dict(rest)}
        user = parts.netloc.rsplit("@", 1)[0].split(":", 1)[0] if "@" in parts.netloc else ""
        host = parts.netloc.rsplit("@", 1)[-1]
        shown = [(k, v) for k, v in rest if k != "password"]
        if self.schema != DEFAULT_SCHEMA:
            shown.append(("schema", self.schema))
        self.location = redact(urlunsplit(parts._replace(
            netloc=f"{user}@{host}" if user else host, query=urlencode(shown))))
        self.schema_sql = psycopg.sql.Identifier(self.schema)
        self._mutex = threading.Lock()
        self._conn: Any = None
        with self._mutex:
            self._connection()
        self.create_schema()

    def connect(self) -> Any:
        """A new autocommit connection to the server (psycopg ``Connection``). Raises
        CheckpointError, with the server's reason, if it cannot be made."""
        psycopg = _driver()
        try:
            return psycopg.connect(self._conninfo, autocommit=True, **self._defaults)
        except psycopg.Error as exc:
            raise CheckpointError(
                f"Cannot reach PostgreSQL at {self.location}: {_sentence(exc)} Start PostgreSQL, "
                f"or fix the URL in CHECKPOINT_BACKEND (or --backend / backend=).") from None

    def _connection(self) -> Any:
        """The shared connection, for reads and for writes of stages the store does not
        lock (call with ``_mutex`` held); made again if the last one broke."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self.connect()
        return self._conn

    def query(self, query: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of ``query`` (``{s}`` stands for the schema) on the shared connection; run
        again on a new connection once if the shared one turns out broken (the server
        restarted since it was made). Raises CheckpointError if the server cannot be
        reached, psycopg's errors otherwise."""
        operational = _driver().OperationalError
        with self._mutex:
            conn = self._connection()
            try:
                return conn.execute(self.sql(query), params).fetchall()  # type: ignore[no-any-return]
            except operational:
                if not (conn.broken or conn.closed):
                    raise
            return self._connection().execute(self.sql(query), params).fetchall()  # type: ignore[no-any-return]

    def query_one(self, query: str, params: Sequence[Any] | None = None) -> tuple[Any, ...] | None:
        """The first row of ``query`` (``{s}``: the schema), or None."""
        rows = self.query(query, params)
        return rows[0] if rows else None

    def sql(self, query: str) -> Any:
        """``query`` as a psycopg ``sql.Composed`` with ``{s}`` replaced by the quoted
        schema name."""
        return _driver().sql.SQL(query).format(s=self.schema_sql)

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]],
              lock: PostgresLock | None = None) -> None:
        """Run ``statements`` (``{s}``: the schema) in one transaction: on ``lock``'s session
        if given, else on the shared connection."""
        if lock is not None:
            with lock.transaction() as conn:
                for query, params in statements:
                    conn.execute(self.sql(query), params)
            return
        with self._mutex:
            conn = self._connection()
            with conn.transaction():
                for query, params in statements:
                    conn.execute(self.sql(query), params)

    def create_schema(self) -> None:
        """Create the schema and its tables unless they are there (serialised between
        processes by a transaction-level advisory lock). Raises ConfigError if the schema
        is of a newer layout than :data:`SCHEMA_VERSION`."""
        sql = _driver().sql
        found = self.query_one("SELECT to_regclass(format('%%I.schema_version', %s::text))",
                               [self.schema])
        version = None
        if found is not None and found[0] is not None:
            version = (self.query_one("SELECT max(version) FROM {s}.schema_version") or [None])[0]
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(
                f"The tables in schema {self.schema!r} of {self.location} are of layout version "
                f"{version}, newer than this version of scrapy-checkpoint reads "
                f"({SCHEMA_VERSION}): upgrade scrapy-checkpoint.")
        if version == SCHEMA_VERSION:
            return
        logger.info("Creating the checkpoint tables in schema %s of %s (layout version %d).",
                    self.schema, self.location, SCHEMA_VERSION)
        with self._mutex:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                             [f"scrapy_checkpoint schema {self.schema}"])
                conn.execute(sql.SQL(_DDL).format(s=self.schema_sql,
                                                  schema_text=sql.Literal(self.schema)))

    def reading(self) -> Any:
        """A context manager: the shared connection (psycopg ``Connection``), no other
        thread using it, in a REPEATABLE READ, READ ONLY transaction."""
        return _Shared(self, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def transaction(self) -> Any:
        """A context manager: the shared connection, no other thread using it, in a
        transaction."""
        return _Shared(self, None)

    def close(self) -> None:
        """Close the shared connection (held locks keep theirs until released)."""
        with self._mutex:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None and not conn.closed:
            conn.close()

    def lock_key(self, stage: str) -> str:
        """The text whose ``hashtextextended(text, 0)`` is ``stage``'s advisory lock key."""
        return f"{self.schema}:{stage}"



class _Shared:
    def __init__(self, db: PostgresDatabase, first: str | None) -> None:
        self._db, self._first = db, first
        self._tx: Any = None

    def __enter__(self) -> Any:
        self._db._mutex.acquire()
        try:
            conn = self._db._connection()
            self._tx = conn.transaction()
            self._tx.__enter__()
            if self._first is not None:
                conn.execute(self._first)
        except BaseException:
            if self._tx is not None:
                self._tx.__exit__(None, None, None)
            self._db._mutex.release()
            raise
        return conn

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._tx.__exit__(*exc_info)
        finally:
            self._db._mutex.release()


class PostgresStore(Store):
    """Stages kept in PostgreSQL (see the module docstring for the tables), in the
    database and schema of ``url`` (see :class:`PostgresDatabase`, which raises
    CheckpointError when the server cannot be reached, ConfigError for a bad schema).

    ``buffer_bytes``: journal groups a writer keeps in the process while the server is
    unreachable (then it stops with CheckpointWriteError), 64 MiB by default."""

    def __init__(self, url: str, *, schema: str | None = None,
                 buffer_bytes: int = 64 << 20) -> None:
        self.db = PostgresDatabase(url, schema=schema)
        self.buffer_bytes = buffer_bytes
        self._writers: dict[str, PostgresJournalWriter] = {}
        #: Compactions whose snapshot may be written: (stage, gen) -> no group was buffered.
        self._rotations: dict[tuple[str, int], bool] = {}
        self.schema, self.location = self.db.schema, self.db.location
        self.directory = self.location
        self._locks: dict[str, PostgresLock] = {}
        #: The state row's version each held stage last wrote (optimistic locking).
        self._versions: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"PostgresStore({self.location!r}, schema={self.schema!r})"

    def close(self) -> None:
        """Close the shared connection (held locks keep theirs until released)."""
        self.db.close()

    def forget_lock(self, stage: str, lock: PostgresLock) -> None:
        """Called by ``lock`` on release: this store no longer holds ``stage``."""
        if self._locks.get(stage) is lock:
            del self._locks[stage]
            self._versions.pop(stage, None)
            self._writers.pop(stage, None)

    # -- ownership ---------------------------------------------------------------------------

    def stages(self) -> list[str]:
        """See :meth:`Store.stages`."""
        return [name for (name,) in self.db.query("SELECT stage FROM {s}.stages ORDER BY stage")
                if is_stage_name(name)]

    def lock(self, stage: str, owner: Owner) -> PostgresLock:
        """See :meth:`Store.lock`: ``pg_try_advisory_lock`` on a connection of the lock's
        own; the owner is recorded in ``owners`` once it is held. A holder on this host
        whose process is gone is waited for (its session ends within moments, at most 10
        s). Raises CheckpointLockedError naming the holder, CheckpointError if the server
        cannot be reached."""
        check_stage_name(stage)
        lock = PostgresLock(self, stage, owner)
        lock.take()
        self._locks[stage] = lock
        self._versions[stage] = lock.version
        return lock

    def lock_restored(self, stage: str, lock: PostgresLock) -> None:
        """Called by ``lock`` once it took the stage again after its session was lost."""
        if self._locks.get(stage) is lock:
            self._versions[stage] = lock.version

    def recorded_owner(self, stage: str) -> Owner | None:
        row = self.db.query_one("SELECT owner::text FROM {s}.owners WHERE stage = %s", [stage])
        try:
            return Owner.model_validate_json(row[0]) if row is not None else None
        except ValidationError:
            return None

    def live_owner(self, stage: str) -> Owner | None:
        """See :meth:`Store.live_owner`: the recorded owner if its session holds the
        advisory lock now (``pg_locks``), and on this host its pid lives."""
        row = self.db.query_one(
            "SELECT o.owner::text FROM {s}.owners o, pg_locks l "
            "WHERE o.stage = %s AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.pid = o.backend_pid "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = ((hashtextextended(%s, 0) >> 32) & 4294967295)::oid "
            "AND l.objid = (hashtextextended(%s, 0) & 4294967295)::oid",
            [stage, self.db.lock_key(stage), self.db.lock_key(stage)])
        if row is None:
            return None
        try:
            owner = Owner.model_validate_json(row[0])
        except ValidationError:
            return None
        if owner.host == socket.gethostname() and not pid_alive(owner.pid):
            return None
        return owner

    # -- state -------------------------------------------------------------------------------

    def write_state(self, stage: str, data: bytes) -> None:
        """See :meth:`Store.write_state`: one upsert of the ``stages`` row. While this store
        holds ``stage`` the update applies only if the row's ``version`` is still the one it
        last wrote (optimistic locking; else it is logged and skipped); ``version`` is
        bumped and ``updated_at`` set. A lost connection is logged (the state is a
        summary: the next write replaces it)."""
        text = _JSON_NUL.sub(rb"\1\\ufffd", bytes(data)).decode("utf-8")
        expected = self._versions.get(stage)
        query = ("INSERT INTO {s}.stages AS t (stage, state, version, updated_at) "
                 "VALUES (%s, %s::jsonb, 1, now()) ON CONFLICT (stage) DO UPDATE SET "
                 "state = EXCLUDED.state, version = t.version + 1, updated_at = now()")
        params: list[Any] = [stage, text]
        if expected is not None:
            query += " WHERE t.version = %s"
            params.append(expected)
        query += " RETURNING version"
        lock = self._locks.get(stage)
        try:
            if lock is not None:
                row = lock.run(self.db.sql(query), params).fetchone()
            else:
                row = self.db.query_one(query, params)
        except CheckpointError as exc:
            logger.warning("Stage %s: state not written (%s).", stage, exc)
            return
        except _driver().OperationalError as exc:
            logger.warning("Stage %s: state not written, PostgreSQL unreachable (%s).", stage,
                           _one_line(exc))
            return
        if row is None:
            logger.error("Stage %s: not writing the state, its row in %s.stages was changed by "
                         "another process (version %s expected).", stage, self.schema, expected)
        elif expected is not None:
            self._versions[stage] = row[0]

    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]:
        """See :meth:`Store.read_state`."""
        row = self.db.query_one("SELECT state::text FROM {s}.stages WHERE stage = %s", [stage])
        if row is None or row[0] is None:
            return None, []
        try:
            return CheckpointState.model_validate_json(row[0]), []
        except ValidationError as exc:
            return None, [f"the state in {self.schema}.stages is damaged "
                          f"({exc.error_count()} problem(s))"]

    # -- journal and snapshots ---------------------------------------------------------------

    def load(self, stage: str) -> Loaded:
        """See :meth:`Store.load`: the newest snapshot that decodes and the groups of the
        segments from its generation on, read in one REPEATABLE READ transaction.
        ``generation`` is the last segment, ``good_bytes`` its number of good groups. A
        record that does not decode ends replay there (``problems``, ``dropped_bytes``)."""
        with self.db.reading() as conn:
            exists = conn.execute(self.db.sql("SELECT 1 FROM {s}.stages WHERE stage = %s"),
                                  [stage]).fetchone() is not None
            snapshots = conn.execute(self.db.sql(
                "SELECT gen, data FROM {s}.snapshots WHERE stage = %s ORDER BY gen DESC"),
                [stage]).fetchall()
            first = conn.execute(self.db.sql(
                "SELECT min(gen) FROM {s}.journal WHERE stage = %s"), [stage]).fetchone()[0]
            base, header, done, blob, problems = 0, None, DoneSet(), b"", []
            for gen, data in snapshots:
                try:
                    header, done = decode_snapshot(data)
                    if header["state"].get("stage") != stage:
                        raise ValueError(f"it belongs to stage {header['state'].get('stage')!r}")
                except (ValueError, KeyError, TypeError) as exc:
                    header, done = None, DoneSet()
                    problems.append(f"snapshot {gen} in {self.schema}.snapshots is damaged "
                                    f"({exc}); using the one before it")
                    continue
                base, blob = gen, data
                break
            if snapshots and header is None and first not in (None, 0):
                raise CorruptCheckpointError(
                    f"Every snapshot of stage {stage!r} in {self.location} is damaged and the "
                    f"journal before them was deleted, so the stage cannot be rebuilt. Reset "
                    f"the stage to start over.")
            rows = conn.execute(self.db.sql(
                "SELECT gen, seq, payload FROM {s}.journal WHERE stage = %s AND gen >= %s "
                "ORDER BY gen, seq"), [stage, base]).fetchall()
        loaded = Loaded(header, done, base, len(blob), exists=exists or bool(snapshots or rows),
                        problems=problems, generation=base, requests=self.request_reader(stage))
        expected_gen, good = None, 0
        for index, (gen, seq, payload) in enumerate(rows):
            if gen != expected_gen:
                expected_gen, good = gen, 0
            try:
                if seq != good:
                    raise ValueError(f"record {good} is missing")
                loaded.payloads.append(decode_group(payload))
            except (ValueError, KeyError, TypeError) as exc:
                problems.append(f"unreadable journal record {seq} of segment {gen} ({exc}); "
                                f"later records ignored")
                loaded.dropped_bytes = sum(len(r[2]) for r in rows[index:])
                break
            good += 1
        if expected_gen is not None:
            loaded.generation, loaded.good_bytes = expected_gen, good
        return loaded

    def discard_snapshot(self, staged: Any) -> None:
        """See :meth:`Store.discard_snapshot`: nothing was made."""

    def request_reader(self, stage: str, writer: Any = None) -> PostgresRequestReader:
        """See :meth:`Store.request_reader`."""
        return PostgresRequestReader(self, stage, writer if isinstance(writer, PostgresJournalWriter)
                                     else None)

    def set_aside(self, stage: str, loaded: Loaded) -> None:
        """See :meth:`Store.set_aside`: the records after the last good one move to
        ``corrupt``, in one transaction."""
        self.db.write(lock=self._locks.get(stage), statements=[(
            "WITH moved AS (DELETE FROM {s}.journal WHERE stage = %s AND "
            "(gen = %s AND seq >= %s OR gen > %s) RETURNING stage, gen, seq, payload) "
            "INSERT INTO {s}.corrupt (stage, gen, seq, payload) SELECT * FROM moved",
            [stage, loaded.generation, loaded.good_bytes, loaded.generation])])

    def open_segment(self, stage: str, gen: int, *, truncate_at: int | None,
                     buffered: bool) -> PostgresJournalWriter:
        """See :meth:`Store.open_segment` (``truncate_at`` counts groups; ``buffered`` has
        no meaning here: each group is sent at once). At a compaction the stage's writer
        is kept (:meth:`PostgresJournalWriter.rotate`), with the groups it may buffer, and
        the snapshot is skipped if it holds any. Raises CheckpointError unless this store
        holds ``stage``'s lock."""
        lock = self._locks.get(stage)
        if lock is None:
            raise CheckpointError(f"Stage {stage!r} is not locked by this process.")
        writer = self._writers.get(stage)
        if writer is not None and writer.lock is lock and truncate_at is None and gen > 0:
            self._rotations[(stage, gen)] = not writer.backlog
            writer.rotate(gen)
            return writer
        with lock.transaction() as conn:
            conn.execute(self.db.sql("INSERT INTO {s}.stages (stage) VALUES (%s) "
                                     "ON CONFLICT DO NOTHING"), [stage])
            if truncate_at is not None:
                conn.execute(self.db.sql("DELETE FROM {s}.journal WHERE stage = %s AND "
                                         "(gen = %s AND seq >= %s OR gen > %s)"),
                             [stage, gen, truncate_at, gen])
                conn.execute(self.db.sql("DELETE FROM {s}.requests WHERE stage = %s AND gen > %s"),
                             [stage, gen])
            seq, pos = conn.execute(self.db.sql(
                "SELECT (SELECT coalesce(max(seq) + 1, 0) FROM {s}.journal "
                "        WHERE stage = %s AND gen = %s), "
                "       (SELECT coalesce(max(pos), 0) FROM {s}.requests "
                "        WHERE stage = %s AND gen = %s)"), [stage, gen, stage, gen]).fetchone()
        writer = PostgresJournalWriter(self, lock, stage, gen, seq, pos, self.buffer_bytes)
        self._writers[stage] = writer
        return writer

    def write_snapshot(self, stage: str, gen: int, blob: Any,
                       freed: Sequence[int] = ()) -> None:
        """See :meth:`Store.write_snapshot`: one upsert of the ``snapshots`` row (``freed``
        is not needed: :meth:`retain` keeps the segments the kept snapshots' ``places``
        name). Skipped, and logged, when groups before ``gen`` were still buffered at the
        compaction or the server cannot be reached now: the journal keeps what it covers."""
        if not self._rotations.pop((stage, gen), True):
            logger.info("Stage %s: snapshot %d skipped, journal groups before it were waiting "
                        "for PostgreSQL.", stage, gen)
            return
        data = blob if isinstance(blob, bytes) else b"".join(blob)
        places = [int(p) for p in decode_header(data).get(PLACES, [])]
        try:
            self.db.write(lock=self._locks.get(stage), statements=[(
                "INSERT INTO {s}.snapshots (stage, gen, data, places) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (stage, gen) DO UPDATE SET data = EXCLUDED.data, "
                "places = EXCLUDED.places, created_at = now()", [stage, gen, data, places])])
        except PostgresUnreachable as exc:
            logger.warning("Stage %s: snapshot %d not written (%s); the journal keeps what it "
                           "covers.", stage, gen, exc)

    def retain(self, stage: str, keep: int) -> None:
        """See :meth:`Store.retain`: the newest ``keep`` snapshots, the journal from the
        oldest of them on, and the request records of older segments they need; one
        transaction (skipped while the server cannot be reached)."""
        lock = self._locks.get(stage)
        try:
            with lock.transaction() if lock is not None else self.db.transaction() as conn:
                rows = conn.execute(self.db.sql("SELECT gen, places FROM {s}.snapshots "
                                                "WHERE stage = %s ORDER BY gen DESC"),
                                    [stage]).fetchall()
                if len(rows) <= keep:
                    return
                oldest = rows[keep - 1][0]
                needed = sorted({int(p) for _, places in rows[:keep] for p in places})
                for query, params in (
                    ("DELETE FROM {s}.snapshots WHERE stage = %s AND gen < %s", [stage, oldest]),
                    ("DELETE FROM {s}.journal WHERE stage = %s AND gen < %s", [stage, oldest]),
                    ("DELETE FROM {s}.requests WHERE stage = %s AND gen < %s AND gen <> ALL(%s)",
                     [stage, oldest, needed]),
                ):
                    conn.execute(self.db.sql(query), params)
        except PostgresUnreachable:
            return

    # -- whole stages ------------------------------------------------------------------------

    def remove(self, stage: str) -> None:
        """See :meth:`Store.remove`: every row of ``stage`` but its ``owners`` one, in one
        transaction."""
        tables = ("journal", "requests", "snapshots", "corrupt", "stages")
        self._writers.pop(stage, None)
        self.db.write([(f"DELETE FROM {{s}}.{table} WHERE stage = %s", [stage]) for table in tables],
                      self._locks.get(stage))

    def segments(self, stage: str) -> list[int]:
        """The generations of the journal segments of ``stage`` with groups or request
        records in the tables, oldest first."""
        return [gen for (gen,) in self.db.query(
            "SELECT gen FROM {s}.journal WHERE stage = %s UNION "
            "SELECT gen FROM {s}.requests WHERE stage = %s ORDER BY gen", [stage, stage])]

    def disk_usage(self, stage: str) -> dict[str, int]:
        """See :meth:`Store.disk_usage`: the bytes the stage's values take in the tables
        (``pg_column_size``: after the server's compression, without row overhead)."""
        row = self.db.query_one(
            "SELECT (SELECT coalesce(sum(pg_column_size(payload)), 0) FROM {s}.journal "
            "        WHERE stage = %s) "
            "     + (SELECT coalesce(sum(pg_column_size(record)), 0) FROM {s}.requests "
            "        WHERE stage = %s), "
            "       (SELECT coalesce(sum(pg_column_size(data)), 0) FROM {s}.snapshots "
            "        WHERE stage = %s), "
            "       (SELECT coalesce(sum(pg_column_size(state)), 0) FROM {s}.stages "
            "        WHERE stage = %s)", [stage] * 4)
        journal, snapshot, state = (int(v) for v in row) if row is not None else (0, 0, 0)
        return {"journal_bytes": journal, "snapshot_bytes": snapshot, "state_bytes": state}


__all__ = ["DEFAULT_SCHEMA", "SCHEMA_VERSION", "SCHEMES", "PostgresJournalWriter", "PostgresLock",
           "PostgresRequestReader", "PostgresStore"]
