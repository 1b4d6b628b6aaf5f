"""Several worker processes on one stage (``CHECKPOINT_SHARED``), coordinated through the
store: Redis (:mod:`.redis`) or PostgreSQL (:mod:`.postgres`).

Each worker keeps its own *sub-stage* ``<stage>.w.<worker>``: journal, done-set,
frontier and outputs, exactly as a single crawl keeps its stage, with every
guarantee that comes with it. The workers share the stage's records: the *claims*
(unit code -> the worker that owns it, "=" once done), the *workers* (host, pid,
heartbeat, status, counts, outputs, and the token of each one's sub-stage lock),
an *inbox* per worker, and, with scrapy-redis, the *queued* payloads.

A worker crawls a unit only once it has *claimed* it: the claim succeeds if the
unit is free, already its own, or held by a dead worker (one whose sub-stage
lock no longer holds its token). A unit turns to "=" in the same atomic write
that appends the journal group recording it done
(:meth:`SharedStage.track_in_journal`), so for every unit, "done for all workers"
and "done in its owner's journal" are one fact.

Work is shared by giving: a busy worker that sees an idle one moves some of its
pending, not yet started requests to the idle worker's inbox (their claims move
with them in the same write), then records them handed off in its own journal
and drops them when its scheduler reaches them. The idle worker schedules its
inbox, journals the requests, and only then trims the inbox.

With scrapy-redis's scheduler the workers share its queue instead: a request a
spider schedules is claimed "q" and its payload kept in ``queued``; whichever
worker pops it *takes* it when its download starts (claim "q" -> that worker)
and journals it, and the journal append that records it removes its payload from
``queued``. A request popped by a worker that died before journaling it is still
in ``queued``: when every worker is idle, the payloads no live worker holds are
put back in the queue.

When a worker dies, its sub-stage lock goes (at once for a dead process on the
same host; after ``CHECKPOINT_LEASE_SECONDS`` of silence otherwise). A live worker
*adopts* it: takes its lock, cuts its outputs back to their committed length (same
host only: a file on another machine is cut by the next worker started there),
schedules its pending requests (their claims move to the adopter, which journals
them), then marks them handed off in the dead sub-stage and completes it. Units
the dead worker had claimed but not yet journaled are claimed again by whoever
meets them next: the parent request that found them was not done either, so it
runs again.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .base import (
    DONE_MARK,
    OVER,
    QUEUED_MARK,
    SharedStage,
    Worker,
    new_worker_id,
    shared_stage_of,
    sub_stage_name,
)


def supports_shared(store: Any) -> bool:
    """True if ``store`` can keep a shared stage (the Redis and PostgreSQL stores)."""
    from ..stores.postgres import PostgresStore
    from ..stores.redis import RedisStore

    return isinstance(store, (RedisStore, PostgresStore))


def open_shared(store: Any, stage: str, worker: str | None = None) -> SharedStage:
    """``stage``'s shared records in ``store``, seen by ``worker`` (a new worker id if
    None). Raises ConfigError for a store that cannot share a stage."""
    from ..stores.postgres import PostgresStore
    from ..stores.redis import RedisStore

    if isinstance(store, RedisStore):
        from .redis import RedisSharedStage

        return RedisSharedStage(store, stage, worker)
    if isinstance(store, PostgresStore):
        from .postgres import PostgresSharedStage

        return PostgresSharedStage(store, stage, worker)
    raise ConfigError("CHECKPOINT_SHARED needs a Redis or PostgreSQL backend: set "
                      "CHECKPOINT_BACKEND = 'redis://host:6379/0' or "
                      "'postgresql://user@host:5432/db' on every worker.")


__all__ = ["DONE_MARK", "OVER", "QUEUED_MARK", "SharedStage", "Worker", "new_worker_id",
           "open_shared", "shared_stage_of", "sub_stage_name", "supports_shared"]
