"""Where checkpoints live. The checkpoint core talks to a store only through the
:class:`~scrapy_checkpoint.stores.base.Store` protocol; ``open_store`` picks one."""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError, redact
from .base import JournalWriter, Loaded, Lock, Store, check_stage_name
from .file import FileStore, StageLock


def open_store(location: str | Any) -> Store:
    """A store for ``location``: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a directory."""
    text = str(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(text)
    if "://" in text or text in ("redis", "rediss"):
        raise ConfigError(f"Unknown backend {redact(repr(text))}: use a directory, 'file', or a Redis URL "
                          f"such as redis://127.0.0.1:6379/0.")
    return FileStore(location)


def open_backend(backend: str | None, checkpoint_dir: str | Any) -> Store:
    """The store the ``backend`` and ``checkpoint_dir`` options of a checkpoint name.

    ``backend`` None or ``"file"``: a :class:`FileStore` in ``checkpoint_dir``; else
    ``backend`` must be a Redis URL (``redis://127.0.0.1:6379/0``). Raises
    :class:`~scrapy_checkpoint.errors.ConfigError` for anything else, and whatever
    opening the store raises (:class:`~scrapy_checkpoint.errors.CheckpointError` when
    Redis is unreachable).
    """
    if backend is None or backend == "file":
        return open_store(checkpoint_dir)
    if backend in ("redis", "rediss") or "://" not in backend:
        raise ConfigError(f"Unknown backend {redact(repr(backend))}: use 'file' or a Redis URL such as "
                          f"redis://127.0.0.1:6379/0.")
    return open_store(backend)


__all__ = ["FileStore", "JournalWriter", "Loaded", "Lock", "StageLock", "Store", "check_stage_name",
           "open_backend", "open_store"]
