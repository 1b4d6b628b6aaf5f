"""Where checkpoints live. The checkpoint core talks to a store only through the
:class:`~scrapy_checkpoint.stores.base.Store` protocol; ``open_store`` picks one."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ..errors import ConfigError, redact
from .base import JournalWriter, Loaded, Lock, Store, check_stage_name
from .file import FileStore, StageLock
from .memory import MemoryStore

#: The scheme of a memory store's location (``memory://`` or ``memory://NAME``).
MEMORY = "memory://"
#: The schemes of a PostgreSQL store's URL.
POSTGRES = ("postgresql://", "postgres://")
#: What a backend other than ``"file"`` starts with: a Redis or PostgreSQL URL, or a memory
#: store.
BACKEND_SCHEMES = ("redis://", "rediss://", "unix://", *POSTGRES, MEMORY)
#: What the messages about a bad backend say it may be.
_ACCEPTED = ("'file', memory://, a Redis URL such as redis://127.0.0.1:6379/0 or a PostgreSQL "
             "URL such as postgresql://user@127.0.0.1:5432/db")


def open_store(location: str | Any) -> Store:
    """A store for ``location``: a ``redis://``, ``rediss://`` or ``unix://`` URL, a
    ``postgresql://`` or ``postgres://`` URL (:class:`~.postgres.PostgresStore`), a
    ``memory://`` or ``memory://NAME`` store (:class:`~.memory.MemoryStore`: nothing kept
    across processes), or a directory. Raises :class:`~scrapy_checkpoint.errors.ConfigError`
    for another URL."""
    text = str(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(text)
    if text.startswith(POSTGRES):
        from .postgres import PostgresStore

        return PostgresStore(text)
    if text.startswith(MEMORY):
        return MemoryStore(text[len(MEMORY):])
    if "://" in text or text in ("redis", "rediss", "memory", "postgresql", "postgres"):
        raise ConfigError(f"Unknown backend {redact(repr(text))}: use a directory, {_ACCEPTED}.")
    return FileStore(location)


def open_backend(backend: str | None, checkpoint_dir: str | Any) -> Store:
    """The store the ``backend`` and ``checkpoint_dir`` options of a checkpoint name.

    ``backend`` None or ``"file"``: a :class:`FileStore` in ``checkpoint_dir``; else
    ``backend`` must be ``memory://`` or ``memory://NAME`` (a :class:`MemoryStore`, see
    :func:`open_store`), a Redis URL (``redis://127.0.0.1:6379/0``) or a PostgreSQL URL
    (``postgresql://user@127.0.0.1:5432/db``). Raises
    :class:`~scrapy_checkpoint.errors.ConfigError` for anything else, and whatever
    opening the store raises (:class:`~scrapy_checkpoint.errors.CheckpointError` when
    the server is unreachable).
    """
    if backend is None or backend == "file":
        return open_store(checkpoint_dir)
    if backend in ("redis", "rediss") or "://" not in backend:
        raise ConfigError(f"Unknown backend {redact(repr(backend))}: use {_ACCEPTED}.")
    return open_store(backend)


def cli_command(store: Store, args: str) -> str | None:
    """``scrapy-checkpoint [--dir DIR | --backend URL] ARGS``: a command that reaches ``store``
    when run from the current directory (no option where the CLI's defaults, ``$CHECKPOINT_DIR``
    or ``./checkpoints``, reach it); None for a memory store, which no other process sees."""
    location = store.location
    if location.startswith(MEMORY):
        return None
    if isinstance(store, FileStore):
        backend = os.environ.get("CHECKPOINT_BACKEND") or "file"
        default = Path(os.environ.get("CHECKPOINT_DIR") or "checkpoints")
        if backend == "file" and _same_directory(store.directory, default):
            return f"scrapy-checkpoint {args}"
        return f"scrapy-checkpoint --dir {shlex.quote(location)} {args}"
    prefix = getattr(store, "prefix", None)
    if location.startswith(("redis://", "rediss://", "unix://")) and prefix:
        from .redis import DEFAULT_PREFIX

        if prefix != DEFAULT_PREFIX:  # (the location leaves it out)
            location += ("&" if "?" in location else "?") + urlencode({"prefix": prefix})
    return f"scrapy-checkpoint --backend {shlex.quote(location)} {args}"


def _same_directory(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


__all__ = ["BACKEND_SCHEMES", "MEMORY", "POSTGRES", "FileStore", "JournalWriter", "Loaded", "Lock",
           "MemoryStore", "StageLock", "Store", "check_stage_name", "cli_command", "open_backend",
           "open_store"]
