"""SQLRows: the table :class:`~.sql.SQLPipeline` writes, through SQLAlchemy Core 2.

One row per item, keyed by ``(stage, item_id)``; the item's fields in a JSON column
(``JSONB`` on PostgreSQL). Rows are inserted with the dialect's ``INSERT ... ON CONFLICT
DO NOTHING`` (SQLite and PostgreSQL), so a row written before a crash and written again
when its request is redone is left as it was: the table holds each item once.

SQLAlchemy is imported by this module only, when a crawl uses the pipeline (``pip
install 'scrapy-checkpoint[sql]'``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ..errors import ConfigError, redact

#: The dialects whose ``INSERT ... ON CONFLICT DO NOTHING`` the table uses.
INSERTS: dict[str, Callable[[sa.Table], Any]] = {
    "sqlite": lambda table: sqlite.insert(table).on_conflict_do_nothing(),
    "postgresql": lambda table: postgresql.insert(table).on_conflict_do_nothing(),
}


def reason(exc: BaseException) -> str:
    """The first line of what the driver said (SQLAlchemy's own wrapping and the SQL left
    out), any password in it shown as ``***``."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return redact(text[0] if text else type(inner).__name__)


class SQLRows:
    """A table of items in a database, open for writing.

    Build it with :meth:`connect`. :meth:`write` inserts rows in one transaction.
    """

    def __init__(self, engine: sa.Engine, table: sa.Table, location: str) -> None:
        self.engine = engine
        self.table = table
        #: The database URL with its password shown as ``***``.
        self.location = location
        self._insert = INSERTS[engine.dialect.name](table)

    @classmethod
    def connect(cls, url: str, table: str, json_serializer: Callable[[Any], str]) -> SQLRows:
        """Open the database at ``url`` (``sqlite:///path``, ``postgresql+psycopg://user@host/db``;
        a plain ``postgresql://`` uses psycopg 3), create ``table`` if it does not exist, and
        check it can be written. ``json_serializer`` turns an item's fields into JSON text.
        Raises ConfigError, with what to do and no password, for a URL it cannot use, a
        dialect other than SQLite or PostgreSQL, a missing driver, or a database it cannot
        reach or write."""
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise ConfigError(f"CHECKPOINT_SQL_URL={redact(url)!r} is not a database URL: use "
                              f"sqlite:///path/items.db or postgresql+psycopg://user@host/db.") \
                from None
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        location = parsed.render_as_string(hide_password=True)
        if parsed.get_backend_name() not in INSERTS:
            raise ConfigError(f"SQLPipeline writes to SQLite and PostgreSQL only, not "
                              f"{parsed.get_backend_name()} ({location}). Set CHECKPOINT_SQL_URL "
                              f"to a sqlite:/// or postgresql+psycopg:// URL.")
        metadata = sa.MetaData()
        rows = sa.Table(
            table, metadata,
            sa.Column("stage", sa.String(128), primary_key=True),
            sa.Column("item_id", sa.String(64), primary_key=True),
            sa.Column("data", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
                      nullable=False),
        )
        if parsed.get_backend_name() == "postgresql":
            encode = json_serializer

            def json_serializer(value: Any) -> str:  # JSONB refuses NUL: U+FFFD in its place
                return encode(value).replace("\\u0000", "\\ufffd")
        try:
            engine = sa.create_engine(parsed, json_serializer=json_serializer,
                                      pool_pre_ping=True)
        except ImportError as exc:
            raise ConfigError(f"SQLPipeline cannot load the database driver for {location} "
                              f"({exc}). Install it: pip install 'scrapy-checkpoint[sql]' "
                              f"(psycopg 3 for PostgreSQL).") from None
        try:
            with engine.begin() as conn:
                metadata.create_all(conn, checkfirst=True)
        except sa.exc.SQLAlchemyError as exc:
            engine.dispose()
            raise ConfigError(f"SQLPipeline cannot open table {table!r} in {location}: "
                              f"{reason(exc)}. Check that the database runs and accepts this "
                              f"user, and that the table, if it exists, has the columns stage, "
                              f"item_id and data; then run the same command again.") from None
        return cls(engine, rows, location)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Insert ``rows`` (``{"stage", "item_id", "data"}`` each) in one transaction; a row
        whose key is there already is left as it is. Raises SQLAlchemy's errors."""
        with self.engine.begin() as conn:
            conn.execute(self._insert, rows)

    def close(self) -> None:
        """Close the database connections."""
        self.engine.dispose()


__all__ = ["INSERTS", "SQLRows", "reason"]
