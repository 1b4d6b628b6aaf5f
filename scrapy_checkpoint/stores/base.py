"""What the checkpoint core needs from a store. ``FileStore`` and ``RedisStore`` provide it;
the core and the Scrapy pieces never know which one they use."""

from __future__ import annotations

from typing import Any, Protocol

from ..state import CheckpointState, Owner
from .file import Loaded


class JournalWriter(Protocol):
    """Appends group payloads; each append is whole or absent after any crash."""

    size: int

    def append(self, payload: bytes) -> None: ...
    def flush(self) -> None: ...
    def sync(self) -> None:
        """Make what was appended durable (runs on the background I/O thread)."""
    def fsync(self) -> None:
        """Flush and make durable now (the caller's thread)."""
    def close(self) -> None: ...


class Lock(Protocol):
    def release(self, *, unlink: bool = False) -> None: ...


class Store(Protocol):
    #: Where the stages live, for messages (a directory or a Redis URL).
    location: str

    def stages(self) -> list[str]: ...
    def lock(self, stage: str, owner: Owner) -> Lock: ...
    def live_owner(self, stage: str) -> Owner | None: ...
    def load(self, stage: str) -> Loaded: ...
    def set_aside(self, stage: str, loaded: Loaded) -> None: ...
    def open_segment(self, stage: str, gen: int, *, truncate_at: int | None,
                     buffered: bool) -> JournalWriter: ...
    def write_snapshot(self, stage: str, gen: int, blob: bytes) -> None: ...
    def retain(self, stage: str, keep: int) -> None: ...
    def write_state(self, stage: str, data: bytes) -> None: ...
    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]: ...
    def remove(self, stage: str) -> None: ...
    def disk_usage(self, stage: str) -> dict[str, int]: ...


def open_store(location: str | Any) -> Store:
    """A store for ``location``: a ``redis://``, ``rediss://`` or ``unix://`` URL, or a directory."""
    text = str(location)
    if text.startswith(("redis://", "rediss://", "unix://")):
        from .redis import RedisStore

        return RedisStore(text)
    if "://" in text or text in ("redis", "rediss"):
        from ..errors import ConfigError

        raise ConfigError(f"Unknown backend {text!r}: use a directory, 'file', or a Redis URL "
                          f"such as redis://127.0.0.1:6379/0.")
    from .file import FileStore

    return FileStore(location)
