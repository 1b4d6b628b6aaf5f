"""Every ``CHECKPOINT_*`` setting, read once into a typed object.

===========================  =========  ==================  ==========================================
Setting                      Type       Default             Meaning
===========================  =========  ==================  ==========================================
CHECKPOINT_ENABLED           bool       False (True with    Turn the plugin on.
                                        the add-on)
CHECKPOINT_DIR               str        "checkpoints"       Directory of the file store.
CHECKPOINT_STAGE_NAME        str        the spider's name   Name of the stage (one per crawl).
CHECKPOINT_BACKEND           str        "file"              "file" (CHECKPOINT_DIR) or a Redis URL.
CHECKPOINT_REDIS_PREFIX      str        None                Key prefix in Redis ("scrapy_checkpoint").
CHECKPOINT_LEASE_SECONDS     float      60.0                Redis lease of a stage's owner.
CHECKPOINT_REDIS_BUFFER      int        67108864            Bytes of journal kept while Redis is away.
CHECKPOINT_DURABILITY        str        "fsync"             "fsync", "flush" or "none".
CHECKPOINT_SYNC_INTERVAL     float      1.0                 Seconds between fsyncs ("fsync" mode).
CHECKPOINT_SAVE_EVERY        int        10                  Finished requests per journal commit.
CHECKPOINT_LOG_INTERVAL      float      30.0                Seconds between progress lines (0: off).
CHECKPOINT_INPUT_FILE        str        None                File whose change stops a resume.
CHECKPOINT_RESET             bool       False               Start the stage over.
CHECKPOINT_RETRY_FAILED      bool       False               Fetch failed requests again on resume.
CHECKPOINT_ON_COMPLETE       str        "restart"           Completed stage run again: "restart"/"skip".
CHECKPOINT_OUTPUT            str        None                The plugin's own exactly-once JSON lines.
CHECKPOINT_SHARED            bool       False               Several workers share the stage (Redis).
CHECKPOINT_REDIS_TTL         dict       see docs/redis.md   Seconds Redis keeps a stage, by status.
===========================  =========  ==================  ==========================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..config import CheckpointConfig, Durability
from ..errors import ConfigError
from ..stores.base import Store
from ..stores.file import FileStore

PREFIX = "CHECKPOINT_"


class CheckpointSettings(BaseModel):
    """The plugin's settings (see the module docstring for the table)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    dir: str = "checkpoints"
    stage_name: str | None = None
    backend: str = "file"
    redis_prefix: str | None = None
    lease_seconds: float = Field(60.0, gt=0)
    redis_buffer: int = Field(64 << 20, ge=0)
    durability: Durability = "fsync"
    sync_interval: float = Field(1.0, gt=0)
    save_every: int = Field(10, ge=1)
    log_interval: float = Field(30.0, ge=0)
    input_file: str | None = None
    reset: bool = False
    retry_failed: bool = False
    on_complete: Literal["restart", "skip"] = "restart"
    output: str | None = None
    shared: bool = False
    redis_ttl: dict[Literal["active", "completed", "failed"], int] | None = None

    @field_validator("redis_ttl")
    @classmethod
    def _positive_ttls(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and any(v <= 0 for v in value.values()):
            raise ValueError("TTLs are seconds > 0, e.g. {'active': 172800, 'completed': 3600, "
                             "'failed': 604800}")
        return value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "file" and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("use 'file' or a Redis URL such as redis://127.0.0.1:6379/0")
        return value

    @classmethod
    def from_settings(cls, settings: Any) -> CheckpointSettings:
        """Read ``CHECKPOINT_*`` from Scrapy settings; a bad value raises :class:`ConfigError`
        naming the setting and what it accepts."""
        values = {}
        for name in cls.model_fields:
            value = settings.get(PREFIX + name.upper())
            if isinstance(value, str) and value.startswith("{"):  # -s NAME='{"a": 1}'
                value = settings.getdict(PREFIX + name.upper())
            if value is not None and value != "":
                values[name] = value
        try:
            return cls(**values)
        except ValidationError as exc:
            err = exc.errors()[0]
            setting = PREFIX + str(err["loc"][0]).upper()
            raise ConfigError(
                f"Invalid setting {setting}={err.get('input')!r}: {err['msg']}. "
                f"Fix it in settings.py, custom_settings or -s {setting}=..."
            ) from None

    def store(self) -> Store:
        if self.backend == "file":
            return FileStore(self.dir)
        from ..stores.redis import RedisStore

        return RedisStore(self.backend, prefix=self.redis_prefix, lease_seconds=self.lease_seconds,
                          buffer_bytes=self.redis_buffer,
                          ttls={str(k): v for k, v in (self.redis_ttl or {}).items()})

    def checkpoint_config(self) -> CheckpointConfig:
        return CheckpointConfig(durability=self.durability, sync_interval=self.sync_interval,
                                save_every=self.save_every, log_every=0)
