"""The server and the schema of a PostgreSQL store: the URL, the pool of connections, the
tables (``schema.sql``, created on first use) and the helpers every part uses."""

from __future__ import annotations

import atexit
import importlib
import logging
import re
import sys
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from importlib import resources
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ...errors import CheckpointError, ConfigError, CorruptCheckpointError, redact

if TYPE_CHECKING:
    from .lock import PostgresLock

logger = logging.getLogger("scrapy_checkpoint")

DEFAULT_SCHEMA = "scrapy_checkpoint"
#: The layout of the tables this version of the package reads and writes (``schema.sql``).
SCHEMA_VERSION = 2
#: What each layout version added (said before a schema is created or upgraded).
LAYOUT_CHANGES = {
    1: "tables schema_version, stages, owners, journal, requests, snapshots, corrupt; "
       "view stage_status",
    2: "tables shared_workers, shared_claims, shared_inbox, shared_queued; function "
       "worker_alive (shared stages)",
}
#: Connections a store's pool keeps open at least and at most: the reactor thread, a shared
#: stage's heartbeat thread and the status server's handlers each take one while they use it.
POOL_MIN_SIZE, POOL_MAX_SIZE = 1, 4
#: Seconds a caller waits for a connection of the pool (all in use, or being replaced)
#: before it makes one of its own for its call, which says why if the server is down.
POOL_WAIT_SECONDS = 0.5
#: A connection of the pool idle this long (s) is checked, one round trip, when taken: a
#: server restart meanwhile is found before the caller's statement. One used more recently
#: is not checked (a round trip saved on every query of a busy crawl); if it turns out
#: broken, :meth:`PostgresDatabase.query` runs again on another.
CHECK_IDLE_SECONDS = 2.0
#: When each pooled connection was last given back (connections are weakly referenced).
_LAST_USED: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()
#: URL schemes of a PostgreSQL store.
SCHEMES = ("postgresql://", "postgres://")
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,62}")


def schema_sql() -> str:
    """The text of ``schema.sql`` (package data): the DDL of layout :data:`SCHEMA_VERSION`,
    with ``{s}`` and ``{schema_text}`` placeholders for psycopg's ``sql.SQL.format``."""
    return resources.files(__package__).joinpath("schema.sql").read_text(encoding="utf-8")


def _check_if_idle(conn: Any) -> None:
    """The pool's check of a connection being taken: see :data:`CHECK_IDLE_SECONDS`.
    Raises what the driver raises for a broken connection (the pool replaces it)."""
    if time.monotonic() - _LAST_USED.get(conn, float("-inf")) >= CHECK_IDLE_SECONDS:
        pool_driver().ConnectionPool.check_connection(conn)


def _answers(conn: Any) -> bool:
    """True if ``conn`` answers a round trip (False: the server ended its session)."""
    if conn.broken or conn.closed:
        return False
    try:
        pool_driver().ConnectionPool.check_connection(conn)
    except driver().OperationalError:
        return False
    return True


def _needed(module: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - an install problem, said plainly
        raise ConfigError(f"The PostgreSQL backend needs {what}: "
                          f"pip install 'scrapy-checkpoint[postgres]'.") from None


def driver() -> Any:
    """The ``psycopg`` module (ConfigError, saying what to install, without it)."""
    return _needed("psycopg", "psycopg 3")


def pool_driver() -> Any:
    """The ``psycopg_pool`` module (ConfigError, saying what to install, without it)."""
    return _needed("psycopg_pool", "psycopg's pool")


#: The databases whose pool is open: closed at exit, while their threads still run.
_OPEN: weakref.WeakSet[PostgresDatabase] = weakref.WeakSet()


@atexit.register
def _close_open_pools() -> None:
    for db in list(_OPEN):
        db.close()


#: Passwords of the URLs opened in this process, and their pieces: the driver may echo them
#: (a password libpq cannot decode, or one with an unescaped '@' taken for a host name).
_SECRETS: set[str] = set()


def _note_secrets(netloc: str) -> None:
    """Remember the password of a URL's ``user:password@host`` part, as written, decoded,
    and split where libpq may split it ('@'), pieces of 3 characters or more."""
    if "@" not in netloc:
        return
    userinfo = netloc.rsplit("@", 1)[0]
    _, colon, password = userinfo.partition(":")
    if not colon or not password:
        return
    pieces = {password, unquote(password), *password.split("@"), *netloc.split("@")[1:-1]}
    _SECRETS.update(piece for piece in pieces if len(piece) >= 3)


def one_line(exc: BaseException) -> str:
    """The server's or driver's message on one line, passwords redacted, without a final
    full stop."""
    text = redact(" ".join(str(getattr(exc, "server_reason", None) or exc).split()))
    for secret in sorted(_SECRETS, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text.rstrip(".")


def sentence(exc: BaseException) -> str:
    """:func:`one_line` ending as a sentence."""
    text = one_line(exc)
    return text if text.endswith(("?", "!")) else text + "."


_TRANSLATED: dict[tuple[type, type], type[BaseException]] = {}


def _as_checkpoint_error(driver_class: type, ours: type) -> type[BaseException]:
    """``driver_class`` (a psycopg error) that is also ``ours``: every ``except`` of either
    still catches it."""
    key = (driver_class, ours)
    if key not in _TRANSLATED:
        _TRANSLATED[key] = cast("type[BaseException]",
                                type(driver_class.__name__, (ours, driver_class), {}))
    return _TRANSLATED[key]


def altered_message(location: str, schema: str, reason: str) -> str:
    """What to do about tables of the schema dropped or altered behind the package."""
    return (f"The checkpoint tables in schema {schema!r} of PostgreSQL at {location} are not "
            f"as scrapy-checkpoint made them ({reason}): a table, column or function of theirs "
            f"was dropped or altered by something else. Nothing was changed. Restore the schema "
            f"from a backup; or, to start every stage it holds over, drop it (DROP SCHEMA "
            f"\"{schema}\" CASCADE) and run the same command again.")


def translated(exc: BaseException, location: str, schema: str) -> BaseException | None:
    """A psycopg error that says the schema's tables are not usable as they are, as one
    paragraph saying what to do (still the psycopg error); None for any other error.

    - A table, column or function of the schema missing or of another type (dropped or
      altered behind the package): CorruptCheckpointError.
    - A privilege the role lacks on them (revoked, never granted): CheckpointError.
    """
    errors = driver().errors
    if isinstance(exc, CheckpointError):
        return None
    diag = getattr(exc, "diag", None)
    reason = redact(diag.message_primary) if diag is not None and diag.message_primary \
        else one_line(exc)  # without the statement psycopg adds
    if isinstance(exc, errors.InsufficientPrivilege):
        error = _as_checkpoint_error(type(exc), CheckpointError)(
            f"PostgreSQL at {location}: this role may not use the checkpoint tables in schema "
            f"{schema!r}: {reason}. Nothing recorded was changed. Have the schema's owner "
            f"grant this role USAGE on the schema, EXECUTE on its function and SELECT, INSERT, "
            f"UPDATE, DELETE on its tables (docs/postgresql.md), or use a role that may; then "
            f"run the same command again.")
    elif isinstance(exc, (errors.UndefinedTable, errors.UndefinedColumn, errors.UndefinedFunction,
                        errors.DatatypeMismatch, errors.UndefinedObject)):
        error = _as_checkpoint_error(type(exc), CorruptCheckpointError)(
            altered_message(location, schema, reason))
    else:
        return None
    error.server_reason = reason  # type: ignore[attr-defined]  # what one_line() says of it
    return error


#: The tables of each layout version (see schema.sql).
LAYOUT_TABLES = {1: ("schema_version", "stages", "owners", "journal", "requests", "snapshots",
                     "corrupt"),
                 2: ("shared_workers", "shared_claims", "shared_inbox", "shared_queued")}


class PostgresDatabase:
    """The server and schema of a :class:`PostgresStore`: its URL, its pool of connections
    (psycopg_pool ``ConnectionPool``, :data:`POOL_MIN_SIZE` to :data:`POOL_MAX_SIZE`
    autocommit connections, each checked when taken), its tables (created on first use).

    ``url``: ``postgresql://[user[:password]@]host[:port]/dbname`` (or ``postgres://``),
    with libpq's query parameters (``sslmode=...``) and optionally ``?schema=NAME`` (or
    ``?prefix=NAME``, the same) for the schema holding the tables; ``schema`` wins over
    the URL's. ``location`` is the URL without its password. Raises
    :class:`~scrapy_checkpoint.errors.CheckpointError` when the server cannot be reached
    or refuses the connection, ConfigError for a bad schema name or a schema made by a
    newer version of the package.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        psycopg = driver()
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        named = [v for k, v in query if k in ("schema", "prefix")]
        self.schema = schema or (named[-1] if named else DEFAULT_SCHEMA)
        if not _SCHEMA_RE.fullmatch(self.schema) or self.schema.startswith("pg_"):
            raise ConfigError(f"Invalid PostgreSQL schema name {self.schema!r}: use 1-63 letters, "
                              f"digits, '_' or '-', starting with a letter or '_' and not with "
                              f"'pg_' (PostgreSQL keeps that prefix for its own schemas).")
        rest = [(k, v) for k, v in query if k not in ("schema", "prefix")]
        _note_secrets(parts.netloc)
        # quote, not quote_plus: libpq decodes %20, not '+'.
        self._conninfo = urlunsplit(parts._replace(query=urlencode(rest, quote_via=quote)))
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
            netloc=f"{user}@{host}" if user else host, query=urlencode(shown, quote_via=quote))))
        self.schema_sql = psycopg.sql.Identifier(self.schema)
        self._pool: Any = None
        # A first connection of its own: an unreachable server is said at once, with why.
        self.connect().close()
        pool = pool_driver().ConnectionPool
        # No callback of this object: the pool keeps no reference to it.
        self._pool = pool(self._conninfo, kwargs={"autocommit": True, **self._defaults},
                          min_size=POOL_MIN_SIZE, max_size=POOL_MAX_SIZE, open=False,
                          check=_check_if_idle, timeout=POOL_WAIT_SECONDS,
                          num_workers=1, name="scrapy-checkpoint")
        self._pool.open()
        _OPEN.add(self)
        #: The layout version of the schema's tables (None: no tables), as last looked up.
        self.version: int | None = None
        #: This role was refused the upgrade of older tables (:meth:`ensure`).
        self._upgrade_refused = False
        try:
            self._check_layout()
        except BaseException:
            self.close()
            raise

    @property
    def ready(self) -> bool:
        """True when the schema's tables exist, of this layout or an older one that reads
        the same (looked up again while they do not: another process may create them).
        Reads of a database without them find no stage; only a writer creates or upgrades
        them (:meth:`ensure`)."""
        if self.version is None:
            self._check_layout()
        return self.version is not None

    @property
    def current(self) -> bool:
        """True when the tables are of this package's layout, :data:`SCHEMA_VERSION`."""
        if self.version != SCHEMA_VERSION:
            self._check_layout()
        return self.version == SCHEMA_VERSION

    def ensure(self, needed: int = SCHEMA_VERSION) -> None:
        """Create or upgrade the tables unless they are of this layout (a writer, before
        its first write): see :meth:`create_schema`. ``needed``: the oldest layout the
        caller can work with (1 for a plain stage; shared stages need 2). A role that may
        not create or upgrade them goes on with tables of layout ``needed`` or newer, with
        a warning (once) that ``scrapy-checkpoint migrate`` is due; raises ConfigError,
        saying so, when they are older than that or missing."""
        if self.current or (self._upgrade_refused and (self.version or 0) >= needed):
            self._check_tables()
            return
        try:
            self.create_schema()
        except driver().errors.InsufficientPrivilege as exc:
            advice = (f"have `scrapy-checkpoint migrate` run with a role that may create in "
                      f"schema {self.schema!r} (its owner), then grant this role "
                      f"USAGE on the schema, EXECUTE on its function and SELECT, INSERT, "
                      f"UPDATE, DELETE on its tables (docs/postgresql.md)")
            if (self.version or 0) < needed:
                raise ConfigError(f"PostgreSQL at {self.location}: cannot {self.plan()}: "
                                  f"{sentence(exc)} To use it, {advice}.") from None
            if not self._upgrade_refused:
                logger.warning("PostgreSQL store: the tables in schema %r are of layout version "
                               "%s and this role may not upgrade them (%s); plain stages work "
                               "on them, shared stages need layout %d: %s.", self.schema,
                               self.version, one_line(exc), SCHEMA_VERSION, advice)
            self._upgrade_refused = True

    def _check_tables(self) -> None:
        """Raise CorruptCheckpointError if a table of the schema's layout is missing (dropped
        behind the package: a writer would fail at its first statement on it, a shared
        stage's worker only once it claims a unit)."""
        names = [name for version, tables in LAYOUT_TABLES.items()
                 if version <= (self.version or 0) for name in tables]
        missing = [row[0] for row in self.query(
            "SELECT t FROM unnest(%s::text[]) AS t "
            "WHERE to_regclass(format('%%I.%%I', %s::text, t)) IS NULL", [names, self.schema])]
        if missing:
            raise CorruptCheckpointError(altered_message(
                self.location, self.schema, f"table {', '.join(missing)} missing"))

    def plan(self) -> str | None:
        """What :meth:`create_schema` would do here, as a sentence; None if nothing."""
        version = self.version if self.ready else None
        if version == SCHEMA_VERSION:
            return None
        if version is None:
            return (f"create schema {self.schema!r} in {self.location} with the checkpoint "
                    f"tables of layout version {SCHEMA_VERSION}: "
                    + "; ".join(LAYOUT_CHANGES[v] for v in range(1, SCHEMA_VERSION + 1)))
        return (f"upgrade the checkpoint tables in schema {self.schema!r} of {self.location} "
                f"from layout version {version} to {SCHEMA_VERSION}, adding "
                + "; ".join(LAYOUT_CHANGES[v] for v in range(version + 1, SCHEMA_VERSION + 1))
                + " (nothing already there is changed)")

    def _check_layout(self) -> None:
        version = self._layout_version()
        if version is not None and version > SCHEMA_VERSION:
            raise ConfigError(
                f"The tables in schema {self.schema!r} of {self.location} are of layout version "
                f"{version}, newer than this version of scrapy-checkpoint reads "
                f"({SCHEMA_VERSION}): upgrade scrapy-checkpoint.")
        self.version = version

    def _layout_version(self) -> int | None:
        """The layout version of the schema's tables (None: no tables)."""
        try:
            found = self.query_one("SELECT to_regclass(format('%%I.schema_version', %s::text))",
                                   [self.schema])
            if found is None or found[0] is None:
                return None
            return (self.query_one("SELECT max(version) FROM {s}.schema_version") or [None])[0]
        except driver().errors.InsufficientPrivilege as exc:  # the schema, not granted
            raise ConfigError(
                f"PostgreSQL at {self.location}: this role may not read the checkpoint tables "
                f"in schema {self.schema!r}: {sentence(exc)} Have the schema's owner grant "
                f"this role USAGE on the schema, EXECUTE on its function and SELECT, INSERT, "
                f"UPDATE, DELETE on its tables (docs/postgresql.md), or use a role that may."
            ) from None

    def connect(self) -> Any:
        """A new autocommit connection to the server (psycopg ``Connection``). Raises
        CheckpointError, with the server's reason, if it cannot be made."""
        psycopg = driver()
        try:
            return psycopg.connect(self._conninfo, autocommit=True, **self._defaults)
        except psycopg.Error as exc:
            raise CheckpointError(
                f"Cannot reach PostgreSQL at {self.location}: {sentence(exc)} Start PostgreSQL, "
                f"or fix the URL in CHECKPOINT_BACKEND (or --backend / backend=).") from None

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        """A connection for the with-block, no other thread using it: one of the pool (given
        back after; the pool replaces it if it broke), else, when none is free within
        :data:`POOL_WAIT_SECONDS` or the pool is closed, one of its own, closed after.
        Raises CheckpointError if the server cannot be reached."""
        errors = pool_driver()
        try:
            conn = self._pool.getconn()
        except (errors.PoolTimeout, errors.PoolClosed):
            conn = None
        try:
            if conn is None:
                with self.connect() as own:
                    yield own
                return
            try:
                yield conn
            finally:
                _LAST_USED[conn] = time.monotonic()
                self._pool.putconn(conn)
        except driver().Error as exc:
            better = translated(exc, self.location, self.schema)
            if better is None:
                raise
            raise better from None

    def query(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None
              ) -> list[tuple[Any, ...]]:
        """Rows of ``query`` (``{s}`` stands for the schema) on a connection of the pool;
        run again on another while the one used turns out to be a session the server ended
        (a restart since it was last checked; every connection of the pool may be). Raises
        CheckpointError if the server cannot be reached, psycopg's errors otherwise."""
        operational = driver().OperationalError
        statement = self.sql(query)
        for attempt in range(POOL_MAX_SIZE + 1):
            with self._connection() as conn:
                try:
                    return conn.execute(statement, params).fetchall()  # type: ignore[no-any-return]
                except operational:
                    if attempt == POOL_MAX_SIZE or _answers(conn):
                        raise  # the statement failed, not the session
        raise AssertionError("unreachable")  # pragma: no cover

    def query_one(self, query: str, params: Sequence[Any] | Mapping[str, Any] | None = None
                  ) -> tuple[Any, ...] | None:
        """The first row of ``query`` (``{s}``: the schema), or None."""
        rows = self.query(query, params)
        return rows[0] if rows else None

    def sql(self, query: str) -> Any:
        """``query`` as a psycopg ``sql.Composed`` with ``{s}`` replaced by the quoted
        schema name."""
        return driver().sql.SQL(query).format(s=self.schema_sql)

    def write(self, statements: Sequence[tuple[str, Sequence[Any]]],
              lock: PostgresLock | None = None) -> None:
        """Run ``statements`` (``{s}``: the schema) in one transaction: on ``lock``'s session
        if given, else on a connection of the pool."""
        if lock is not None:
            with lock.transaction() as conn:
                for query, params in statements:
                    conn.execute(self.sql(query), params)
            return
        with self.transaction() as conn:
            for query, params in statements:
                conn.execute(self.sql(query), params)

    def create_schema(self) -> None:
        """Create the schema and its tables unless they are there (serialised between
        processes by a transaction-level advisory lock). Raises ConfigError if the schema
        is of a newer layout than :data:`SCHEMA_VERSION`. An older layout is upgraded: the
        DDL only adds (``IF NOT EXISTS``), so a reader of the older layout goes on reading.
        What it does is logged first (:meth:`plan`); ``scrapy-checkpoint migrate`` says it
        and asks before doing it."""
        sql = driver().sql
        self._check_layout()
        plan = self.plan()
        if plan is None:
            return
        logger.info("PostgreSQL store: about to %s.", plan)
        with self.transaction() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                         [f"scrapy_checkpoint schema {self.schema}"])
            conn.execute(sql.SQL(schema_sql()).format(s=self.schema_sql,
                                              schema_text=sql.Literal(self.schema)))
        self.version = SCHEMA_VERSION

    def reading(self) -> Any:
        """A context manager: a connection (psycopg ``Connection``) no other thread uses, in
        a REPEATABLE READ, READ ONLY transaction for the with-block."""
        return self._transaction("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def transaction(self) -> Any:
        """A context manager: a connection no other thread uses, in a transaction for the
        with-block (committed at its end, rolled back if it raises)."""
        return self._transaction(None)

    @contextmanager
    def _transaction(self, first: str | None) -> Iterator[Any]:
        # A transaction is never run again: its connection is checked first, whatever
        # CHECK_IDLE_SECONDS says, and one whose session the server ended is given back (the
        # pool drops it) for another.
        for attempt in range(POOL_MAX_SIZE + 1):
            with self._connection() as conn:
                if attempt < POOL_MAX_SIZE and not _answers(conn):
                    continue
                with conn.transaction():
                    if first is not None:
                        conn.execute(first)
                    yield conn
                return

    def close(self) -> None:
        """Close the pool and its connections (held locks keep theirs until released). A
        query after this makes a connection of its own for itself. Closing again does
        nothing."""
        _OPEN.discard(self)
        if self._pool is not None:
            self._pool.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is None or pool.closed or sys.is_finalizing():
            return
        # Collected on one of the pool's own threads, which cannot wait for itself.
        with suppress(RuntimeError):
            pool.close()

    def lock_key(self, stage: str) -> str:
        """The text whose ``hashtextextended(text, 0)`` is ``stage``'s advisory lock key."""
        return f"{self.schema}:{stage}"
