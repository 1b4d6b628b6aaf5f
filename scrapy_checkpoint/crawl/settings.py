"""Every ``CHECKPOINT_*`` setting, read once with Scrapy's own getters into one typed object.

Two kinds of settings, one name rule (``CHECKPOINT_`` + the field name in upper case):

- the crawl's own (the fields of :class:`CheckpointSettings`), in the table below;
- every core option of :class:`~scrapy_checkpoint.config.CheckpointConfig`
  (``CHECKPOINT_DURABILITY``, ``CHECKPOINT_SAVE_EVERY``, ``CHECKPOINT_SAVE_INTERVAL``,
  ``CHECKPOINT_SYNC_INTERVAL``, ``CHECKPOINT_STATE_INTERVAL``, ``CHECKPOINT_LOG_EVERY``,
  ``CHECKPOINT_THROUGHPUT_WINDOW``, ``CHECKPOINT_KEEP_SNAPSHOTS``,
  ``CHECKPOINT_COMPACT_MIN_BYTES``, ``CHECKPOINT_TTL_HOURS``), with the core's defaults
  except ``log_every`` (0: a crawl logs every ``CHECKPOINT_LOG_INTERVAL`` seconds instead)
  and ``keep_snapshots`` (2: each snapshot holds the frontier's index). They are read
  from the fields of ``CheckpointConfig`` itself, so a new core option is a Scrapy
  setting with no second list to keep in step. docs/options.md describes each.

===========================  =========  ==================  ==========================================
Setting                      Type       Default             Meaning
===========================  =========  ==================  ==========================================
CHECKPOINT_ENABLED           bool       False (True with    Turn the plugin on.
                                        the add-on)
CHECKPOINT_DIR               str        "checkpoints"       Directory of the file store.
CHECKPOINT_STAGE_NAME        str        the spider's name   Name of the stage (one per crawl).
CHECKPOINT_BACKEND           str        "file"              "file" (CHECKPOINT_DIR), a Redis or PostgreSQL
                                                            URL, or "memory://" (this process only).
CHECKPOINT_REDIS_PREFIX      str        None                Key prefix in Redis ("scrapy_checkpoint").
CHECKPOINT_LEASE_SECONDS     float      60.0                Lease of a stage's owner (Redis) or worker.
CHECKPOINT_REDIS_BUFFER      int        67108864            Journal bytes kept while Redis (or
                                                            PostgreSQL) is away.
CHECKPOINT_LOG_INTERVAL      float      30.0                Seconds between progress lines (0: off).
CHECKPOINT_INPUT_FILE        str        None                File whose change stops a resume.
CHECKPOINT_RESET             bool       False               Start the stage over.
CHECKPOINT_RETRY_FAILED      bool       False               Fetch failed requests again on resume.
CHECKPOINT_ON_COMPLETE       str        "skip"              Completed stage run again: "skip"/"restart"/
                                                            "incremental".
CHECKPOINT_REFRESH_AFTER     str        None                "incremental": refetch what was done this
                                                            long ago or longer ("30m", "12h", "7d").
CHECKPOINT_OUTPUT            str        None                The plugin's own exactly-once JSON lines.
CHECKPOINT_SHARED            bool       False               Several workers share the stage (Redis).
CHECKPOINT_REDIS_TTL         dict       see docs/redis.md   Seconds Redis keeps a stage, by status.
CHECKPOINT_POSTGRES_TTL      dict       None (no expiry)    Seconds PostgreSQL keeps a stage, by status.
CHECKPOINT_DROP_UNRESTORABLE bool       False               Drop (and count as lost) journaled
                                                            requests the spider cannot rebuild.
CHECKPOINT_FRONTIER_MEMORY   int        1000                Queued requests kept as objects (the
                                                            rest are rebuilt from the journal).
CHECKPOINT_PROGRESS_BAR      bool       False               A live progress bar on stderr instead
                                                            of the progress lines.
CHECKPOINT_SQL_URL           str        None                SQLPipeline's database (sqlite:///...,
                                                            postgresql+psycopg://...).
CHECKPOINT_SQL_TABLE         str        "items"             SQLPipeline's table.
CHECKPOINT_SQL_BATCH_SIZE    int        500                 SQLPipeline: rows buffered at most.
CHECKPOINT_SQL_FLUSH_INTERVAL float     1.0                 SQLPipeline: seconds between writes.
===========================  =========  ==================  ==========================================

An unknown ``CHECKPOINT_*`` name stops a crawl that has the plugin enabled, with the
closest valid name (:func:`check_names`): ``CHECKPOINT_`` is the plugin's namespace, and a
misspelled setting would otherwise be ignored in silence, the crawl running with the
default (``CHECKPOINT_DIRECTORY`` writing to ``checkpoints/``, ``CHECKPOINT_ONCOMPLETE``
starting a completed crawl over).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import tempfile
import types
import typing
from typing import Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic.fields import FieldInfo

from ..config import CheckpointConfig
from ..errors import ConfigError, redact
from ..stores import BACKEND_SCHEMES, MEMORY, POSTGRES, open_store
from ..stores.base import Store
from ..stores.file import FileStore

PREFIX = "CHECKPOINT_"

#: Core options whose crawl default differs from the core's.
#: A crawl's snapshots carry its frontier's index (about 50 bytes a pending request): two
#: of them (the newest and a fallback) keep its disk near what its requests take.
CRAWL_DEFAULTS: dict[str, Any] = {"log_every": 0, "keep_snapshots": 2}


class CheckpointSettings(BaseModel):
    """The plugin's settings (see the module docstring for the table).

    ``checkpoint`` holds the core options (``CHECKPOINT_DURABILITY`` and the others),
    already validated: pass it on as the checkpoint's config.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = False
    dir: str = "checkpoints"
    stage_name: str | None = None
    backend: str = "file"
    redis_prefix: str | None = None
    lease_seconds: float = Field(60.0, gt=0)
    redis_buffer: int = Field(64 << 20, ge=0)
    log_interval: float = Field(30.0, ge=0)
    input_file: str | None = None
    reset: bool = False
    retry_failed: bool = False
    on_complete: Literal["skip", "restart", "incremental"] = "skip"
    refresh_after: str | None = None
    output: str | None = None
    shared: bool = False
    redis_ttl: dict[Literal["active", "completed", "failed"], int] | None = None
    postgres_ttl: dict[Literal["active", "completed", "failed"], int] | None = None
    drop_unrestorable: bool = False
    frontier_memory: int = Field(1000, ge=0)
    progress_bar: bool = False
    sql_url: str | None = None
    sql_table: str = Field("items", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    sql_batch_size: int = Field(500, ge=1)
    sql_flush_interval: float = Field(1.0, gt=0)
    checkpoint: CheckpointConfig = CheckpointConfig(**CRAWL_DEFAULTS)

    @field_validator("redis_ttl", "postgres_ttl")
    @classmethod
    def _positive_ttls(cls, value: dict[str, int] | None) -> dict[str, int] | None:
        if value is not None and any(v <= 0 for v in value.values()):
            raise ValueError("TTLs are seconds > 0, e.g. {'active': 172800, 'completed': 3600, "
                             "'failed': 604800}")
        return value

    @field_validator("refresh_after")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def refresh_seconds(self) -> float:
        """``CHECKPOINT_REFRESH_AFTER`` in seconds (ConfigError if it is not set)."""
        if self.refresh_after is None:
            raise ConfigError("CHECKPOINT_ON_COMPLETE = 'incremental' needs "
                              "CHECKPOINT_REFRESH_AFTER, how long a fetched page stays fresh, "
                              "e.g. -s CHECKPOINT_REFRESH_AFTER=7d (s, m, h or d).")
        return parse_duration(self.refresh_after)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, redact(value) if name in ("backend", "sql_url") and value else value

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        if value != "file" and not value.startswith(BACKEND_SCHEMES):
            raise ValueError("use 'file', memory://, a Redis URL such as redis://127.0.0.1:6379/0 "
                             "or a PostgreSQL URL such as postgresql://user@127.0.0.1:5432/db")
        return value

    @classmethod
    def from_settings(cls, settings: Any) -> CheckpointSettings:
        """Read ``CHECKPOINT_*`` from Scrapy ``settings`` (a ``scrapy.settings.BaseSettings``).

        Each value is read with the Scrapy getter of its field's type (``getbool``,
        ``getint``, ``getfloat``, ``getdict``); unset or empty settings keep their
        defaults. Raises :class:`~scrapy_checkpoint.errors.ConfigError` naming the first
        bad setting and what it accepts, or, when the plugin is enabled, the first unknown
        ``CHECKPOINT_*`` name (see :func:`check_names`).
        """
        values = _read(settings, {k: f for k, f in cls.model_fields.items() if k != "checkpoint"})
        core = {**CRAWL_DEFAULTS, **_read(settings, CheckpointConfig.model_fields)}
        try:
            config = cls(**values, checkpoint=CheckpointConfig(**core))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = [str(part) for part in err["loc"]]
            name = loc[1] if loc[0] == "checkpoint" and len(loc) > 1 else loc[0]
            _raise(PREFIX + name.upper(), err.get("input"), err["msg"])
        if config.enabled:
            check_names(settings)
        if config.on_complete == "incremental":
            config.refresh_seconds  # noqa: B018 - raises ConfigError when it is not set
        return config

    def completed_message(self, stage: str) -> str:
        """The one line a run of the completed ``stage`` logs when it does nothing."""
        where = (f"--dir {shlex.quote(self.dir)}" if self.backend == "file"
                 else f"--backend {shlex.quote(redact(self.backend))}")
        return (f"Stage {stage} is already completed: nothing to fetch, outputs left as they "
                f"are. To crawl it again from the start, add -s CHECKPOINT_RESET=True, or run "
                f"scrapy-checkpoint {where} reset {stage} first.")

    def store(self) -> Store:
        """The store these settings name (a :class:`FileStore`, a ``MemoryStore``, a
        ``RedisStore`` or a ``PostgresStore``).

        For the file backend, ``CHECKPOINT_DIR`` is created if missing and a file is
        written in it and removed: a directory that cannot be used raises
        :class:`~scrapy_checkpoint.errors.ConfigError` naming the setting, before any
        stage is opened. So does a ``CHECKPOINT_OUTPUT`` this user cannot write (nothing is
        created or opened to tell).
        """
        if self.output:
            _check_output(self.output)
        if self.backend == "file":
            _check_dir(self.dir)
            return FileStore(self.dir)
        if self.backend.startswith(MEMORY):
            return open_store(self.backend)
        if self.backend.startswith(POSTGRES):
            from ..stores.postgres import PostgresStore

            return PostgresStore(self.backend, buffer_bytes=self.redis_buffer,
                                 lease_seconds=self.lease_seconds,
                                 ttls={str(k): v for k, v in self.postgres_ttl.items()}
                                 if self.postgres_ttl is not None else None)
        from ..stores.redis import RedisStore

        return RedisStore(self.backend, prefix=self.redis_prefix, lease_seconds=self.lease_seconds,
                          buffer_bytes=self.redis_buffer,
                          ttls={str(k): v for k, v in (self.redis_ttl or {}).items()})


def setting_names() -> list[str]:
    """Every ``CHECKPOINT_*`` setting the plugin reads, crawl fields and core options."""
    fields = [n for n in CheckpointSettings.model_fields if n != "checkpoint"]
    return [PREFIX + n.upper() for n in [*fields, *CheckpointConfig.model_fields]]


def check_names(settings: Any) -> None:
    """Raise :class:`~scrapy_checkpoint.errors.ConfigError` naming every ``CHECKPOINT_*``
    name in ``settings`` that is not a setting of the plugin, each with the closest valid
    name (``difflib``) when there is one."""
    known = setting_names()
    unknown = [name for name in sorted(str(key) for key in settings)
               if name not in known and (name.startswith(PREFIX) or _near_prefix(name, known))]
    if not unknown:
        return
    fix = ("Fix the name in settings.py, custom_settings or -s (docs/scrapy.md lists every "
           "CHECKPOINT_* setting).")
    if len(unknown) == 1:
        name = unknown[0]
        close = _closest(name, known)
        hint = f"did you mean {close}? " if close else ""
        raise ConfigError(
            f"Unknown setting {name}: {hint}scrapy-checkpoint has no such setting, so it would "
            f"be ignored and the crawl would run with the default. {fix}")
    names = ", ".join(f"{name} (did you mean {close}?)" if (close := _closest(name, known))
                      else name for name in unknown)
    raise ConfigError(
        f"Unknown settings {names}: scrapy-checkpoint has no such settings, so they would be "
        f"ignored and the crawl would run with the defaults. {fix.replace('name', 'names', 1)}")


#: Names users reach for that mean another setting (without the prefix).
_SYNONYMS = {"DIRECTORY": "DIR", "FOLDER": "DIR", "PATH": "DIR", "REDIS_URL": "BACKEND",
             "URL": "BACKEND", "STORE": "BACKEND", "STAGE": "STAGE_NAME", "NAME": "STAGE_NAME"}


#: What users put before the prefix (the package is scrapy-checkpoint).
_PROJECT_PREFIXES = ("SCRAPY_", "SCRAPY-")


def _near_prefix(name: str, known: list[str]) -> bool:
    """True for a name that begins almost like ``CHECKPOINT_`` (another case, a plural, a
    transposed, missing or split word: ``checkpoint_dir``, ``CHECKPOINTS_DIR``,
    ``CHECKPIONT_DIR``, ``CHEKPOINT_DIR``, ``CHECK_POINT_DIR``, after ``SCRAPY_`` too) and
    goes on with one of the plugin's settings: a misspelling that would otherwise be ignored
    in silence."""
    return _split_near_prefix(name, known) is not None


def _split_near_prefix(name: str, known: list[str]) -> str | None:
    """``name`` rewritten with the exact prefix (``CHECKPOINT_`` + its upper-cased rest)
    when it begins almost like the prefix and its rest is close to a setting's; else None."""
    upper = name.upper()
    for project in _PROJECT_PREFIXES:  # SCRAPY_CHECKPOINT_DIR: the package's name first
        if upper.startswith(project):
            upper = upper[len(project):]
            break
    words = {k[len(PREFIX):] for k in known}
    for cut in range(len(PREFIX) - 2, len(PREFIX) + 3):
        head, rest = upper[:cut], upper[cut:].lstrip("_")
        if not rest or not head.startswith("CH"):
            continue
        if difflib.SequenceMatcher(None, head.rstrip("_"), PREFIX.rstrip("_")).ratio() < 0.85:
            continue
        if rest in words or difflib.get_close_matches(rest, list(words), n=1, cutoff=0.8):
            return PREFIX + rest
    return None


def _closest(name: str, known: list[str]) -> str | None:
    """The known name closest to ``name``: a synonym's, else the closest compared without
    the shared prefix (``difflib``), else one that starts like it; None when none is close."""
    if not name.startswith(PREFIX) or name != name.upper():
        name = _split_near_prefix(name, known) or name.upper()
        if name in known:
            return name
    word, words = name[len(PREFIX):], [k[len(PREFIX):] for k in known]
    if _SYNONYMS.get(word) in words:
        return PREFIX + _SYNONYMS[word]
    close = difflib.get_close_matches(word, words, n=1, cutoff=0.6)
    if not close:
        close = sorted((w for w in words if min(len(w), len(word)) >= 3
                        and (w.startswith(word) or word.startswith(w))), key=len, reverse=True)
    return PREFIX + close[0] if close else None


def _check_dir(directory: str) -> None:
    """Create ``directory`` if missing and write a file in it (removed at once), or raise
    :class:`~scrapy_checkpoint.errors.ConfigError` naming ``CHECKPOINT_DIR``."""
    step = "cannot be created"
    try:
        os.makedirs(directory, exist_ok=True)
        step = "cannot be written"
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        if isinstance(exc, FileExistsError):
            step, reason = "is not a directory", f"{exc.filename!r} is a file"
        else:
            reason = exc.strerror or str(exc) or type(exc).__name__
            if exc.filename and step == "cannot be created" and exc.filename != directory:
                reason += f": {exc.filename!r}"
        raise ConfigError(
            f"CHECKPOINT_DIR={directory!r} {step} ({reason}). Set CHECKPOINT_DIR to a "
            f"directory this user may create and write, in settings.py, custom_settings or "
            f"-s CHECKPOINT_DIR=...") from None


def _check_output(path: str) -> None:
    """Raise :class:`~scrapy_checkpoint.errors.ConfigError` naming ``CHECKPOINT_OUTPUT`` if
    ``path`` is a directory, or neither it nor the directory it would be created in (the
    nearest that exists) may be written by this user (``os.access``: nothing is touched)."""
    target = os.path.abspath(path)
    reason = None
    if os.path.isdir(target):
        reason = "it is a directory"
    else:
        while not os.path.lexists(target) and os.path.dirname(target) != target:
            target = os.path.dirname(target)
        if os.path.lexists(target) and not os.path.isdir(target) and target != os.path.abspath(path):
            reason = f"{target!r} is a file, not a directory"
        elif not os.access(target, os.W_OK):
            reason = f"{target!r} is not writable by this user"
    if reason is not None:
        raise ConfigError(
            f"CHECKPOINT_OUTPUT={path!r} cannot be written ({reason}). Set CHECKPOINT_OUTPUT "
            f"to a file this user may create and write, in settings.py, custom_settings or -s "
            f"CHECKPOINT_OUTPUT=...")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"30m"``, ``"12h"``, ``"7d"``, ``"45s"`` or ``"90"``
    (seconds). Raises ValueError for anything else, or a negative duration."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*", str(text).lower())
    if match is None:
        raise ValueError("use a duration such as 30m, 12h or 7d (a number and s, m, h or d)")
    return float(match.group(1)) * _UNITS.get(match.group(2) or "s", 1)


def _read(settings: Any, fields: dict[str, FieldInfo]) -> dict[str, Any]:
    """The settings named by ``fields`` that are set, each read with its type's getter."""
    values: dict[str, Any] = {}
    for name, info in fields.items():
        setting = PREFIX + name.upper()
        raw = settings.get(setting)
        if raw is None or raw == "":
            continue
        getter = _getter(info.annotation)
        if getter is None:
            values[name] = raw
            continue
        if getter == "getint" and not _integral(raw):  # getint would cut 1.5 to 1
            _raise(setting, raw, _getter_message(getter, None))
        if getter == "getbool" and not _boolean(raw):  # getbool takes any number: 2 is True
            _raise(setting, raw, _getter_message(getter, None))
        try:
            values[name] = getattr(settings, getter)(setting)
        except (ValueError, TypeError) as exc:
            _raise(setting, raw, _getter_message(getter, exc))
    return values


def _getter(annotation: Any) -> str | None:
    """The Scrapy getter for a field of this type (None: the raw value, checked by pydantic)."""
    if annotation is bool:
        return "getbool"
    if annotation is int:
        return "getint"
    if annotation is float:
        return "getfloat"
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _getter(args[0]) if len(args) == 1 else None
    if annotation is dict or origin is dict:
        return "getdict"
    return None


def _integral(raw: Any) -> bool:
    """True unless ``raw`` is a number, or a number's text, with a fractional part."""
    try:
        return float(raw).is_integer()
    except (TypeError, ValueError):
        return True  # not a number at all: getint's own error says so


def _boolean(raw: Any) -> bool:
    """True for what the message of ``getbool`` offers: True or False, 1 or 0, and their text
    in any case (as Scrapy's ``getbool`` reads them)."""
    if isinstance(raw, bool) or (type(raw) is int and raw in (0, 1)):
        return True
    return isinstance(raw, str) and raw.strip().lower() in ("0", "1", "true", "false")


def _getter_message(getter: str, exc: Exception | None) -> str:
    return {
        "getbool": "use True or False (1/0, true/false)",
        "getint": "use a whole number",
        "getfloat": "use a number",
        "getdict": "use a dict, or its JSON text",
    }.get(getter, str(exc))


def _raise(setting: str, value: Any, problem: str) -> NoReturn:
    raise ConfigError(f"Invalid setting {setting}={redact(repr(value))}: {problem}. "
                      f"Fix it in settings.py, custom_settings or -s {setting}=...")
