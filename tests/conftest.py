from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = Path(__file__).resolve().parent / "scripts"


@pytest.fixture
def checkpoint_dir(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


def python_env() -> dict[str, str]:
    """Environment for subprocesses: this interpreter's package, unbuffered output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


PYTHON = sys.executable


class StageHolder:
    """A real second process that owns a stage until closed."""

    def __init__(self, directory: Path, stage: str) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [PYTHON, str(SCRIPTS / "hold_stage.py"), str(directory), stage],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=python_env(),
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == b"ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=600)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def hold_stage():  # type: ignore[no-untyped-def]
    holders: list[StageHolder] = []

    def start(directory: Path, stage: str) -> StageHolder:
        holder = StageHolder(directory, stage)
        holders.append(holder)
        return holder

    yield start
    for holder in holders:
        if holder.proc.poll() is None:
            holder.close()


def unavailable(reason: str) -> NoReturn:
    """Skip the test for a missing server or tool, saying ``reason``; under CI=true that is
    a failure (a CI run must not pass by skipping)."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


def require_redis() -> None:
    """Skip when no Redis answers, with the reason; under CI=true that is a failure."""
    import redis

    # A guard, not a speed: a server that is not there refuses at once.
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=60)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        unavailable(f"no Redis at {REDIS_URL} ({exc}); start redis-server or set REDIS_URL "
                    f"to run the Redis store tests")
    finally:
        client.close()


def redis_location(prefix: str) -> str:
    sep = "&" if "?" in REDIS_URL else "?"
    return f"{REDIS_URL}{sep}prefix={prefix}"


def drop_redis_prefix(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture
def redis_backend():  # type: ignore[no-untyped-def]
    """A Redis URL with a fresh key prefix, its keys deleted after the test."""
    yield from _store_location("redis")


#: The stores every store-level test runs on: a new store adds its name here (and a branch
#: in :func:`_store_location`), and the same tests prove it.
STORES = ["file", "redis", "postgresql", "memory"]
#: The stores whose stages outlive a process: all but the memory store, which keeps nothing
#: across processes (a real process killed, or holding the stage while this one looks).
PERSISTENT_STORES = [kind for kind in STORES if kind != "memory"]


def _store_location(kind: str, tmp_path: Path | None = None):  # type: ignore[no-untyped-def]
    """Where a test's checkpoints live on store ``kind``, emptied after the test."""
    name = f"sctest-{uuid.uuid4().hex[:12]}"
    if kind == "file":
        assert tmp_path is not None
        yield str(tmp_path / "checkpoints")
    elif kind == "redis":
        require_redis()
        yield redis_location(name)
        drop_redis_prefix(name)
    elif kind == "postgresql":
        require_postgres()
        schema = name.replace("-", "_")
        yield postgres_location(schema)
        drop_postgres_schema(schema)
    else:
        from scrapy_checkpoint.stores.memory import forget_memory_store

        yield f"memory://{name}"  # named: every open_store() of the test sees the same stages
        forget_memory_store(name)


@pytest.fixture(params=STORES)
def store_location(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Where a test's checkpoints live, once per store in :data:`STORES`: a directory, a
    Redis URL with a fresh prefix, a PostgreSQL URL with a fresh schema, or a named memory
    store (``memory://NAME``).

    The tests that take it are the store conformance suite: the same behaviour, proven
    for every store through the Store protocol, the checkpoint, the tracker or the
    manager."""
    yield from _store_location(request.param, tmp_path)


#: The stores that keep shared stages (CHECKPOINT_SHARED): the shared-stage tests run on each.
SHARED_STORES = ["redis", "postgresql"]


@pytest.fixture(params=SHARED_STORES)
def shared_location(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """:func:`store_location` for the shared-stage tests: every store of
    :data:`SHARED_STORES`."""
    yield from _store_location(request.param)


@pytest.fixture(params=PERSISTENT_STORES)
def persistent_location(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """:func:`store_location` for the tests whose stage must outlive a process or be seen
    from another one (kill -9, a stage held by a second process): every store of
    :data:`PERSISTENT_STORES` (not the memory store: those tests do not apply to it)."""
    yield from _store_location(request.param, tmp_path)


#: The PostgreSQL server of the SQL tests (role postgres, no password): each test gets a
#: database of its own on it.
POSTGRES_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def require_postgres() -> None:
    """Skip when no PostgreSQL answers, with the reason; under CI=true that is a failure."""
    import psycopg

    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=60).close()  # (a guard: none there refuses at once)
    except psycopg.Error as exc:
        unavailable(f"no PostgreSQL at {POSTGRES_URL} ({str(exc).strip().splitlines()[0]}); "
                    f"start one (pg_ctlcluster 15 main start) or set POSTGRES_URL to run the "
                    f"PostgreSQL tests")


def postgres_location(schema: str) -> str:
    """The PostgreSQL store URL of the test server with its tables in ``schema``."""
    sep = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{sep}schema={schema}"


def drop_postgres_schema(schema: str) -> None:
    """Drop ``schema`` and every table and view in it."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def postgresql_backend():  # type: ignore[no-untyped-def]
    """A PostgreSQL store URL with a fresh schema, dropped after the test."""
    yield from _store_location("postgresql")


@pytest.fixture
def postgres_database():  # type: ignore[no-untyped-def]
    """The SQLAlchemy URL of a new PostgreSQL database, dropped after the test."""
    require_postgres()
    import psycopg
    from psycopg import sql

    name = f"sctest_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    server = POSTGRES_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    yield f"{server}/{name}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))
