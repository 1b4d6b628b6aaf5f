"""What the checkpoint core needs from a store. ``FileStore`` and ``RedisStore`` provide it;
the core and the Scrapy pieces never know which one they use."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError
from ..journal.doneset import DoneSet
from ..journal.groups import Group
from ..state import CheckpointState, Owner

_STAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Endings a stage name may not have: the file store uses them for its own files.
_RESERVED = (".json", ".bak", ".lock", ".tmp", ".corrupt")


def is_stage_name(name: str) -> bool:
    """True if ``name`` is a valid stage name (see :func:`check_stage_name`)."""
    return isinstance(name, str) and bool(_STAGE_RE.match(name)) and not name.endswith(_RESERVED)


def check_stage_name(stage: str) -> str:
    """``stage`` if it is a valid stage name (safe as a file name and a Redis key part).

    Raises :class:`~scrapy_checkpoint.errors.ConfigError` naming the rule otherwise.
    """
    if not is_stage_name(stage):
        raise ConfigError(
            f"Invalid stage name {stage!r}: use 1-128 letters, digits, '_', '-' or '.', "
            f"starting with a letter or digit and not ending in {', '.join(_RESERVED)} "
            f"(e.g. 'stage1_discovery')."
        )
    return stage


@dataclass
class Loaded:
    """What is on disk for one stage, before replay is applied."""

    #: Header of the newest valid snapshot (None: replay from an empty stage).
    snapshot: dict[str, Any] | None
    done: DoneSet
    snapshot_generation: int
    snapshot_bytes: int
    #: Decoded groups of the journal after the snapshot, in order.
    payloads: list[Group] = field(default_factory=list)
    #: Segment to append to and the offset where its good records end.
    generation: int = 0
    good_bytes: int = 0
    dropped_bytes: int = 0
    #: Files of generations after the point where replay stopped (to move aside).
    unreachable: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    #: True when at least one file of the stage exists.
    exists: bool = False




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
