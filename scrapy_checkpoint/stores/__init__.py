"""Where checkpoints live. The checkpoint core talks to a store only through the
:class:`~scrapy_checkpoint.stores.base.Store` protocol; ``open_store`` picks one."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, redact
from .base import JournalWriter, Loaded, Lock, Store, check_stage_name
from .file import FileStore, StageLock
from .memory import MemoryStore

#: The scheme of a memory store's location (``memory://`` or ``memory://NAME``).
MEMORY = "memory://"
#: What a backend other than ``"file"`` starts with: a Redis URL or a memory store.
BACKEND_SCHEMES = ("redis://", "rediss://", "unix://", MEMORY)


def open_store(location: str | Any) -> Store:
    """A store for ``location``: a ``redis://``, ``rediss://`` or ``unix://`` URL, a
    ``memory://`` or ``memory://NAME`` store (:class:`~.memory.MemoryStore`: nothing kept
    across processes), or a directory. Raises :class:`~scrapy_checkpoint.errors.ConfigError`
    for another URL."""
    text = str(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(text)
    if text.startswith(MEMORY):
        return MemoryStore(text[len(MEMORY):])
    if "://" in text or text in ("redis", "rediss", "memory"):
        raise ConfigError(f"Unknown backend {redact(repr(text))}: use a directory, 'file', "
                          f"memory:// or a Redis URL such as redis://127.0.0.1:6379/0.")
    return FileStore(location)


def open_backend(backend: str | None, checkpoint_dir: str | Any) -> Store:
    """The store the ``backend`` and ``checkpoint_dir`` options of a checkpoint name.

    ``backend`` None or ``"file"``: a :class:`FileStore` in ``checkpoint_dir``; else
    ``backend`` must be ``memory://`` or ``memory://NAME`` (a :class:`MemoryStore`, see
    :func:`open_store`) or a Redis URL (``redis://127.0.0.1:6379/0``). Raises
    :class:`~scrapy_checkpoint.errors.ConfigError` for anything else, and whatever
    opening the store raises (:class:`~scrapy_checkpoint.errors.CheckpointError` when
    Redis is unreachable).
    """
    if backend is None or backend == "file":
        return open_store(checkpoint_dir)
    if backend in ("redis", "rediss") or "://" not in backend:
        raise ConfigError(f"Unknown backend {redact(repr(backend))}: use 'file', memory:// or a Redis "
                          f"URL such as redis://127.0.0.1:6379/0.")
    return open_store(backend)


__all__ = ["BACKEND_SCHEMES", "MEMORY", "FileStore", "JournalWriter", "Loaded", "Lock", "MemoryStore",
           "StageLock", "Store", "check_stage_name", "open_backend", "open_store"]
