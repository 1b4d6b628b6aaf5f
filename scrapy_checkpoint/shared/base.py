"""What every store's shared stage does the same way: the worker record, its heartbeat
thread, and the questions asked of the workers' records. A store's own class
(:class:`~.redis.RedisSharedStage`, :class:`~.postgres.PostgresSharedStage`) keeps the
claims, inboxes and records in its own structures, atomically."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from ..state import pid_alive

logger = logging.getLogger("scrapy_checkpoint")

#: Worker statuses. ``running``/``idle`` are live ones; a worker that left with work
#: pending is ``paused`` until adopted; ``finished`` and ``adopted`` ones are over.
OVER = frozenset({"finished", "adopted"})
#: What a unit's claim becomes once the unit is done (in its owner's journal).
DONE_MARK = "="
#: What a unit's claim is while its request waits in scrapy-redis's shared queue.
QUEUED_MARK = "q"


class Worker(BaseModel):
    """One worker of a shared stage, as the stage's records keep it."""

    model_config = ConfigDict(extra="ignore")

    id: str
    host: str
    pid: int
    started_at: float
    heartbeat: float
    status: str = "running"
    done: int = 0
    pending: int = 0
    outputs: list[str] = []
    outputs_cut: bool = False
    adopted_by: str | None = None
    #: Computed when read: the worker's sub-stage lock still holds its token (and, on
    #: this host, its process exists).
    alive: bool = False

    @field_validator("outputs", mode="before")
    @classmethod
    def _empty_object_is_empty_list(cls, value: Any) -> Any:
        return [] if value == {} else value  # a record once re-encoded by Redis's cjson


def new_worker_id() -> str:
    """``<host>-<pid>-<4 hex>``: unique per process, so a restarted worker is a new
    worker (it adopts the old one, whose sub-stage stays as it was left)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:4]}"


def sub_stage_name(stage: str, worker: str) -> str:
    """The name of ``worker``'s sub-stage of ``stage``: ``<stage>.w.<worker>``."""
    return f"{stage}.w.{worker}"


def shared_stage_of(sub_stage: str) -> tuple[str, str] | None:
    """``(stage, worker)`` if ``sub_stage`` names a worker's sub-stage."""
    stage, sep, worker = sub_stage.rpartition(".w.")
    return (stage, worker) if sep and stage and worker else None


class SharedStage(ABC):
    """The shared records of one stage, seen by one worker (``worker``; a new id if None).

    Methods talk to the store's server and raise its driver's errors when it is
    unreachable, unless they say otherwise. ``lease_seconds``: how long a worker's
    heartbeat may be silent before it is taken for dead; it beats every third of it.
    """

    #: The store's name in messages ("Redis", "PostgreSQL").
    server = "the store"

    def __init__(self, stage: str, worker: str | None, lease_seconds: float) -> None:
        self.stage = stage
        self.worker = worker or new_worker_id()
        self.sub_stage = sub_stage_name(stage, self.worker)
        self.lease_seconds = lease_seconds
        self._beat_lock = threading.Lock()
        #: Set when another worker recorded this one adopted (it was taken for dead).
        self.adopted = False
        self._host = socket.gethostname()
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report: Callable[[], dict[str, Any]] = dict
        self.status = "running"
        self.outputs: list[str] = []

    # -- reading --------------------------------------------------------------------------

    @abstractmethod
    def workers(self) -> list[Worker]:
        """Every worker this stage has had, oldest first, with ``alive`` computed now."""

    def others_busy(self) -> list[Worker]:
        """Live workers, other than this one, that are not idle (they may yet leave work)."""
        return [w for w in self.workers()
                if w.id != self.worker and w.alive and w.status not in ("idle", *OVER)]

    def completed(self) -> bool:
        """Every worker finished (or was adopted) and none is alive."""
        workers = self.workers()
        return bool(workers) and all(w.status in OVER and not w.alive for w in workers)

    def lost(self) -> str | None:
        """Why the stage cannot go on from its records, if the store lost some of them under
        a worker (a Redis restarted empty): the message a joining worker stops with."""
        return None

    def any_alive(self) -> bool:
        """True if a worker other than this one is alive."""
        return any(w.alive for w in self.workers() if w.id != self.worker)

    def _alive(self, worker: Worker, holds_lock: bool) -> bool:
        """``worker`` is alive: its sub-stage lock holds its token and, on this host, its
        process exists."""
        return holds_lock and (worker.host != self._host or pid_alive(worker.pid))

    # -- this worker -------------------------------------------------------------------------

    @abstractmethod
    def track_in_journal(self) -> None:
        """Have this worker's sub-stage journal keep the claims in step: a unit it finishes
        turns to :data:`DONE_MARK`, a unit it journals leaves the queued payloads, in the
        append's own atomic write. Call before opening the sub-stage."""

    def join(self, token: str, report: Callable[[], dict[str, Any]]) -> None:
        """Register this worker (its sub-stage lock holds ``token``) and start its heartbeat.
        ``report()`` gives the counts the record carries (``done``, ``pending``)."""
        self._report = report
        self._register(token)
        self.beat()
        self._thread = threading.Thread(target=self._beat, name=f"checkpoint-heartbeat-{self.stage}",
                                        daemon=True)
        self._thread.start()

    @abstractmethod
    def _register(self, token: str) -> None:
        """Record ``token`` as the one this worker's sub-stage lock holds while it lives."""

    def _record(self, **extra: Any) -> str:
        fields = {"id": self.worker, "host": self._host, "pid": os.getpid(),
                  "started_at": self._started, "heartbeat": time.time(), "status": self.status,
                  "outputs": self.outputs}
        with contextlib.suppress(Exception):  # counts read as they change: the next beat has them
            fields.update(self._report())
        fields.update(extra)
        return Worker(**fields).model_dump_json(exclude={"alive"})

    @abstractmethod
    def hold_joining(self, timeout: float = 60.0) -> None:
        """Take the stage's joining lock: a worker deciding whether the stage is completed
        (and resetting it) and then joining does it alone, so two workers starting together
        do not both reset it, the second under the first. After ``timeout`` seconds it goes
        on without it (a holder that died frees it by then)."""

    @abstractmethod
    def release_joining(self) -> None:
        """Release the joining lock (if this worker still holds it)."""

    def beat(self, status: str | None = None) -> None:
        """Write this worker's record now (its status, counts, heartbeat). Never over a
        record saying another worker adopted this one: :attr:`adopted` is set then."""
        with self._beat_lock:  # the reactor thread and the heartbeat thread both write it
            if status is not None:
                self.status = status
            if self.adopted:
                return
            if not self._write_record(self._record()):
                self.adopted = True
                logger.error("Stage %s: worker %s was taken for dead and adopted by another "
                             "worker (frozen longer than CHECKPOINT_LEASE_SECONDS?).",
                             self.stage, self.worker)

    @abstractmethod
    def _write_record(self, record: str) -> bool:
        """Write this worker's record (JSON), with ``status`` ``running`` instead of
        ``idle`` while its inbox holds work (it was given units it has not scheduled: a
        giver must not take it for idle and leave). False, writing nothing, if the stored
        record says ``adopted``."""

    def _beat(self) -> None:
        period = self.lease_seconds / 3
        while not self._stop.wait(period):
            try:
                self.beat()
            except Exception as exc:  # server away: the journal buffers; try again next beat
                logger.warning("Stage %s: heartbeat not written (%s)", self.stage, exc)

    def leave(self, status: str) -> None:
        """Stop the heartbeat and record how this worker left (``finished`` or ``paused``)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)  # no beat of an older status lands after this one
        try:
            self.beat(status)
        except Exception as exc:
            logger.warning("Stage %s: could not record that worker %s left (%s)",
                           self.stage, self.worker, exc)

    # -- units -------------------------------------------------------------------------------

    @abstractmethod
    def claim(self, code: int) -> bool:
        """Take the unit for this worker: True if it is free, ours, or a dead worker's."""

    @abstractmethod
    def queue(self, code: int, payload: Any, *, requeue: bool = False) -> bool:
        """scrapy-redis pairing: mark the unit queued in the shared queue, keeping its payload
        until a worker journals it. False if it is done, queued or owned by a live worker
        (``requeue``: also put back one that is queued or this worker's own)."""

    @abstractmethod
    def take(self, code: int) -> bool:
        """scrapy-redis pairing: this worker starts the unit (popped from the shared queue).
        False if it is done or a live worker has it."""

    @abstractmethod
    def lost_queued(self) -> list[Any] | None:
        """Payloads of queued units no live worker has: queued (their request was popped by
        a worker that died before taking it, or the queue lost it) or taken by a dead worker
        before it journaled them. Call only when every worker is idle. None: another worker
        is sweeping now (look again later)."""

    @abstractmethod
    def give(self, taker: str, units: list[tuple[int, Any]]) -> list[int]:
        """Move units this worker owns, with their payloads, to ``taker``'s inbox, if the
        taker is idle. Returns the codes moved (a unit whose claim is no longer ours stays)."""

    @abstractmethod
    def inbox(self, worker: str | None = None) -> list[tuple[int, Any]]:
        """The units waiting in a worker's inbox (this worker's by default), oldest first."""

    @abstractmethod
    def trim_inbox(self, count: int, worker: str | None = None) -> None:
        """Drop the first ``count`` units of the inbox (journaled by their new owner now)."""

    # -- adoption and reset -----------------------------------------------------------------

    def release_dead(self, dead: Worker) -> None:  # noqa: B027 (a hook, empty by default)
        """Free the sub-stage lock of ``dead`` (not alive: its lease ran out) where the
        store's lock outlives a silent holder. Nothing to do where the lock is the lease."""

    @abstractmethod
    def _write_worker(self, worker: Worker) -> None:
        """Write another worker's record as given."""

    def record_adoption(self, dead: Worker, *, outputs_cut: bool) -> None:
        """Record ``dead`` adopted by this worker (and whether its outputs were cut)."""
        dead.status, dead.adopted_by = "adopted", self.worker
        dead.outputs_cut = dead.outputs_cut or outputs_cut
        self._write_worker(dead)

    def record_outputs_cut(self, dead: Worker) -> None:
        """Record that ``dead``'s outputs were cut back to their committed length."""
        dead.outputs_cut = True
        self._write_worker(dead)

    @abstractmethod
    def reset(self) -> list[str]:
        """Remove the shared records and every worker's sub-stage, in one atomic write.
        Returns the sub-stages removed."""
