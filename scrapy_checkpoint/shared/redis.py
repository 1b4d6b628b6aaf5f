"""A shared stage (``CHECKPOINT_SHARED``) on the Redis store: the stage's records are
these keys, changed by the scripts ``lua/*.lua`` next to this module::

    p:<stage>:claims    HASH unit code -> the worker that owns the unit, "=" once done, "q" queued
    p:<stage>:workers   HASH worker -> JSON: host, pid, heartbeat, status, counts, outputs
    p:<stage>:tokens    HASH worker -> the lock token of its sub-stage
    p:<stage>:inbox:<w> LIST requests given to worker w, not yet journaled by it
    p:<stage>:queued    HASH unit code -> request, for scrapy-redis's shared queue

A worker is alive while its sub-stage lock (a lease of ``CHECKPOINT_LEASE_SECONDS``,
renewed by its process) holds its token. A unit turns to "=" in the script call that
appends the journal group recording it done (:meth:`RedisStore.track_units`).
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from .base import DONE_MARK, SharedStage, Worker, logger, sub_stage_name

if TYPE_CHECKING:
    from ..stores.redis import RedisStore


class RedisSharedStage(SharedStage):
    """A shared stage kept in Redis (see the module docstring)."""

    server = "Redis"

    def __init__(self, store: RedisStore, stage: str, worker: str | None = None) -> None:
        super().__init__(stage, worker, store.lease_seconds)
        self.store = store
        client = store.client
        self.client = client
        self.claims_key = store.key(stage, "claims")
        self.workers_key = store.key(stage, "workers")
        self.tokens_key = store.key(stage, "tokens")
        self.queued_key = store.key(stage, "queued")
        self._lock_prefix = f"{store.prefix}:{stage}.w."
        self._claim = store.lua_script("claim", __package__)
        self._give = store.lua_script("give", __package__)
        self._queue = store.lua_script("queue", __package__)
        self._take = store.lua_script("take", __package__)
        self._beat_script = store.lua_script("beat", __package__)

    # -- reading --------------------------------------------------------------------------

    def workers(self) -> list[Worker]:
        """See :meth:`SharedStage.workers`."""
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
                w.alive = self._alive(w, token is not None and lock == token)
        return sorted(workers, key=lambda w: w.started_at)

    # -- this worker -------------------------------------------------------------------------

    def track_in_journal(self) -> None:
        """See :meth:`SharedStage.track_in_journal` (in the append's script call)."""
        self.store.track_units(self.sub_stage, finished=self.claims_key, mark=DONE_MARK,
                               unjournaled=self.queued_key)

    def _register(self, token: str) -> None:
        self.client.hset(self.tokens_key, self.worker, token)

    def hold_joining(self, timeout: float = 60.0) -> None:
        """See :meth:`SharedStage.hold_joining` (a key set with NX, expiring)."""
        key, deadline = self.store.key(self.stage, "joining"), time.monotonic() + timeout
        while not self.client.set(key, self.worker, nx=True, px=int(timeout * 1000)):
            if time.monotonic() > deadline:
                break  # a worker died holding it: the key expires; go on
            time.sleep(0.05)  # another worker is joining (a second or so)

    def release_joining(self) -> None:
        """See :meth:`SharedStage.release_joining`."""
        self.store.compare_and_delete(self.store.key(self.stage, "joining"), self.worker)

    def _write_record(self, record: str) -> bool:
        """See :meth:`SharedStage._write_record` (``beat.lua``, which also refreshes the TTL
        of the shared keys)."""
        keys = [self.workers_key, self.inbox_key(), self.claims_key, self.tokens_key,
                self.queued_key]
        return bool(self._beat_script(keys=keys, args=[self.worker, record,
                                                       self.store.ttls["active"]]))

    # -- units -------------------------------------------------------------------------------

    def claim(self, code: int) -> bool:
        """See :meth:`SharedStage.claim` (``claim.lua``)."""
        result = self._claim(keys=[self.claims_key, self.tokens_key],
                             args=[self.worker, self._lock_prefix, str(code)])
        return bool(result[0])

    def queue(self, code: int, payload: Any, *, requeue: bool = False) -> bool:
        """See :meth:`SharedStage.queue` (``queue.lua``)."""
        return bool(self._queue(
            keys=[self.claims_key, self.tokens_key, self.queued_key],
            args=[self.worker, self._lock_prefix, str(code), json.dumps(payload),
                  "requeue" if requeue else "new"]))

    def take(self, code: int) -> bool:
        """See :meth:`SharedStage.take` (``take.lua``)."""
        return bool(self._take(keys=[self.claims_key, self.tokens_key],
                               args=[self.worker, self._lock_prefix, str(code)]))

    def lost_queued(self) -> list[Any] | None:
        """See :meth:`SharedStage.lost_queued` (one sweeper at a time, by an expiring key)."""
        if not self.client.hlen(self.queued_key):
            return []
        # One sweeper at a time, so two idle workers do not both put the same request back.
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
            if holder == DONE_MARK.encode():
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
        """See :meth:`SharedStage.give` (``give.lua``)."""
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
        """See :meth:`SharedStage.inbox`."""
        units = []
        for item in self.client.lrange(self.inbox_key(worker), 0, -1):
            code, payload = json.loads(item)
            units.append((int(code), payload))
        return units

    def trim_inbox(self, count: int, worker: str | None = None) -> None:
        """See :meth:`SharedStage.trim_inbox`."""
        if count:
            self.client.ltrim(self.inbox_key(worker), count, -1)

    # -- adoption and reset -----------------------------------------------------------------

    def _write_worker(self, worker: Worker) -> None:
        self.client.hset(self.workers_key, worker.id, worker.model_dump_json(exclude={"alive"}))

    def _sub_stages_listed(self) -> list[str]:
        """The sub-stages of this stage named in the store's set of stages (also those of
        workers whose records are gone)."""
        prefix = f"{self.stage}.w."
        return sorted(name for name in (raw.decode(errors="replace") for raw in
                                        self.client.smembers(f"{self.store.prefix}:stages"))
                      if name.startswith(prefix))

    def lost(self) -> str | None:
        """See :meth:`SharedStage.lost`: a worker's sub-stage whose keys vanished under it
        left its marker (``p:<sub-stage>:gone``); the stage's claims and records went with
        it, so a new worker would start the stage from zero."""
        for sub in self._sub_stages_listed():
            raw = self.client.get(self.store.key(sub, "gone"))
            if raw is not None:
                return self.store.vanished_message(self.stage, raw)
        return None

    def reset(self) -> list[str]:
        """See :meth:`SharedStage.reset` (one MULTI/EXEC)."""
        workers = self.workers()
        subs = sorted({sub_stage_name(self.stage, w.id) for w in workers}
                      | set(self._sub_stages_listed()))
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


__all__ = ["RedisSharedStage"]
