"""A shared stage (``CHECKPOINT_SHARED``) on the PostgreSQL store: the stage's records are
rows of the ``shared_*`` tables (``stores/postgres/schema.sql``)::

    shared_workers (stage, worker) -> record (jsonb), token, lease_seconds, heartbeat_at
    shared_claims  (stage, code)   -> holder: a worker, "=" once done, "q" queued
    shared_inbox   (stage, worker, seq) -> code, payload: units given, not yet journaled
    shared_queued  (stage, code)   -> payload, for scrapy-redis's shared queue

Each change is one statement (one transaction), like one script call on Redis.

**Leases.** A worker writes its record every third of ``CHECKPOINT_LEASE_SECONDS``;
``heartbeat_at`` takes the server's clock, so the hosts' clocks do not matter. A worker
is alive while its last heartbeat is younger than its lease, it has not left, and its
sub-stage's lock is still recorded as its own (``worker_alive()`` in the schema): a
worker adopting it takes that lock first, so from then on its claims are free. A
crashed process's sub-stage lock, a session advisory lock, goes with its session; a
worker frozen past its lease still holds it, so the worker adopting it ends that
session first (:meth:`release_dead`), and the frozen process, when it wakes, finds its
stage taken and stops.

**Claims** are single-row upserts: ``INSERT ... ON CONFLICT (stage, code) DO UPDATE ...
WHERE`` the unit is free, the claimer's own or a dead worker's. The row lock taken by
the upsert serialises two workers claiming one unit, and the second sees the first's
claim. ``SELECT ... FOR UPDATE SKIP LOCKED`` suits a queue where any free row will do;
here each worker asks for the one unit it discovered, so it would only add a round trip.

A unit turns to "=" in the statement that appends the journal group recording it done
(:meth:`PostgresStore.track_shared`).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..stores.postgres.database import driver, one_line
from ..stores.postgres.journal import signed, unsigned
from .base import DONE_MARK, QUEUED_MARK, SharedStage, Worker, logger, sub_stage_name

if TYPE_CHECKING:
    from ..stores.postgres import PostgresStore

#: The advisory lock held by the session of a stage's lock (as in the store's queries).
_HOLDER = ("l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
           "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
           "AND l.classid = ((hashtextextended(%(key)s, 0) >> 32) & 4294967295)::oid "
           "AND l.objid = (hashtextextended(%(key)s, 0) & 4294967295)::oid")

#: A claim: free, the claimer's own, or a dead worker's (see the module docstring).
_CLAIM = ("INSERT INTO {s}.shared_claims AS c (stage, code, holder) VALUES (%(stage)s, %(code)s, %(me)s) "
          "ON CONFLICT (stage, code) DO UPDATE SET holder = EXCLUDED.holder "
          "WHERE c.holder <> %(done)s AND (c.holder = EXCLUDED.holder "
          "OR NOT {s}.worker_alive(c.stage, c.holder)) RETURNING 1")

#: scrapy-redis pairing: take a unit popped from the shared queue.
_TAKE = ("INSERT INTO {s}.shared_claims AS c (stage, code, holder) VALUES (%(stage)s, %(code)s, %(me)s) "
         "ON CONFLICT (stage, code) DO UPDATE SET holder = EXCLUDED.holder "
         "WHERE c.holder <> %(done)s AND (c.holder IN (%(queued)s, EXCLUDED.holder) "
         "OR NOT {s}.worker_alive(c.stage, c.holder)) RETURNING 1")

#: scrapy-redis pairing: queue a unit (claim "q", payload kept until it is journaled).
_QUEUE = ("WITH c AS (INSERT INTO {s}.shared_claims AS c (stage, code, holder) "
          "  VALUES (%(stage)s, %(code)s, %(queued)s) "
          "  ON CONFLICT (stage, code) DO UPDATE SET holder = EXCLUDED.holder "
          "  WHERE c.holder <> %(done)s AND ("
          "    (%(requeue)s AND c.holder IN (%(queued)s, %(me)s)) "
          "    OR (c.holder NOT IN (%(queued)s, %(me)s) AND NOT {s}.worker_alive(c.stage, c.holder))) "
          "  RETURNING 1), "
          "q AS (INSERT INTO {s}.shared_queued (stage, code, payload) "
          "  SELECT %(stage)s, %(code)s, %(payload)s FROM c "
          "  ON CONFLICT (stage, code) DO UPDATE SET payload = EXCLUDED.payload) "
          "SELECT count(*) FROM c")

#: Give units to an idle taker: claims move, payloads go to its inbox in order, and its
#: record says ``running`` (it has work now: no giver may take it for idle and leave).
_GIVE = ("WITH taker AS (SELECT worker FROM {s}.shared_workers "
         "  WHERE stage = %(stage)s AND worker = %(taker)s AND record ->> 'status' = 'idle' "
         "  FOR UPDATE), "
         "moved AS (UPDATE {s}.shared_claims c SET holder = %(taker)s "
         "  FROM taker, unnest(%(codes)s::bigint[], %(payloads)s::text[]) WITH ORDINALITY "
         "    AS u(code, payload, n) "
         "  WHERE c.stage = %(stage)s AND c.code = u.code AND c.holder = %(me)s "
         "  RETURNING c.code, u.payload, u.n), "
         "inbox AS (INSERT INTO {s}.shared_inbox (stage, worker, code, payload) "
         "  SELECT %(stage)s, %(taker)s, code, payload FROM moved ORDER BY n), "
         "running AS (UPDATE {s}.shared_workers SET record = jsonb_set(record, '{{status}}', "
         "  '\"running\"') WHERE stage = %(stage)s AND worker = %(taker)s "
         "  AND EXISTS (SELECT 1 FROM moved)) "
         "SELECT code FROM moved ORDER BY n")


class PostgresSharedStage(SharedStage):
    """A shared stage kept in PostgreSQL (see the module docstring). Methods raise
    :class:`~scrapy_checkpoint.errors.CheckpointError` when the server cannot be reached
    and psycopg's errors otherwise, unless they say otherwise."""

    server = "PostgreSQL"

    def __init__(self, store: PostgresStore, stage: str, worker: str | None = None) -> None:
        super().__init__(stage, worker, store.lease_seconds)
        self.store = store
        self.db = store.db
        self._joining: Any = None

    def _params(self, **extra: Any) -> dict[str, Any]:
        return {"stage": self.stage, "me": self.worker, "done": DONE_MARK,
                "queued": QUEUED_MARK, **extra}

    def _rows(self, query: str, **params: Any) -> list[tuple[Any, ...]]:
        if not self.db.current:
            self.db.ensure()  # tables of an older layout: a worker upgrades them (they only add)
        return self.db.query(query, self._params(**params))

    # -- reading --------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        """See :meth:`SharedStage.workers`."""
        if not self.db.ready or not self.db.current:
            return []  # no tables, or none of shared stages yet: no worker
        rows = self.db.query("SELECT worker, record::text, {s}.worker_alive(stage, worker) "
                             "FROM {s}.shared_workers WHERE stage = %(stage)s", self._params())
        workers = []
        for key, value, alive in rows:
            try:
                worker = Worker.model_validate_json(value)
            except ValidationError:
                logger.warning("Stage %s: unreadable worker record %r ignored", self.stage, key)
                continue
            worker.alive = self._alive(worker, bool(alive))
            workers.append(worker)
        return sorted(workers, key=lambda w: w.started_at)

    # -- this worker -------------------------------------------------------------------------

    def track_in_journal(self) -> None:
        """See :meth:`SharedStage.track_in_journal` (in the statement appending the group)."""
        self.store.track_shared(self.sub_stage, self.stage)

    def _register(self, token: str) -> None:
        self._rows("INSERT INTO {s}.shared_workers AS w (stage, worker, record, token, lease_seconds) "
                   "VALUES (%(stage)s, %(me)s, %(record)s::jsonb, %(token)s, %(lease)s) "
                   "ON CONFLICT (stage, worker) DO UPDATE SET token = EXCLUDED.token, "
                   "lease_seconds = EXCLUDED.lease_seconds RETURNING 1",
                   record=self._record(), token=token, lease=self.lease_seconds)

    def hold_joining(self, timeout: float = 60.0) -> None:
        """See :meth:`SharedStage.hold_joining`: a session advisory lock on a connection of
        its own (it goes with the session of a worker that dies holding it)."""
        psycopg = driver()
        self.db.ensure()
        conn = self.db.connect()
        try:
            conn.execute(f"SET lock_timeout = '{int(timeout * 1000)}ms'")
            conn.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))",
                         [f"{self.db.lock_key(self.stage)}:joining"])
        except psycopg.errors.LockNotAvailable:
            conn.close()  # a holder stuck for the whole timeout: go on, as on Redis
            return
        except psycopg.Error:
            conn.close()
            raise
        self._joining = conn

    def release_joining(self) -> None:
        """See :meth:`SharedStage.release_joining` (its session ends)."""
        conn, self._joining = self._joining, None
        if conn is not None:
            conn.close()

    def _write_record(self, record: str) -> bool:
        """See :meth:`SharedStage._write_record`. One transaction: the record's row is locked
        first, so a gift being made commits before the inbox is looked at."""
        data = json.loads(record)
        params = self._params(lease=self.lease_seconds)
        if not self.db.current:
            self.db.ensure()
        with self.db.transaction() as conn:
            row = conn.execute(self.db.sql(
                "SELECT record ->> 'status' FROM {s}.shared_workers "
                "WHERE stage = %(stage)s AND worker = %(me)s FOR UPDATE"), params).fetchone()
            if row is not None and row[0] == "adopted":
                return False
            if data.get("status") == "idle" and conn.execute(self.db.sql(
                    "SELECT 1 FROM {s}.shared_inbox WHERE stage = %(stage)s AND worker = %(me)s "
                    "LIMIT 1"), params).fetchone() is not None:
                data["status"] = "running"
            conn.execute(self.db.sql(
                "INSERT INTO {s}.shared_workers AS w (stage, worker, record, lease_seconds) "
                "VALUES (%(stage)s, %(me)s, %(record)s::jsonb, %(lease)s) "
                "ON CONFLICT (stage, worker) DO UPDATE SET record = EXCLUDED.record, "
                "lease_seconds = EXCLUDED.lease_seconds, heartbeat_at = now()"),
                {**params, "record": json.dumps(data)})
        return True

    # -- units -------------------------------------------------------------------------------

    def claim(self, code: int) -> bool:
        """See :meth:`SharedStage.claim`."""
        return bool(self._rows(_CLAIM, code=signed(code)))

    def queue(self, code: int, payload: Any, *, requeue: bool = False) -> bool:
        """See :meth:`SharedStage.queue`."""
        rows = self._rows(_QUEUE, code=signed(code), payload=json.dumps(payload), requeue=requeue)
        return bool(rows and rows[0][0])

    def take(self, code: int) -> bool:
        """See :meth:`SharedStage.take`."""
        return bool(self._rows(_TAKE, code=signed(code)))

    def lost_queued(self) -> list[Any] | None:
        """See :meth:`SharedStage.lost_queued`: one sweeper at a time, by a
        transaction-level advisory lock."""
        alive = {w.id for w in self.workers() if w.alive}
        params = self._params(key=f"{self.db.lock_key(self.stage)}:sweep")
        with self.db.transaction() as conn:
            if not conn.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%(key)s, 0))",
                                params).fetchone()[0]:
                return None
            rows = conn.execute(self.db.sql(
                "SELECT q.code, q.payload, c.holder FROM {s}.shared_queued q "
                "LEFT JOIN {s}.shared_claims c ON c.stage = q.stage AND c.code = q.code "
                "WHERE q.stage = %(stage)s"), params).fetchall()
            lost, finished = [], []
            for code, payload, holder in rows:
                if holder == DONE_MARK:
                    finished.append(code)
                elif holder not in alive:
                    lost.append(json.loads(payload))
            if finished:
                conn.execute(self.db.sql("DELETE FROM {s}.shared_queued WHERE stage = %(stage)s "
                                         "AND code = ANY(%(codes)s::bigint[])"),
                             {**params, "codes": finished})
        return lost

    def give(self, taker: str, units: list[tuple[int, Any]]) -> list[int]:
        """See :meth:`SharedStage.give` (one statement)."""
        codes = [signed(code) for code, _ in units]
        params = self._params(taker=taker, codes=codes,
                              payloads=[json.dumps(payload) for _, payload in units])
        try:
            with self.db.transaction() as conn:
                rows = conn.execute(self.db.sql(_GIVE), params).fetchall()
        except driver().OperationalError:
            # The reply may be lost after the commit: what moved is what the taker holds.
            rows = self.db.query("SELECT code FROM {s}.shared_claims WHERE stage = %(stage)s "
                                 "AND code = ANY(%(codes)s::bigint[]) AND holder = %(taker)s",
                                 params)
        return [unsigned(code) for (code,) in rows]

    def inbox(self, worker: str | None = None) -> list[tuple[int, Any]]:
        """See :meth:`SharedStage.inbox`."""
        if not self.db.ready or not self.db.current:
            return []
        rows = self.db.query("SELECT code, payload FROM {s}.shared_inbox "
                             "WHERE stage = %(stage)s AND worker = %(w)s ORDER BY seq",
                             self._params(w=worker or self.worker))
        return [(unsigned(code), json.loads(payload)) for code, payload in rows]

    def trim_inbox(self, count: int, worker: str | None = None) -> None:
        """See :meth:`SharedStage.trim_inbox`."""
        if count:
            self._rows("DELETE FROM {s}.shared_inbox WHERE stage = %(stage)s AND worker = %(w)s "
                       "AND seq IN (SELECT seq FROM {s}.shared_inbox WHERE stage = %(stage)s "
                       "AND worker = %(w)s ORDER BY seq LIMIT %(n)s) RETURNING 1",
                       w=worker or self.worker, n=count)

    # -- adoption and reset -----------------------------------------------------------------

    def release_dead(self, dead: Worker) -> None:
        """End the session that still holds ``dead``'s sub-stage lock once its lease ran out
        (a frozen process, or a machine gone without closing its connection), so this
        worker can adopt it. A server error is logged (the adoption is tried again later)."""
        key = self.db.lock_key(sub_stage_name(self.stage, dead.id))
        try:
            ended = self.db.query(
                f"SELECT pg_terminate_backend(l.pid, 5000) FROM pg_locks l WHERE {_HOLDER} "
                f"AND NOT {{s}}.worker_alive(%(stage)s, %(w)s)", self._params(key=key, w=dead.id))
        except Exception as exc:
            logger.warning("Stage %s: cannot end the session of worker %s (%s).", self.stage,
                           dead.id, one_line(exc))
            return
        if ended:
            logger.warning("Stage %s: worker %s (pid %d on %s) was silent past its lease; its "
                           "PostgreSQL session was ended so it can be adopted.", self.stage,
                           dead.id, dead.pid, dead.host)

    def _write_worker(self, worker: Worker) -> None:
        self._rows("UPDATE {s}.shared_workers SET record = %(record)s::jsonb "
                   "WHERE stage = %(stage)s AND worker = %(w)s RETURNING 1",
                   record=worker.model_dump_json(exclude={"alive"}), w=worker.id)

    def reset(self) -> list[str]:
        """See :meth:`SharedStage.reset` (one transaction). The sub-stages' ``owners`` rows
        go too, unlike a plain stage's (:meth:`PostgresStore.remove`): worker ids are never
        reused, so nothing will take those sub-stages again, and a reset runs only when no
        worker is alive (a frozen one that wakes finds its row gone and stops)."""
        if not self.db.ready:
            return []
        subs = [sub_stage_name(self.stage, w.id) for w in self.workers()]
        statements: list[tuple[str, list[Any]]] = [
            (f"DELETE FROM {{s}}.{table} WHERE stage = %s", [self.stage])
            for table in ("shared_claims", "shared_inbox", "shared_queued", "shared_workers")
            if self.db.current]
        statements += [(f"DELETE FROM {{s}}.{table} WHERE stage = ANY(%s)", [subs])
                       for table in ("journal", "requests", "snapshots", "corrupt", "stages",
                                     "owners")]
        self.db.write(statements)
        return subs


__all__ = ["PostgresSharedStage"]
