"""The PostgreSQL store: the same journal, snapshots and state as the file store, in
tables of one schema (default ``scrapy_checkpoint``; ``?schema=NAME`` in the URL).

Tables (``schema.sql``, created by the store on first use, see :data:`SCHEMA_VERSION`)::

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

Modules: ``database`` (URL, shared connection, schema), ``lock`` (the advisory lock and
its session), ``journal`` (the writer and the request reader), ``store``
(:class:`PostgresStore`, the :class:`~scrapy_checkpoint.stores.base.Store` protocol).
"""

from .database import DEFAULT_SCHEMA, SCHEMA_VERSION, SCHEMES, PostgresDatabase
from .journal import PostgresJournalWriter, PostgresRequestReader
from .lock import PostgresLock, PostgresUnreachable
from .store import PostgresStore

__all__ = ["DEFAULT_SCHEMA", "SCHEMA_VERSION", "SCHEMES", "PostgresDatabase", "PostgresJournalWriter",
           "PostgresLock", "PostgresRequestReader", "PostgresStore", "PostgresUnreachable"]
