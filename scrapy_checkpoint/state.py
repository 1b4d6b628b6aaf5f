"""The state users read: pydantic models and the status machine."""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticSerializationError

from .clock import utcnow
from .errors import InvalidTransitionError

SCHEMA_VERSION = 1

#: A counter read back from a state file or a journal: a signed 64-bit int (a value out of
#: range makes the state damaged, not an OverflowError later).
Count = Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1)]


class Status(str, Enum):
    """A stage's status; :func:`check_transition` says which changes are allowed."""

    INITIALIZED = "initialized"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    RECOVERING = "recovering"
    #: Finished, but work was lost (``CheckpointState.lost`` says how much and why).
    INCOMPLETE = "incomplete"

    def __str__(self) -> str:
        return self.value


# A completed, incomplete or failed stage may run again: finished units stay skipped.
_TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.INITIALIZED: frozenset({Status.RUNNING}),
    Status.RUNNING: frozenset({Status.PAUSED, Status.COMPLETED, Status.INCOMPLETE, Status.FAILED,
                               Status.RECOVERING}),
    Status.RECOVERING: frozenset({Status.RUNNING, Status.FAILED}),
    Status.PAUSED: frozenset({Status.RUNNING, Status.FAILED}),
    Status.FAILED: frozenset({Status.RUNNING}),
    Status.COMPLETED: frozenset({Status.RUNNING}),
    Status.INCOMPLETE: frozenset({Status.RUNNING}),
}

#: Statuses in which a stage found on disk without a live owner was crashed.
ACTIVE_STATUSES = frozenset({Status.RUNNING, Status.RECOVERING})


def check_transition(stage: str, old: Status, new: Status) -> None:
    """Raise :class:`InvalidTransitionError` unless ``old -> new`` is allowed."""
    if old != new and new not in _TRANSITIONS[old]:
        raise InvalidTransitionError(stage, old.value, new.value)


class Owner(BaseModel):
    """The process that holds (or last held) a stage."""

    model_config = ConfigDict(extra="ignore")

    #: A process id (-1: not known); read back from a lock file, an owner record or a
    #: journal, it must fit the OS's pid type.
    pid: int = Field(ge=-1, le=(1 << 31) - 1)
    host: str
    started_at: datetime

    @classmethod
    def current(cls) -> Owner:
        """This process, now."""
        return cls(pid=os.getpid(), host=socket.gethostname(), started_at=utcnow())


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host. A number no process can have
    (0 or below, which os.kill would take for a process group, or too large) is none."""
    if not 0 < pid < 1 << 31:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Progress(BaseModel):
    """The counters of a stage and its times (aware UTC datetimes)."""

    model_config = ConfigDict(extra="ignore")

    total_items: Count | None = None
    processed_items: Count = 0
    successful_items: Count = 0
    failed_items: Count = 0
    skipped_items: Count = 0
    start_time: datetime | None = None
    last_update_time: datetime | None = None
    estimated_completion_time: datetime | None = None


#: Reason of lost units that are a crawl's pages redirected to the login page (the Scrapy
#: integration's setup requests): not scraped, kept as failed units.
LOST_SESSION_EXPIRED = "session_expired"
#: Reasons of lost units whose units are known and done again by the next run, which takes
#: them off the count.
LOST_REDONE_NEXT_RUN = frozenset({LOST_SESSION_EXPIRED})


class CheckpointState(BaseModel):
    """The human-facing state of one stage, as written to ``<stage>.json``."""

    model_config = ConfigDict(extra="ignore")

    schema_version: int = SCHEMA_VERSION
    stage: str
    status: Status = Status.INITIALIZED
    progress: Progress = Field(default_factory=Progress)
    last_processed_item: str | None = None
    last_processed_index: int | None = None
    batch_id: str | None = None
    input_file: str | None = None
    input_file_hash: str | None = None
    output_file: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    error_message: str | None = None
    error_count: Count = 0
    last_error_time: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    owner: Owner | None = None
    #: Units recorded done (the journal's done-set size).
    done_units: Count = 0
    #: Units added and not yet done (for stages that journal their frontier).
    pending_units: Count = 0
    #: How many times the stage was found crashed and recovered.
    recoveries: Count = 0
    #: Units whose work was lost, by reason (e.g. ``unjournaled``: a crawl request that could
    #: not be journaled was pending at a crash). A stage with any ends ``incomplete``. Those of
    #: a reason in :data:`LOST_REDONE_NEXT_RUN` are known, and the next run does them again.
    lost: dict[str, Count] = Field(default_factory=dict)
    #: Recent throughput in items/s when the state was written.
    throughput: float | None = None
    #: Percentiles (p50, p95, p99) of recent journal commit durations, in microseconds.
    commit_latency_us: dict[str, int] | None = None
    #: Every journal commit of the writing process so far, by duration: ``{"le": [upper
    #: bounds in seconds], "counts": [commits at most that long, cumulative], "count": n,
    #: "sum_seconds": s}`` (a Prometheus histogram; it starts again with each process).
    commit_latency_histogram: dict[str, Any] | None = None


def state_json(state: CheckpointState) -> str:
    """``state`` as the JSON of a state file. A string holding a lone surrogate (a file name
    decoded with ``surrogateescape`` given as the last item or input file, or a ``\\udc80``
    escape read back from a journal) cannot be UTF-8: it is written with the surrogate as
    the text ``\\udc80``, instead of failing the write of every state file of the run."""
    try:
        return state.model_dump_json(indent=2)
    except PydanticSerializationError:
        return json.dumps(_utf8_safe(state.model_dump(mode="json")), indent=2, ensure_ascii=False)


def _utf8_safe(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_utf8_safe(k): _utf8_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_utf8_safe(v) for v in value]
    return value
