"""Every ``CHECKPOINT_*`` setting, read once into a typed object.

===========================  =========  ==================  ==========================================
Setting                      Type       Default             Meaning
===========================  =========  ==================  ==========================================
CHECKPOINT_ENABLED           bool       False (True with    Turn the plugin on.
                                        the add-on)
CHECKPOINT_DIR               str        "checkpoints"       Directory of the file store.
CHECKPOINT_STAGE_NAME        str        the spider's name   Name of the stage (one per crawl).
CHECKPOINT_BACKEND           str        "file"              Where stages live.
CHECKPOINT_DURABILITY        str        "fsync"             "fsync", "flush" or "none".
CHECKPOINT_SYNC_INTERVAL     float      1.0                 Seconds between fsyncs ("fsync" mode).
CHECKPOINT_SAVE_EVERY        int        10                  Finished requests per journal commit.
CHECKPOINT_LOG_INTERVAL      float      30.0                Seconds between progress lines (0: off).
CHECKPOINT_INPUT_FILE        str        None                File whose change stops a resume.
CHECKPOINT_RESET             bool       False               Start the stage over.
CHECKPOINT_RETRY_FAILED      bool       False               Fetch failed requests again on resume.
CHECKPOINT_ON_COMPLETE       str        "restart"           Completed stage run again: "restart"/"skip".
CHECKPOINT_OUTPUT            str        None                The plugin's own exactly-once JSON lines.
===========================  =========  ==================  ==========================================
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import CheckpointConfig, Durability
from .errors import ConfigError

PREFIX = "CHECKPOINT_"


class CheckpointSettings(BaseModel):
    """The plugin's settings (see the module docstring for the table)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    dir: str = "checkpoints"
    stage_name: str | None = None
    backend: str = "file"
    durability: Durability = "fsync"
    sync_interval: float = Field(1.0, gt=0)
    save_every: int = Field(10, ge=1)
    log_interval: float = Field(30.0, ge=0)
    input_file: str | None = None
    reset: bool = False
    retry_failed: bool = False
    on_complete: Literal["restart", "skip"] = "restart"
    output: str | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "file":
            raise ValueError("only 'file' is available in this version")
        return value

    @classmethod
    def from_settings(cls, settings: Any) -> CheckpointSettings:
        """Read ``CHECKPOINT_*`` from Scrapy settings; a bad value raises :class:`ConfigError`
        naming the setting and what it accepts."""
        values = {}
        for name in cls.model_fields:
            value = settings.get(PREFIX + name.upper())
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

    def checkpoint_config(self) -> CheckpointConfig:
        return CheckpointConfig(durability=self.durability, sync_interval=self.sync_interval,
                                save_every=self.save_every, log_every=0)
