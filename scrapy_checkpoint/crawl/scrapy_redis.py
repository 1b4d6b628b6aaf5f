"""scrapy-redis's scheduler (``SCHEDULER`` names it or a subclass) with the checkpoint.

A shared stage is paired with it: requests go through scrapy-redis's shared
queue, each with its payload kept in the store ("queued") until the worker that pops
it has journaled it; that worker takes the unit when the download starts. A
retry of a unit this worker has goes back to the queue: whoever pops the retry
finishes it.

A stage that is not shared owns the queue (:func:`own_scrapy_redis_queue`): the
journal is the frontier, so at start scrapy-redis's queue and dupefilter, which
outlive a killed crawl, are emptied and the journaled pending requests are
scheduled again past the dupefilter; the frontier registers the copies the queue
hands back (``Frontier.copies_from_queue``).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from scrapy import Request, Spider
from scrapy.exceptions import IgnoreRequest
from scrapy.utils.misc import load_object

from ..errors import CheckpointError, ConfigError
from .frontier import REQUEUE_META
from .identity import UNIT_META

if TYPE_CHECKING:
    from ..shared import SharedStage
    from .frontier import Frontier

logger = logging.getLogger("scrapy_checkpoint")


def uses_scrapy_redis(scheduler: Any) -> bool:
    """True if the ``SCHEDULER`` setting names scrapy-redis's scheduler or a subclass of it
    (found by name in its class hierarchy: a crawl that does not use scrapy-redis does not
    import it, about 0.3 s of start-up)."""
    try:
        cls = load_object(scheduler) if isinstance(scheduler, str) else scheduler
    except (ImportError, NameError, ValueError):
        return False
    return isinstance(cls, type) and any(
        base.__module__ == "scrapy_redis.scheduler" and base.__qualname__ == "Scheduler"
        for base in cls.__mro__)


def waiting_start_urls(crawler: Any) -> tuple[str, int] | None:
    """For a spider reading its start URLs from Redis (scrapy-redis's ``RedisSpider`` or
    ``RedisCrawlSpider``, found by name in its class hierarchy): its key and how many entries
    wait there. ``None`` for other spiders, or when Redis cannot say."""
    cls = crawler.spidercls
    if not any(base.__module__ == "scrapy_redis.spiders" and base.__qualname__ == "RedisMixin"
               for base in cls.__mro__):
        return None
    from scrapy_redis import connection, defaults  # type: ignore[import-untyped,unused-ignore]

    settings = crawler.settings
    spider = getattr(crawler, "spider", None) or cls
    key = (getattr(spider, "redis_key", None)
           or settings.get("REDIS_START_URLS_KEY", defaults.START_URLS_KEY))
    try:
        key = key % {"name": cls.name}
        client = connection.get_redis_from_settings(settings)
        if settings.getbool("REDIS_START_URLS_AS_SET", defaults.START_URLS_AS_SET):
            count = client.scard(key)
        elif settings.getbool("REDIS_START_URLS_AS_ZSET", defaults.START_URLS_AS_ZSET):
            count = client.zcard(key)
        else:
            count = client.llen(key)
    except Exception as exc:  # a count for a log line: say so, go on
        logger.warning("Cannot count the start URLs waiting in Redis for spider %s: %s",
                       cls.name, exc)
        return None
    return key, int(count)


def _keys(crawler: Any) -> tuple[Any, str, str]:
    """scrapy-redis's Redis client, queue key and dupefilter key for ``crawler``."""
    from scrapy_redis import connection, defaults  # type: ignore[import-untyped,unused-ignore]

    settings, name = crawler.settings, crawler.spidercls.name
    queue = settings.get("SCHEDULER_QUEUE_KEY", defaults.SCHEDULER_QUEUE_KEY)
    dupefilter = settings.get("SCHEDULER_DUPEFILTER_KEY", defaults.SCHEDULER_DUPEFILTER_KEY)
    return (connection.get_redis_from_settings(settings), queue % {"spider": name},
            dupefilter % {"spider": name})


def reset_scrapy_redis(crawler: Any, stage: str) -> None:
    """Starting a shared stage over with scrapy-redis: its queue and dupefilter (kept by
    SCHEDULER_PERSIST) go too, or the dupefilter would drop every request again."""
    client, queue, dupefilter = _keys(crawler)
    client.delete(queue, dupefilter)
    logger.info("Stage %s: scrapy-redis's %s and %s emptied too.", stage, queue, dupefilter)


def own_scrapy_redis_queue(crawler: Any, stage: str, *, new_stage: bool) -> None:
    """A stage that is not shared takes scrapy-redis's queue over: its queue and dupefilter
    are emptied, the journal schedules what is pending. ``new_stage``: the stage has no
    record yet (and is not being reset); a queue holding requests then belongs to another
    crawl (ConfigError: several crawls on one queue need a shared stage), or was left by a
    crawl without the checkpoint."""
    client, queue, dupefilter = _keys(crawler)
    if new_stage and client.exists(queue):
        raise ConfigError(
            f"scrapy-redis's queue {queue} holds requests, but stage {stage} starts from nothing: "
            f"another crawl works from that queue, or left it. Several crawls on one scrapy-redis "
            f"queue need CHECKPOINT_SHARED = True with a Redis or PostgreSQL CHECKPOINT_BACKEND. If no crawl "
            f"uses it, delete the keys {queue} and {dupefilter} (redis-cli del) and run again.")
    client.delete(queue, dupefilter)
    logger.info("Stage %s: scrapy-redis's %s and %s emptied; the checkpoint schedules the "
                "pending requests itself.", stage, queue, dupefilter)


class ScrapyRedisPairing:
    """Queues this worker's new requests in the shared stage and takes the units of the
    requests it pops. ``frontier`` is this worker's frontier, ``shared`` its stage view."""

    def __init__(self, frontier: Frontier, shared: SharedStage) -> None:
        self.frontier = frontier
        self.shared = shared

    def queue(self, request: Request, code: int, spider: Spider, *, continuation: bool) -> None:
        """The request goes to the shared queue, its payload kept in the store until the worker
        that pops it has journaled it; ``IgnoreRequest`` if the unit is done, queued or in
        flight anywhere in the stage. ``continuation``: it continues unit ``code`` of this
        worker (a retry): whoever pops it finishes the unit."""
        frontier, shared, cp = self.frontier, self.shared, self.frontier.cp
        meta = request.meta
        requeue = bool(meta.pop(REQUEUE_META, False))
        if code in frontier.live and not continuation:
            raise IgnoreRequest("duplicate of a request in flight in this worker")
        payload = frontier.payload(request, spider, then="it goes to the shared queue untracked, "
                                   "so a crash of the worker that pops it loses it")
        if payload is None:
            meta.pop(UNIT_META, None)
            return
        try:
            queued = shared.queue(code, payload, requeue=requeue or continuation)
        except Exception as exc:  # server away: let it go (at worst crawled twice, never lost)
            frontier.warn_once("claim", f"Stage {frontier.stage}: cannot claim requests in {shared.server} "
                               f"({exc}); queuing them untracked.")
            queued = True
        if not queued:
            frontier.stats.inc_value("checkpoint/claimed_elsewhere")
            raise IgnoreRequest(f"done, queued or in flight in checkpoint stage {frontier.stage}")
        meta[UNIT_META] = code
        if continuation:
            cp.hand_off([code])
            frontier.let_go(code)

    def take(self, request: Request, code: int) -> None:
        """A request popped from the shared queue starts downloading here: take its unit and
        journal it, or drop it if it is done or another worker's."""
        frontier, shared, cp = self.frontier, self.shared, self.frontier.cp
        if code in frontier.live:  # a second copy of a unit in flight here
            frontier.not_ours(request)
            return
        try:
            ours = code not in cp.live.done and shared.take(code)
        except Exception as exc:
            frontier.warn_once("claim", f"Stage {frontier.stage}: cannot claim requests in {shared.server} "
                               f"({exc}); crawling them untracked.")
            return
        if not ours:
            frontier.not_ours(request)
            return
        frontier.own(request, code)
        if shared.status != "running":
            with contextlib.suppress(Exception):  # the heartbeat thread writes it later
                shared.beat("running")
        record = frontier.record(request, frontier.crawler.spider)
        try:
            if record is not None:
                cp.add_unit(code, record, request.priority)
        except CheckpointError as exc:  # its record cannot be written: the crawl stops
            frontier.stop(exc)
            return
        cp.start_unit(code)
