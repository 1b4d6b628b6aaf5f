"""A PostgreSQL stage's journal writer (one statement per group, an outage buffer) and
its request reader (one indexed SELECT per record)."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError, CheckpointLostError, CheckpointWriteError
from ...journal.groups import HANDED, REQUEST_OVERHEAD, decode_group, decode_request, encode_request
from ...journal.pending import OFFSET_BITS
from .database import driver, logger, sentence
from .lock import PostgresLock, PostgresUnreachable

if TYPE_CHECKING:
    from .store import PostgresStore

#: The position part of a request record's ref (``gen << OFFSET_BITS | pos``).
POSITION_MASK = (1 << OFFSET_BITS) - 1


def signed(code: int) -> int:
    """A unit code (0 <= code < 2**64) as PostgreSQL's signed ``bigint``."""
    return code - (1 << 64) if code >= 1 << 63 else code


def unsigned(value: int) -> int:
    """The unit code a signed ``bigint`` of :func:`signed` stands for."""
    return value + (1 << 64) if value < 0 else value


def _columns(records: list[tuple[int, int, bytes]]) -> list[list[Any]]:
    """Request records as the three arrays a statement unnests: gens, positions, records."""
    return [[g for g, _, _ in records], [p for _, p, _ in records], [r for _, _, r in records]]


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

    ``shared``: the shared stage whose claims and queued payloads each group's statement
    keeps in step (:meth:`PostgresStore.track_shared`).
    """

    #: Seconds :meth:`fsync` (the end of a job) waits for an unreachable server.
    END_WAIT_SECONDS = 30
    #: Seconds between two log lines about groups waiting for the server.
    WARN_EVERY_SECONDS = 10

    def __init__(self, store: PostgresStore, lock: PostgresLock, stage: str, gen: int,
                 seq: int, pos: int, buffer_limit: int, shared: str | None = None) -> None:
        self._store, self.lock, self._stage = store, lock, stage
        self._shared = shared
        self._warned_at = float("-inf")
        self._gen, self._seq, self._pos = gen, seq, pos
        #: The journal's end in the table: (segment, groups of it inserted); the state row
        #: records it, so a load sees groups deleted from the end (see PostgresStore.load).
        self.sent = (gen, seq)
        #: Request records waiting for the next group: (gen, position, record).
        self._requests: list[tuple[int, int, bytes]] = []
        #: Groups not yet in the table: gen, seq, payload, the request records sent with it.
        self._pending: deque[tuple[int, int, bytes, list[tuple[int, int, bytes]]]] = deque()
        self._pending_bytes = 0
        self._buffer_limit = buffer_limit
        self.size = 0

    @property
    def gen(self) -> int:
        """The segment groups are appended to now."""
        return self._gen

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
        if self._pos >= POSITION_MASK:
            raise CheckpointError(f"Stage {self._stage!r}: over {POSITION_MASK} request records in "
                                  f"one journal segment; lower compact_min_bytes.")
        self._pos += 1
        record = encode_request(code, data)
        self._requests.append((self._gen, self._pos, record))
        self.size += len(record)
        return self._gen << OFFSET_BITS | self._pos

    def unwritten(self, ref: int) -> bytes | None:
        """The request record ``ref`` if it has not reached the server yet, else None."""
        gen, position = ref >> OFFSET_BITS, ref & POSITION_MASK
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
        sql = driver().sql
        insert = ("INSERT INTO {s}.requests (stage, gen, pos, record) SELECT %s, g, p, r "
                  "FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[]) AS t(g, p, r) "
                  "ON CONFLICT DO NOTHING")
        try:
            while self._pending:
                gen, seq, payload, requests = self._pending[0]
                ctes, params = [], []
                if requests:
                    ctes.append(insert)
                    params += [self._stage, *_columns(requests)]
                if self._shared is not None:
                    tracked, tracked_params = self._tracking(payload)
                    ctes += tracked
                    params += tracked_params
                query = "INSERT INTO {s}.journal (stage, gen, seq, payload) VALUES (%s, %s, %s, %s) " \
                        "ON CONFLICT DO NOTHING"
                if ctes:
                    query = "WITH " + ", ".join(f"c{i} AS ({cte})" for i, cte in enumerate(ctes)) \
                            + " " + query
                self.lock.run(sql.SQL(query).format(s=s), [*params, self._stage, gen, seq, payload])
                self._pending.popleft()
                self.sent = (gen, seq + 1)
                self._pending_bytes -= len(payload) + sum(len(r) for *_, r in requests)
            if self._requests:
                self.lock.run(sql.SQL(insert).format(s=s),
                              [self._stage, *_columns(self._requests)])
                self._requests = []
        except driver().errors.UndefinedTable:
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
            now = time.monotonic()
            if now - self._warned_at >= self.WARN_EVERY_SECONDS:  # not a line per group
                self._warned_at = now
                logger.warning("%s %d group(s) buffered until it is back.", exc, len(self._pending))
            return
        except driver().Error as exc:  # on a live session: read-only (a standby), rights, disk
            raise CheckpointWriteError(
                f"PostgreSQL at {self._store.location} refused the journal of stage "
                f"{self._stage!r}: {sentence(exc)} This run stops; fix the database (write "
                f"access, disk space) and run the same command again to resume from the last "
                f"group it recorded.") from None
        self._warned_at = float("-inf")
        self._store.state_caught_up(self._stage)

    def _tracking(self, payload: bytes) -> tuple[list[str], list[Any]]:
        """The statements (CTEs) keeping the shared stage in step with this group, and
        their parameters: its finished units claimed ``=``, its added units (unless it
        hands them off) out of ``shared_queued``."""
        from ...shared.base import DONE_MARK

        group = decode_group(payload)
        finished = [signed(code) for code in (*group.done, *group.failed)]
        handed = set(group.fields.get(HANDED, ()))
        added = [signed(code) for code in group.added_codes() if code not in handed]
        ctes, params = [], []
        if finished:
            ctes.append("INSERT INTO {s}.shared_claims AS c (stage, code, holder) "
                        "SELECT %s, unnest(%s::bigint[]), %s ON CONFLICT (stage, code) "
                        "DO UPDATE SET holder = EXCLUDED.holder")
            params += [self._shared, finished, DONE_MARK]
        if added:
            ctes.append("DELETE FROM {s}.shared_queued WHERE stage = %s AND code = ANY(%s::bigint[])")
            params += [self._shared, added]
        return ctes, params

    def sync(self) -> None:
        """A committed statement is durable by the server's own settings
        (``synchronous_commit``)."""

    def fsync(self) -> None:
        """:meth:`flush`, at the end of a job (the checkpoint's last commit): no later group
        will carry the groups still waiting, so while the server cannot be reached it is
        tried again, every :attr:`PostgresLock.RETRY_SECONDS`, for up to
        :attr:`END_WAIT_SECONDS` (a restarting server is back within it). What still waits
        then is logged by :meth:`close`. Raises as :meth:`flush`."""
        self.flush()
        if not self._pending or self.lock.released:
            return
        logger.warning("Stage %s: waiting up to %d s for PostgreSQL at %s to send the last %d "
                       "journal group(s).", self._stage, self.END_WAIT_SECONDS,
                       self._store.location, len(self._pending))
        deadline = time.monotonic() + self.END_WAIT_SECONDS
        while self._pending and not self.lock.released and time.monotonic() < deadline:
            self.lock.wait_for_retry()
            self.flush()

    def close(self) -> None:
        """:meth:`flush`; groups that still cannot be sent, or that may not be since the
        lock was lost, are logged (their units are redone by the next run)."""
        if not self.lock.released:
            self.flush()
        if self._pending:
            logger.error("Stage %s: %d journal group(s) could not reach PostgreSQL at %s, so the "
                         "stage there ends at its last group received, not as this run ended: "
                         "the work of those groups is redone (and their items written again, "
                         "once) by the next run. Run the same command again once PostgreSQL "
                         "is back.", self._stage, len(self._pending), self._store.location)


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
                [self._stage, ref >> OFFSET_BITS, ref & POSITION_MASK])
            if row is None:
                raise ValueError(f"request record {ref} of stage {self._stage!r} is missing from "
                                 f"{self._store.schema}.requests")
            raw = row[0]
        if len(raw) != REQUEST_OVERHEAD + length:
            raise ValueError(f"request record {ref} has the wrong length")
        return decode_request(raw, code)


