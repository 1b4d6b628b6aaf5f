"""A stage's lock in PostgreSQL: a session-level advisory lock on a connection of its own,
which carries every write of its holder and is taken again after a cut connection when no
other process took the stage meanwhile."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ...errors import CheckpointError, CheckpointLockedError, CheckpointWriteError
from ...state import Owner, pid_alive
from .database import driver, logger, one_line, sentence, translated

if TYPE_CHECKING:
    from .store import PostgresStore

#: Server-side TCP keepalives of a lock's session: a holder whose machine vanished (no
#: FIN ever comes) loses the lock after about 30 + 3 * 10 seconds.
_KEEPALIVES = ("SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; "
               "SET tcp_keepalives_count = 3")
#: How long a lock waits for the session of a dead holder on this host to end.
_DEAD_HOLDER_WAIT = "10s"


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
        psycopg = driver()
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
                                  f"{sentence(exc)}") from None
        self.conn, self.version = conn, (row[0] if row is not None else 0)

    def _restore(self) -> None:
        """Take the lock again on a new connection after its session was lost (call with
        ``mutex`` held). Raises PostgresUnreachable while the server cannot be reached,
        CheckpointLockedError if another process holds the stage now, CheckpointWriteError
        if one held it meanwhile."""
        psycopg = driver()
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
            raise PostgresUnreachable(self._lost_message(one_line(exc))) from None
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

    def wait_for_retry(self) -> None:
        """Sleep until the next attempt to reach the server is due (at most
        :attr:`RETRY_SECONDS`; at once if none is pending)."""
        time.sleep(max(0.0, self._retry_at - time.monotonic()))

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
        return PostgresUnreachable(self._lost_message(one_line(exc)))

    def run(self, query: Any, params: Sequence[Any] | dict[str, Any] | None = None) -> Any:
        """Execute ``query`` on the lock's session (one statement, its own transaction) and
        return the cursor. Raises PostgresUnreachable if the session is gone and cannot be
        restored now, CheckpointLockedError or CheckpointWriteError if the stage was taken
        meanwhile, CheckpointError if the lock was released."""
        psycopg = driver()
        with self.mutex:
            conn = self._check()
            try:
                return conn.execute(query, params)
            except psycopg.OperationalError as exc:
                if conn.broken or conn.closed:
                    raise self._drop(exc) from None
                raise
            except psycopg.Error as exc:
                db = self._store.db
                better = translated(exc, db.location, db.schema)
                if better is None:
                    raise
                raise better from None

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
                               "its session.", self._stage, one_line(exc))
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
        except driver().OperationalError as exc:
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
        lock, operational = self._lock, driver().OperationalError
        try:
            try:
                self._tx.__exit__(exc_type, exc, tb)
            except operational as error:
                if self._broken():
                    raise lock._drop(error) from None
                raise
            if isinstance(exc, operational) and self._broken():
                raise lock._drop(exc) from None
            db = lock._store.db
            better = None if exc is None else translated(exc, db.location, db.schema)
            if better is not None:
                raise better from None
        finally:
            lock.mutex.release()


