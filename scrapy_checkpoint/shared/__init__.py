"""Several worker processes on one stage, coordinated through Redis (``CHECKPOINT_SHARED``).

Each worker keeps its own *sub-stage* ``<stage>.w.<worker>``: journal, done-set,
frontier and outputs, exactly as a single crawl keeps its stage, with every
guarantee that comes with it. The workers share three keys of the stage::

    p:<stage>:claims    HASH unit code -> the worker that owns the unit, "=" once done
    p:<stage>:workers   HASH worker -> JSON: host, pid, heartbeat, status, counts, outputs
    p:<stage>:tokens    HASH worker -> the lock token of its sub-stage
    p:<stage>:inbox:<w> LIST requests given to worker w, not yet journaled by it
    p:<stage>:queued    HASH unit code -> request, for scrapy-redis's shared queue (below)

A worker crawls a unit only once it has *claimed* it: the claim succeeds if the
unit is free, already its own, or held by a dead worker (one whose sub-stage
lock no longer holds its token). A unit turns to "=" in the same script call
that appends the journal group recording it done (the Redis store's unit
tracking, :meth:`SharedStage.track_in_journal`), so for every unit, "done for
all workers" and "done in its owner's journal" are one fact. The scripts are
the ``lua/*.lua`` files next to this module.

Work is shared by giving: a busy worker that sees an idle one moves some of its
pending, not yet started requests to the idle worker's inbox (their claims move
with them in the same script), then records them handed off in its own journal
and drops them when its scheduler reaches them. The idle worker schedules its
inbox, journals the requests, and only then trims the inbox.

With scrapy-redis's scheduler the workers share its queue instead: a request a
spider schedules is claimed "q" and its payload kept in ``queued``; whichever
worker pops it *takes* it when its download starts (claim "q" -> that worker)
and journals it, and the journal append that records it removes its payload from
``queued``. A request popped by a worker that died before journaling it is still
in ``queued``: when every worker is idle, the payloads no live worker holds are
put back in the queue.

When a worker dies, its sub-stage lock expires (``CHECKPOINT_LEASE_SECONDS``;
at once for a dead process on the same host). A live worker *adopts* it: takes
its lock, cuts its outputs back to their committed length (same host only: a
file on another machine is cut by the next worker started there), schedules its
pending requests (their claims move to the adopter, which journals them), then
marks them handed off in the dead sub-stage and completes it. Units the dead
worker had claimed but not yet journaled are claimed again by whoever meets them
next: the parent request that found them was not done either, so it runs again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..state import pid_alive

if TYPE_CHECKING:
    from ..stores.redis import RedisStore

logger = logging.getLogger("scrapy_checkpoint")

#: Worker statuses. ``running``/``idle`` are live ones; a worker that left with work
#: pending is ``paused`` until adopted; ``finished`` and ``adopted`` ones are over.
OVER = frozenset({"finished", "adopted"})
#: What a unit's claim becomes once the unit is done (in its owner's journal).
DONE_MARK = "="

class Worker(BaseModel):
    """One worker of a shared stage, as the ``workers`` hash records it."""

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


class SharedStage:
    """The shared keys of one stage, seen by one worker (``worker``; a new id if None).

    Methods talk to Redis and raise redis-py's errors when it is unreachable, unless
    they say otherwise.
    """

    def __init__(self, store: RedisStore, stage: str, worker: str | None = None) -> None:
        self.store = store
        self.stage = stage
        self.worker = worker or new_worker_id()
        self.sub_stage = sub_stage_name(stage, self.worker)
        client = store.client
        self.client = client
        self.claims_key = store.key(stage, "claims")
        self.workers_key = store.key(stage, "workers")
        self.tokens_key = store.key(stage, "tokens")
        self._lock_prefix = f"{store.prefix}:{stage}.w."
        self._claim = store.lua_script("claim", __package__)
        self._give = store.lua_script("give", __package__)
        self._queue = store.lua_script("queue", __package__)
        self._take = store.lua_script("take", __package__)
        self._beat_script = store.lua_script("beat", __package__)
        self._beat_lock = threading.Lock()
        #: Set when another worker recorded this one adopted (it was taken for dead).
        self.adopted = False
        self.queued_key = store.key(stage, "queued")
        self._host = socket.gethostname()
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._report: Callable[[], dict[str, Any]] = dict
        self.status = "running"
        self.outputs: list[str] = []

    # -- reading --------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        """Every worker this stage has had, with ``alive`` computed now."""
        with self.client.pipeline(transaction=True) as pipe:
            raw, tokens = pipe.hgetall(self.workers_key).hgetall(self.tokens_key).execute()
        workers = []
        for key, value in raw.items():
            try:
                workers.append(Worker.model_validate_json(value))
            except ValidationError:
                logger.warning("Stage %s: unreadable worker record %r ignored", self.stage, key)
        if workers:
            locks = self.client.mget([f"{self._lock_prefix}{w.id}:lock" for w in workers])
            for w, lock in zip(workers, locks, strict=True):
                token = tokens.get(w.id.encode())
                w.alive = (token is not None and lock == token
                           and (w.host != self._host or pid_alive(w.pid)))
        return sorted(workers, key=lambda w: w.started_at)

    def others_busy(self) -> list[Worker]:
        """Live workers, other than this one, that are not idle (they may yet leave work)."""
        return [w for w in self.workers()
                if w.id != self.worker and w.alive and w.status not in ("idle", *OVER)]

    def completed(self) -> bool:
        """Every worker finished (or was adopted) and none is alive."""
        workers = self.workers()
        return bool(workers) and all(w.status in OVER and not w.alive for w in workers)

    def any_alive(self) -> bool:
        """True if a worker other than this one is alive."""
        return any(w.alive for w in self.workers() if w.id != self.worker)

    # -- this worker -------------------------------------------------------------------------

    def track_in_journal(self) -> None:
        """Have this worker's sub-stage journal keep the claims in step: a unit it finishes
        turns to :data:`DONE_MARK`, a unit it journals leaves ``queued``, in the append's
        own script call. Call before opening the sub-stage."""
        self.store.track_units(self.sub_stage, finished=self.claims_key, mark=DONE_MARK,
                               unjournaled=self.queued_key)

    def join(self, token: str, report: Callable[[], dict[str, Any]]) -> None:
        """Register this worker (its sub-stage lock holds ``token``) and start its heartbeat."""
        self._report = report
        self.client.hset(self.tokens_key, self.worker, token)
        self.beat()
        self._thread = threading.Thread(target=self._beat, name=f"checkpoint-heartbeat-{self.stage}",
                                        daemon=True)
        self._thread.start()

    def _record(self, **extra: Any) -> str:
        fields = {"id": self.worker, "host": self._host, "pid": os.getpid(),
                  "started_at": self._started, "heartbeat": time.time(), "status": self.status,
                  "outputs": self.outputs}
        with contextlib.suppress(Exception):  # counts read as they change: the next beat has them
            fields.update(self._report())
        fields.update(extra)
        return Worker(**fields).model_dump_json(exclude={"alive"})

    def hold_joining(self, timeout: float = 60.0) -> None:
        """Take the stage's joining lock: a worker deciding whether the stage is completed
        (and resetting it) and then joining does it alone, so two workers starting together
        do not both reset it, the second under the first."""
        key, deadline = self.store.key(self.stage, "joining"), time.monotonic() + timeout
        while not self.client.set(key, self.worker, nx=True, px=int(timeout * 1000)):
            if time.monotonic() > deadline:
                break  # a worker died holding it: the key expires; go on
            time.sleep(0.05)  # another worker is joining (a second or so)

    def release_joining(self) -> None:
        """Release the joining lock (if this worker still holds it)."""
        self.store.compare_and_delete(self.store.key(self.stage, "joining"), self.worker)

    def beat(self, status: str | None = None) -> None:
        """Write this worker's record now (its status, counts, heartbeat) and refresh the TTL
        of the shared keys. Never over a record saying another worker adopted this one."""
        with self._beat_lock:  # the reactor thread and the heartbeat thread both write it
            if status is not None:
                self.status = status
            if self.adopted:
                return
            keys = [self.workers_key, self.inbox_key(), self.claims_key, self.tokens_key,
                    self.queued_key]
            if not self._beat_script(keys=keys, args=[self.worker, self._record(),
                                                      self.store.ttls["active"]]):
                self.adopted = True
                logger.error("Stage %s: worker %s was taken for dead and adopted by another "
                             "worker (frozen longer than CHECKPOINT_LEASE_SECONDS?).",
                             self.stage, self.worker)

    def _beat(self) -> None:
        period = self.store.lease_seconds / 3
        while not self._stop.wait(period):
            try:
                self.beat()
            except Exception as exc:  # Redis away: the journal buffers; try again next beat
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

    def claim(self, code: int) -> bool:
        """Take the unit for this worker: True if it is free, ours, or a dead worker's."""
        result = self._claim(keys=[self.claims_key, self.tokens_key],
                             args=[self.worker, self._lock_prefix, str(code)])
        return bool(result[0])

    def queue(self, code: int, payload: Any, *, requeue: bool = False) -> bool:
        """scrapy-redis pairing: mark the unit queued in the shared queue, keeping its payload
        until a worker journals it. False if it is done, queued or owned by a live worker
        (``requeue``: also put back one that is queued or this worker's own)."""
        return bool(self._queue(
            keys=[self.claims_key, self.tokens_key, self.queued_key],
            args=[self.worker, self._lock_prefix, str(code), json.dumps(payload),
                  "requeue" if requeue else "new"]))

    def take(self, code: int) -> bool:
        """scrapy-redis pairing: this worker starts the unit (popped from the shared queue).
        False if it is done or a live worker has it."""
        return bool(self._take(keys=[self.claims_key, self.tokens_key],
                               args=[self.worker, self._lock_prefix, str(code)]))

    def lost_queued(self) -> list[Any] | None:
        """Payloads of queued units no live worker has: queued ("q", their request was popped
        by a worker that died before taking it, or the queue lost it) or taken by a dead
        worker before it journaled them. Call only when every worker is idle."""
        if not self.client.hlen(self.queued_key):
            return []
        # One sweeper at a time, so two idle workers do not both put the same request back;
        # None tells the caller another worker is sweeping (stay open and look again).
        sweep = self.store.key(self.stage, "sweep")
        if not self.client.set(sweep, self.worker, nx=True,
                               px=int(self.store.lease_seconds * 1000)):
            return None
        try:
            return self._lost_queued()
        finally:
            self.store.compare_and_delete(sweep, self.worker)

    def _lost_queued(self) -> list[Any]:
        queued = self.client.hgetall(self.queued_key)
        codes = list(queued)
        holders = self.client.hmget(self.claims_key, codes)
        alive = {w.id.encode() for w in self.workers() if w.alive}
        lost, finished = [], []
        for code, holder in zip(codes, holders, strict=True):
            if holder == b"=":
                finished.append(code)
            elif holder not in alive:
                lost.append(json.loads(queued[code]))
        if finished:
            self.client.hdel(self.queued_key, *finished)
        return lost

    def inbox_key(self, worker: str | None = None) -> str:
        """The Redis key of a worker's inbox (this worker's by default)."""
        return self.store.key(self.stage, f"inbox:{worker or self.worker}")

    def give(self, taker: str, units: list[tuple[int, Any]]) -> list[int]:
        """Move units this worker owns, with their payloads, to ``taker``'s inbox. Returns
        the codes moved (a unit whose claim is no longer ours stays)."""
        args: list[Any] = [self.worker, taker]
        for code, payload in units:
            args += [str(code), json.dumps([str(code), payload])]
        args.append(self.store.ttls["active"])
        try:
            given = self._give(keys=[self.claims_key, self.inbox_key(taker), self.workers_key],
                               args=args)
        except Exception:
            # The reply may be lost after the script ran: what moved is what the taker holds.
            codes = [str(code) for code, _ in units]
            holders = self.client.hmget(self.claims_key, codes)
            return [int(c) for c, h in zip(codes, holders, strict=True) if h == taker.encode()]
        return [int(code) for code in given]

    def inbox(self, worker: str | None = None) -> list[tuple[int, Any]]:
        """The units waiting in a worker's inbox (this worker's by default), oldest first."""
        items = self.client.lrange(self.inbox_key(worker), 0, -1)
        units = []
        for item in items:
            code, payload = json.loads(item)
            units.append((int(code), payload))
        return units

    def trim_inbox(self, count: int, worker: str | None = None) -> None:
        """Drop the first ``count`` units of the inbox (journaled by their new owner now)."""
        if count:
            self.client.ltrim(self.inbox_key(worker), count, -1)

    def record_adoption(self, dead: Worker, *, outputs_cut: bool) -> None:
        """Record ``dead`` adopted by this worker (and whether its outputs were cut)."""
        dead.status, dead.adopted_by = "adopted", self.worker
        dead.outputs_cut = dead.outputs_cut or outputs_cut
        self.client.hset(self.workers_key, dead.id, dead.model_dump_json(exclude={"alive"}))

    def record_outputs_cut(self, dead: Worker) -> None:
        """Record that ``dead``'s outputs were cut back to their committed length."""
        dead.outputs_cut = True
        self.client.hset(self.workers_key, dead.id, dead.model_dump_json(exclude={"alive"}))

    def reset(self) -> list[str]:
        """Remove the shared keys and every worker's sub-stage. Returns the sub-stages removed."""
        workers = self.workers()
        subs = [sub_stage_name(self.stage, w.id) for w in workers]
        store = self.store
        keys = [self.claims_key, self.workers_key, self.tokens_key, self.queued_key]
        keys += [self.inbox_key(w.id) for w in workers]
        for sub in subs:
            keys += [k for k in store.stage_keys(sub) if not k.endswith(":lock")]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(*keys)
            if subs:
                pipe.srem(f"{store.prefix}:stages", *subs)
            pipe.execute()
        return subs


__all__ = ["DONE_MARK", "OVER", "SharedStage", "Worker", "new_worker_id", "shared_stage_of", "sub_stage_name"]
