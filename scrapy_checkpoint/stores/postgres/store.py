"""The PostgreSQL store: what :class:`~scrapy_checkpoint.stores.base.Store` asks, on the
tables of ``schema.sql`` (see the package docstring)."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from ...errors import CheckpointError, CorruptCheckpointError
from ...journal.doneset import DoneSet
from ...journal.groups import INIT, decode_group
from ...journal.pending import MAX_GENERATION
from ...journal.snapshot import PLACES, decode_header, decode_snapshot
from ...state import CheckpointState, Owner, pid_alive
from ..base import Loaded, Store, check_stage_name, is_stage_name
from .database import PostgresDatabase, driver, logger, one_line
from .journal import PostgresJournalWriter, PostgresRequestReader
from .lock import PostgresLock, PostgresUnreachable

# A JSON escape of U+0000 (not preceded by an escaped backslash): JSONB refuses it.
_JSON_NUL = re.compile(rb"(?<!\\)((?:\\\\)*)\\u0000")


#: Key of the ``stages.state`` document holding the journal's end, ``[segment, groups]``,
#: as the writer had inserted it when the state was written (not part of CheckpointState).
JOURNAL_END = "journal_end"


def _journal_end(value: Any) -> tuple[int, int] | None:
    """``state -> 'journal_end'`` as (segment, groups), or None (none recorded, or not
    two non-negative integers: a state written by an older version or by hand)."""
    if (isinstance(value, list) and len(value) == 2
            and all(type(v) is int and v >= 0 for v in value)):
        return value[0], value[1]
    return None


def _check_journal_end(table: str, stage: str, end: tuple[int, int], present: int) -> None:
    """Raise CorruptCheckpointError if segment ``end[0]`` holds fewer than the ``end[1]``
    groups the state row recorded (``present``: those found, or set aside as damaged)."""
    if present < end[1]:
        raise CorruptCheckpointError(
            f"The journal of stage {stage!r} in {table} lacks {end[1] - present} of the "
            f"{end[1]} group(s) of segment {end[0]} recorded in its state: rows were deleted "
            f"(by hand, a TRUNCATE, a restore of an older backup). The units they finished are "
            f"not known, so the stage is not resumed (it would redo them and write their "
            f"outputs again). Nothing was changed; restore the rows, or reset the stage to "
            f"start it over (scrapy-checkpoint --backend URL reset {stage}).")


class PostgresStore(Store):
    """Stages kept in PostgreSQL (see the package docstring for the tables), in the
    database and schema of ``url`` (see :class:`PostgresDatabase`, which raises
    CheckpointError when the server cannot be reached, ConfigError for a bad schema).

    ``buffer_bytes``: journal groups a writer keeps in the process while the server is
    unreachable (then it stops with CheckpointWriteError), 64 MiB by default.
    ``lease_seconds``: how long a worker of a shared stage may be silent before it is
    taken for dead (:mod:`scrapy_checkpoint.shared.postgres`). ``ttls``: seconds a stage
    is kept after its last state write, by status (keys ``active``, ``completed``,
    ``failed``; a missing key never expires), applied by :meth:`expire`; None: no expiry."""

    def __init__(self, url: str, *, schema: str | None = None,
                 buffer_bytes: int = 64 << 20, lease_seconds: float = 60.0,
                 ttls: dict[str, int] | None = None) -> None:
        self.db = PostgresDatabase(url, schema=schema)
        self.buffer_bytes = buffer_bytes
        self.lease_seconds = lease_seconds
        self.ttls = dict(ttls) if ttls is not None else None
        self._expired = False
        #: The last state of each held stage that could not be written (server away).
        self._unwritten: dict[str, bytes] = {}
        #: Sub-stages whose journal appends keep their shared stage's claims in step.
        self._tracked: dict[str, str] = {}
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
            self._unwritten.pop(stage, None)
            self._writers.pop(stage, None)

    def ping(self) -> None:
        """One round trip to the server (``SELECT 1``): for health checks. Raises what the
        driver raises when the server does not answer."""
        self.db.query_one("SELECT 1")

    # -- ownership ---------------------------------------------------------------------------

    def stages(self) -> list[str]:
        """See :meth:`Store.stages` (none while the tables do not exist: reading creates
        nothing)."""
        if not self.db.ready:
            return []
        return [name for (name,) in self.db.query("SELECT stage FROM {s}.stages ORDER BY stage")
                if is_stage_name(name)]

    def lock(self, stage: str, owner: Owner) -> PostgresLock:
        """See :meth:`Store.lock`: ``pg_try_advisory_lock`` on a connection of the lock's
        own; the owner is recorded in ``owners`` once it is held. A holder on this host
        whose process is gone is waited for (its session ends within moments, at most 10
        s). Raises CheckpointLockedError naming the holder, CheckpointError if the server
        cannot be reached."""
        check_stage_name(stage)
        self.db.ensure(needed=1)  # a writer: the tables are created now if they are not there
        lock = PostgresLock(self, stage, owner)
        lock.take()
        self._locks[stage] = lock
        self._versions[stage] = lock.version
        if self.ttls is not None and not self._expired:
            self._expired = True  # once per store: a writer does it as it starts
            self.expire()
        return lock

    def expire(self) -> list[str]:
        """Remove the stages past their TTL (``ttls``): see :func:`expire_stages`."""
        return expire_stages(self.db, self.ttls) if self.ttls is not None else []

    def token(self, stage: str) -> str | None:
        """The token of the lock this process holds on ``stage`` (recorded in ``owners``)."""
        lock = self._locks.get(stage)
        return lock.token if lock is not None else None

    def track_shared(self, sub_stage: str, stage: str) -> None:
        """Have ``sub_stage``'s journal appends keep shared stage ``stage`` in step, in the
        statement that appends each group: a unit the group finishes gets the claim
        ``=``, a unit it adds leaves ``shared_queued`` (unless the group hands it off).
        Call before the sub-stage is opened."""
        self._tracked[sub_stage] = stage

    def state_caught_up(self, stage: str) -> None:
        """Called by ``stage``'s journal writer once every group reached the server: the
        last state that could not be written meanwhile is written now, so the ``stages``
        row (and the ``stage_status`` view) does not stay at what it was before the
        outage."""
        data = self._unwritten.get(stage)
        if data is not None:
            self.write_state(stage, data)

    def lock_restored(self, stage: str, lock: PostgresLock) -> None:
        """Called by ``lock`` once it took the stage again after its session was lost."""
        if self._locks.get(stage) is lock:
            self._versions[stage] = lock.version

    def recorded_owner(self, stage: str) -> Owner | None:
        if not self.db.ready:
            return None
        row = self.db.query_one("SELECT owner::text FROM {s}.owners WHERE stage = %s", [stage])
        try:
            return Owner.model_validate_json(row[0]) if row is not None else None
        except ValidationError:
            return None

    def live_owner(self, stage: str) -> Owner | None:
        """See :meth:`Store.live_owner`: the recorded owner if its session holds the
        advisory lock now (``pg_locks``), and on this host its pid lives."""
        if not self.db.ready:
            return None
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
        writer = self._writers.get(stage)  # the journal's end, for load() to check
        end = json.dumps({JOURNAL_END: list(writer.sent)} if writer is not None else {})
        query = ("INSERT INTO {s}.stages AS t (stage, state, version, updated_at) "
                 "VALUES (%s, %s::jsonb || %s::jsonb, 1, now()) ON CONFLICT (stage) DO UPDATE "
                 "SET state = EXCLUDED.state, version = t.version + 1, updated_at = now()")
        params: list[Any] = [stage, text, end]
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
            if lock is not None and not lock.released:
                self._unwritten[stage] = bytes(data)  # written once the journal catches up
            logger.warning("Stage %s: state not written (%s).", stage, exc)
            return
        except driver().OperationalError as exc:
            logger.warning("Stage %s: state not written, PostgreSQL unreachable (%s).", stage,
                           one_line(exc))
            return
        self._unwritten.pop(stage, None)
        if row is None:
            logger.error("Stage %s: not writing the state, its row in %s.stages was changed by "
                         "another process (version %s expected).", stage, self.schema, expected)
        elif expected is not None:
            self._versions[stage] = row[0]

    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]:
        """See :meth:`Store.read_state`."""
        if not self.db.ready:
            return None, []
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
        if not self.db.ready:  # no tables: no stage (and nothing created by reading)
            return Loaded(None, DoneSet(), 0, 0, requests=self.request_reader(stage))
        with self.db.reading() as conn:
            row = conn.execute(self.db.sql(
                "SELECT state -> %s FROM {s}.stages WHERE stage = %s"), [JOURNAL_END, stage]
                ).fetchone()
            exists, end = row is not None, _journal_end(row[0] if row is not None else None)
            snapshots = conn.execute(self.db.sql(
                "SELECT gen, data FROM {s}.snapshots WHERE stage = %s ORDER BY gen DESC"),
                [stage]).fetchall()
            first = conn.execute(self.db.sql(
                "SELECT min(gen) FROM {s}.journal WHERE stage = %s"), [stage]).fetchone()[0]
            base, header, done, blob, problems = 0, None, DoneSet(), b"", []
            for gen, data in snapshots:
                try:
                    _check_generation(gen)
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
            set_aside = -1
            if end is not None and end[0] >= base:
                set_aside = conn.execute(self.db.sql(
                    "SELECT coalesce(max(seq), -1) FROM {s}.corrupt WHERE stage = %s AND "
                    "gen = %s"), [stage, end[0]]).fetchone()[0]
        loaded = Loaded(header, done, base, len(blob), exists=exists or bool(snapshots or rows),
                        problems=problems, generation=base, requests=self.request_reader(stage))
        _replay_rows(rows, loaded)
        _check_journal_start(loaded, stage, self.schema)
        if end is not None and end[0] >= base and not problems:
            present = max(set_aside + 1, sum(1 for gen, *_ in rows if gen == end[0]))
            _check_journal_end(f"{self.schema}.journal", stage, end, present)
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
        writer = PostgresJournalWriter(self, lock, stage, gen, seq, pos, self.buffer_bytes,
                                       shared=self._tracked.get(stage))
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
        """See :meth:`Store.retain`: the newest ``keep`` snapshots up to the writer's segment
        (a row of a later one, copied in or written over, is not one it wrote), the journal
        from the oldest of them on, and the request records of older segments they need;
        one transaction (skipped while the server cannot be reached, or no writer)."""
        lock, writer = self._locks.get(stage), self._writers.get(stage)
        if writer is None:
            return
        try:
            with lock.transaction() if lock is not None else self.db.transaction() as conn:
                rows = conn.execute(self.db.sql("SELECT gen, places FROM {s}.snapshots "
                                                "WHERE stage = %s AND gen <= %s ORDER BY gen DESC"),
                                    [stage, writer.gen]).fetchall()
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
        if stage in self._versions:  # held, written on (start(reset=True)): the row comes back at 0
            self._versions[stage] = 0
        if not self.db.ready:
            return
        self.db.write([(f"DELETE FROM {{s}}.{table} WHERE stage = %s", [stage]) for table in tables],
                      self._locks.get(stage))

    def segments(self, stage: str) -> list[int]:
        """The generations of the journal segments of ``stage`` with groups or request
        records in the tables, oldest first."""
        if not self.db.ready:
            return []
        return [gen for (gen,) in self.db.query(
            "SELECT gen FROM {s}.journal WHERE stage = %s UNION "
            "SELECT gen FROM {s}.requests WHERE stage = %s ORDER BY gen", [stage, stage])]

    def disk_usage(self, stage: str) -> dict[str, int]:
        """See :meth:`Store.disk_usage`: the bytes the stage's values take in the tables
        (``pg_column_size``: after the server's compression, without row overhead)."""
        if not self.db.ready:
            return {"journal_bytes": 0, "snapshot_bytes": 0, "state_bytes": 0}
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


def expire_stages(db: PostgresDatabase, ttls: dict[str, int]) -> list[str]:
    """Remove the stages whose last state write is older than their status's TTL
    (``ttls``: seconds by ``active``, ``completed``, ``failed``; a missing key never
    expires) and whose lock no session holds (the statement takes each one's lock for
    its transaction), in one statement; returns their names
    (logged). Workers' sub-stages of shared stages are left to ``reset`` of the shared
    stage. A server error is logged and nothing removed."""
    if not db.ready:
        return []
    ttl = {key: ttls.get(key) for key in ("active", "completed", "failed")}
    tables = ("journal", "requests", "snapshots", "corrupt")
    deletes = ", ".join(f"d_{t} AS (DELETE FROM {{s}}.{t} WHERE stage IN "
                        f"(SELECT stage FROM expired))" for t in tables)
    # A stage is expired only if this transaction takes its advisory lock (released at
    # commit): nobody holds it, even a process that took it and has not yet recorded
    # itself in ``owners``, and nobody takes and loads it while its rows go.
    query = (
        "WITH aged AS MATERIALIZED (SELECT st.stage FROM {s}.stages st "
        "  WHERE st.updated_at < now() - make_interval(secs => CASE st.state ->> 'status' "
        "      WHEN 'completed' THEN %(completed)s::float8 WHEN 'failed' THEN %(failed)s::float8 "
        "      ELSE %(active)s::float8 END) "
        "    AND position('.w.' in st.stage) = 0), "
        "expired AS MATERIALIZED (SELECT stage FROM aged "
        "  WHERE pg_try_advisory_xact_lock(hashtextextended(%(schema)s || ':' || stage, 0))), "
        f"{deletes} "
        "DELETE FROM {s}.stages WHERE stage IN (SELECT stage FROM expired) RETURNING stage")
    try:
        removed = [name for (name,) in db.query(query, {**ttl, "schema": db.schema})]
    except Exception as exc:
        logger.warning("PostgreSQL store: expired stages not removed (%s).", one_line(exc))
        return []
    if removed:
        logger.info("PostgreSQL store: removed %d expired stage(s) (CHECKPOINT_POSTGRES_TTL): "
                    "%s.", len(removed), ", ".join(sorted(removed)))
    return removed


def _check_generation(gen: int) -> None:
    """Raise ValueError unless ``gen`` (a row's segment number) is one this package writes:
    0 to :data:`MAX_GENERATION` (a larger one has no next segment, nor refs for its records)."""
    if not 0 <= gen <= MAX_GENERATION:
        raise ValueError(f"segment number {gen} is outside 0 to {MAX_GENERATION}: not written "
                         f"by this package")


def _replay_rows(rows: list[Any], loaded: Loaded) -> None:
    """Decode the journal ``rows`` (gen, seq, payload) into ``loaded``'s payloads, up to the
    first that does not decode, is out of order or of a segment number this package does
    not write (``problems``, ``dropped_bytes``); ``generation`` and ``good_bytes`` are then
    the last good segment and its number of good groups."""
    expected_gen, good = None, 0
    for index, (gen, seq, payload) in enumerate(rows):
        try:
            _check_generation(gen)  # before it becomes the segment to append to
            if gen != expected_gen:
                expected_gen, good = gen, 0
            if seq != good:
                raise ValueError(f"record {good} is missing")
            loaded.payloads.append(decode_group(payload))
        except (ValueError, KeyError, TypeError) as exc:
            loaded.problems.append(f"unreadable journal record {seq} of segment {gen} ({exc}); "
                                   f"later records ignored")
            loaded.dropped_bytes = sum(len(r[2]) for r in rows[index:])
            break
        good += 1
    if expected_gen is not None:
        loaded.generation, loaded.good_bytes = expected_gen, good


def _check_journal_start(loaded: Loaded, stage: str, schema: str) -> None:
    """Raise CorruptCheckpointError if ``loaded``, without a snapshot, does not begin
    with the stage's creation: the snapshots covering what came before it (the journal rows
    retention deleted) were deleted, and the rest would be taken for the whole stage."""
    if loaded.snapshot is None and loaded.payloads and INIT not in loaded.payloads[0].fields:
        raise CorruptCheckpointError(
            f"The journal of stage {stage!r} in {schema}.journal does not begin with the "
            f"stage's creation, and no snapshot in {schema}.snapshots holds what came before "
            f"it: those rows were deleted. The units they held are not known, so the stage is "
            f"not resumed (it would redo them and write their outputs again). Nothing was "
            f"changed; put the rows back (from a backup) to resume, or reset the stage to "
            f"start it over (scrapy-checkpoint --backend URL reset {stage}).")
