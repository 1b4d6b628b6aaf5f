"""What a crawl does with the stage it finds: resume it, start it over, refresh part of it,
or (completed) leave it alone.

:func:`open_stage` opens the stage's checkpoint and, when there is work, starts it:

- a stage paused, failed, crashed or incomplete is resumed;
- ``CHECKPOINT_RESET`` starts it over;
- a completed stage with pending requests (its failed ones requeued by
  ``scrapy-checkpoint requeue``) is resumed for them;
- else a completed stage is left alone (``CHECKPOINT_ON_COMPLETE = "skip"``, the default),
  started over (``"restart"``), refreshed (``"incremental"``: requests done longer than
  ``CHECKPOINT_REFRESH_AFTER`` ago are fetched again) or reopened for its failed requests
  (``CHECKPOINT_RETRY_FAILED``);
- an output shorter than its committed length (deleted, moved, cut) stops the crawl before
  anything is written (:class:`~scrapy_checkpoint.errors.OutputLostError`): its missing items
  would never be written again;
- pending requests the spider can no longer rebuild stop the crawl before anything is
  fetched (:class:`~scrapy_checkpoint.errors.UnrestorableRequestsError`), unless
  ``CHECKPOINT_DROP_UNRESTORABLE`` gives them up, counted as lost.
"""

from __future__ import annotations

import logging
import os
from itertools import chain
from typing import Any

from ..checkpoint import EnhancedCheckpoint
from ..clock import walltime
from ..errors import ConfigError, OutputLostError, UnrestorableRequestsError
from ..state import Status
from ..stores.base import Store
from ..stores.file import is_checkpoint_file
from .arguments import note_arguments
from .deliveries import START_DELIVERED_ATTACHED
from .frontier import LOST_UNRESTORABLE
from .outputs import configured_outputs, local_outputs
from .progress import HISTORY_ATTACHED, completed_size
from .requests import NEEDS_ATTACHED, Needs, unrestorable
from .rules import note_rules
from .scrapy_redis import own_scrapy_redis_queue, waiting_start_urls
from .settings import CheckpointSettings

logger = logging.getLogger("scrapy_checkpoint")


def open_stage(crawler: Any, config: CheckpointSettings, store: Store, stage: str, *,
               name: str, shared: bool, scrapy_redis: bool) -> tuple[EnhancedCheckpoint, bool]:
    """Open ``stage`` in ``store`` and start it when there is work: ``(checkpoint, True)``;
    ``(checkpoint, False)`` when the stage is completed and this run does nothing (the
    checkpoint is open, not started). ``name`` is the stage as the user knows it (a shared
    stage's, for a worker's sub-stage); ``shared``: a worker of a shared stage (reset as a
    whole, not here); ``scrapy_redis``: scrapy-redis's scheduler, not shared.

    Raises ConfigError (a bad stage name), CheckpointLockedError (another crawl owns the
    stage; nothing written), InputChangedError, UnrestorableRequestsError.
    """
    try:
        cp = EnhancedCheckpoint(stage=stage, config=config.checkpoint, store=store,
                                units="requests")
    except ConfigError as exc:
        raise ConfigError(f"{exc} Set CHECKPOINT_STAGE_NAME to a valid name.") from None
    _refuse_checkpoint_files(crawler, config, store, stage)
    cp.open()
    try:
        reset = config.reset and not shared  # a shared stage was reset as a whole
        refresh_before = None
        if cp.status is Status.COMPLETED and not reset:
            if cp.live.pending:  # its failed requests requeued (scrapy-checkpoint requeue)
                logger.info("Stage %s was completed; %d requeued request(s) are pending: "
                            "fetching them.", name, len(cp.live.pending))
            elif config.retry_failed and cp.live.failed_units:
                logger.info("Stage %s was completed with %d failed request(s); fetching "
                            "them again (CHECKPOINT_RETRY_FAILED).", name,
                            len(cp.live.failed_units))
            elif config.on_complete == "incremental":
                refresh_before = _refresh_before(crawler, config, cp, name)
                if refresh_before is None:
                    return cp, False
            elif config.on_complete == "skip" and _redis_starts_waiting(crawler, name):
                reset = True
            elif config.on_complete == "skip":
                logger.info(config.completed_message(name))
                _warn_new_outputs(crawler, config, cp, name)
                return cp, False
            else:
                logger.info("Stage %s was completed; starting it over "
                            "(CHECKPOINT_ON_COMPLETE = 'restart').", name)
                reset = True
        if not shared and scrapy_redis:
            live = cp.live
            own_scrapy_redis_queue(crawler, name, new_stage=not (
                reset or live.pending or len(live.done)))
        if not reset and not shared:
            _check_outputs(crawler, config, cp, name)
        problems = {} if reset else _unrestorable(crawler, config, cp, name)
        history = completed_size(cp) if reset else None
        cp.start(input_file=config.input_file, reset=reset, retry_failed=config.retry_failed,
                 refresh_before=refresh_before)
        if history is not None:  # a new run of it: the best prior of its size
            cp.attach(HISTORY_ATTACHED, history)
        if refresh_before is not None:  # a new pass: start()'s items are delivered again
            cp.attach(START_DELIVERED_ATTACHED, [])
        if problems:
            _drop_unrestorable(crawler, cp, problems, name)
        note_rules(cp, crawler.spider if crawler.spider is not None else crawler.spidercls, name)
        if not shared:
            note_arguments(cp, name)
    except BaseException:
        cp.close()
        raise
    return cp, True


def _refuse_checkpoint_files(crawler: Any, config: CheckpointSettings, store: Store,
                             stage: str) -> None:
    """ConfigError, before the stage is opened (nothing written), if a file this run's
    FEEDS or CHECKPOINT_OUTPUT names is a file of the checkpoint (see is_checkpoint_file)."""
    spider_name = getattr(crawler.spidercls, "name", "") or ""
    for path in local_outputs(crawler.settings, spider_name, config.output):
        if is_checkpoint_file(store, path, stage):
            raise ConfigError(
                f"Output {path} is a file of the checkpoint in {store.location} (a stage's "
                f"state, backup or lock file, or in its data directory): items written there "
                f"would replace recorded progress, and the checkpoint's writes would replace "
                f"the items. The crawl does not start; nothing was written. Give the feed (or "
                f"CHECKPOINT_OUTPUT) a path outside the checkpoint's files.")


def _warn_new_outputs(crawler: Any, config: CheckpointSettings, cp: EnhancedCheckpoint,
                      name: str) -> None:
    """A completed stage left alone: warn about the outputs this run names that the stage
    never wrote (a new ``-o``): plain Scrapy would fill them, nothing is written to them."""
    recorded = set(cp.live.outputs)
    new = [path for path in local_outputs(crawler.settings,
                                          getattr(crawler.spidercls, "name", "") or "",
                                          config.output) if path not in recorded]
    if new:
        logger.warning(
            "Stage %s is completed, and its items are in the outputs of its runs (%s), not "
            "in %s, which this run names: nothing is fetched, so nothing is written there. "
            "To crawl into it, add -s CHECKPOINT_RESET=True.", name,
            ", ".join(sorted(recorded)) or "none recorded", ", ".join(new))


def _check_outputs(crawler: Any, config: CheckpointSettings, cp: EnhancedCheckpoint,
                   name: str) -> None:
    """Raise OutputLostError, before anything is written or fetched, if an output this run
    writes (its FEEDS, CHECKPOINT_OUTPUT) is shorter than its committed length: items of
    finished requests are missing from it, and nothing would write them again (their
    requests are done), so the stage would end 'completed' without them."""
    configured = configured_outputs(crawler.settings,
                                    getattr(crawler.spidercls, "name", "") or "", config.output,
                                    getattr(crawler, "spider", None))
    for path, entry in sorted(cp.live.outputs.items()):
        if not configured(path):
            continue
        try:
            size: int | None = os.path.getsize(path)
        except FileNotFoundError:
            size = None
        except OSError:
            continue  # unreadable: opening it says why
        if (size or 0) >= entry[1] or entry[1] <= entry[0]:
            continue  # all there, or none of it the stage's (a file killed before any item)
        now = "is missing" if size is None else f"is {size:,} bytes"
        raise OutputLostError(
            f"Output {path} of stage {name!r} {now}, but {entry[1]:,} bytes of it were "
            f"committed: items of finished requests are missing from it (it was deleted, "
            f"moved, cut or replaced since, or a power loss took its end). Those requests are "
            f"done and would not run again, so the stage would end 'completed' without their "
            f"items: it does not start, and nothing recorded is changed. Put the file back as it was "
            f"and run the same command again to resume; or start the stage over with -s "
            f"CHECKPOINT_RESET=True, which writes every item again.")


def _unrestorable(crawler: Any, config: CheckpointSettings, cp: EnhancedCheckpoint,
                  name: str) -> dict[str, list[int]]:
    """The pending requests the spider can no longer rebuild, by what they miss. Raises
    UnrestorableRequestsError (before anything is fetched) unless
    ``CHECKPOINT_DROP_UNRESTORABLE`` says to drop them."""
    spider = crawler.spider if crawler.spider is not None else crawler.spidercls
    live = cp.live
    needs = live.attached.get(NEEDS_ATTACHED)
    if isinstance(needs, list):  # what every journaled request needs, by name
        checker = Needs(spider)
        if not any(checker.missing(str(kind), str(name)) for kind, name in needs):
            return {}  # all there: no payload needs reading
    # With CHECKPOINT_RETRY_FAILED, start() makes the failed units pending too.
    payloads = live.pending.items()
    if config.retry_failed:
        payloads = chain(payloads, ((code, live.failed_payload(code)) for code in live.failed_units))
    problems = unrestorable(payloads, spider)
    if problems and not config.drop_unrestorable:
        raise UnrestorableRequestsError(
            name, crawler.spidercls.__name__,
            {what: len(codes) for what, codes in problems.items()})
    return problems


def _drop_unrestorable(crawler: Any, cp: EnhancedCheckpoint, problems: dict[str, list[int]],
                       name: str) -> None:
    codes = sorted({code for group in problems.values() for code in group})
    cp.record_lost(LOST_UNRESTORABLE, len(codes), codes)
    logger.warning(
        "Stage %s: %d pending request(s) cannot be rebuilt (%s); they are dropped "
        "(CHECKPOINT_DROP_UNRESTORABLE = True) and counted as lost: the stage will end "
        "'incomplete'.", name, len(codes),
        ", ".join(f"{what}: {len(group)}" for what, group in sorted(problems.items())))
    crawler.stats.set_value("checkpoint/dropped_unrestorable", len(codes))


def _refresh_before(crawler: Any, config: CheckpointSettings, cp: EnhancedCheckpoint,
                    name: str) -> int | None:
    """``CHECKPOINT_ON_COMPLETE = 'incremental'``: the Unix second before which done
    requests are fetched again, or None (logged) when none was done that long ago."""
    refresh_before = int(walltime() - config.refresh_seconds) + 1
    stale, done = cp.refresh_count(refresh_before), len(cp.live.done)
    if not stale:
        logger.info("Stage %s is completed and none of its %d request(s) was done %s or "
                    "longer ago: nothing to fetch, outputs left as they are "
                    "(CHECKPOINT_ON_COMPLETE = 'incremental', CHECKPOINT_REFRESH_AFTER = "
                    "%r).", name, done, config.refresh_after, config.refresh_after)
        return None
    logger.info("Stage %s was completed; %d of its %d request(s) were done %s or longer "
                "ago: they are fetched again when the crawl reaches them, with what they "
                "link to, and the others are skipped (CHECKPOINT_ON_COMPLETE = "
                "'incremental').", name, stale, done, config.refresh_after)
    crawler.stats.set_value("checkpoint/refreshed", stale)
    return refresh_before


def _redis_starts_waiting(crawler: Any, name: str) -> bool:
    """A completed stage whose spider reads its start URLs from Redis, with URLs waiting
    there: plain Scrapy would pop and crawl them, so the run starts the stage over (only
    what waits in Redis is crawled; the URLs of earlier runs were popped by them)."""
    waiting = waiting_start_urls(crawler)
    if not waiting or not waiting[1]:
        return False
    logger.info("Stage %s was completed, but its spider reads its start URLs from Redis and %s "
                "holds %d: starting the stage over to crawl them, as plain Scrapy does "
                "(feeds opened with -o are appended to).", name, waiting[0], waiting[1])
    return True
