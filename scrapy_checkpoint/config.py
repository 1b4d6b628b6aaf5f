"""Checkpoint options, validated once into a typed object."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError

Durability = Literal["fsync", "flush", "none"]


class CheckpointConfig(BaseModel):
    """Every option of a checkpoint, with its default.

    >>> CheckpointConfig(durability="flush", save_every=100).save_every
    100
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    #: ``fsync``: groups reach the OS at once and the disk within ``sync_interval``
    #: (survives kill -9; power loss loses at most the last sync interval).
    #: ``flush``: groups reach the OS at once, the disk only at snapshots and close
    #: (survives kill -9). ``none``: groups are buffered in the process up to 1 MiB
    #: (kill -9 loses the buffer, whose units are redone on resume).
    durability: Durability = "fsync"
    #: Commit a group to the journal every N updates ...
    save_every: int = Field(10, ge=1)
    #: ... and at least every T seconds while updates arrive.
    save_interval: float = Field(1.0, gt=0)
    #: In ``fsync`` mode, the longest time a committed group waits for fsync.
    sync_interval: float = Field(1.0, gt=0)
    #: How often the human-readable ``<stage>.json`` is refreshed.
    state_interval: float = Field(5.0, gt=0)
    #: Log the progress line every N processed items (0: never).
    log_every: int = Field(100, ge=0)
    #: Seconds over which throughput (and so the ETA) is measured (or the last 20 units,
    #: when those took longer); see :class:`~scrapy_checkpoint.metrics.RateWindow`.
    throughput_window: float = Field(3.0, gt=0)
    #: Snapshot generations kept per stage.
    keep_snapshots: int = Field(10, ge=1)
    #: A journal segment is compacted into a snapshot once it is larger than
    #: this and larger than the previous snapshot.
    compact_min_bytes: int = Field(4 << 20, ge=4096)
    #: A checkpoint not updated for this long is stale; ``cleanup()`` removes
    #: stale stages that no live process owns.
    ttl_hours: float = Field(24.0, gt=0)

    @classmethod
    def from_options(cls, base: CheckpointConfig | None = None, **options: Any) -> CheckpointConfig:
        """Build a config, turning validation errors into one clear :class:`ConfigError`."""
        values = base.model_dump() if base is not None else {}
        values.update(options)
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
                for err in exc.errors()
            )
            raise ConfigError(f"Invalid checkpoint option {problems}.") from None
