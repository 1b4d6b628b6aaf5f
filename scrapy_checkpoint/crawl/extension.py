"""CheckpointExtension: one crawl's checkpoint, from open to close.

It opens the stage (resuming, starting over or skipping it), wires Scrapy's
signals to its collaborators, runs the timer and closes the stage with the
status the close reason calls for. The work lives in named collaborators:

- :class:`~.frontier.Frontier`: which requests are units, and when each is done;
- :class:`~.outputs.OutputSet`: durable outputs, cut back on resume;
- :class:`~.shared_worker.SharedWorker`: this crawl as one worker of a shared stage;
- :class:`~.sessions.CookieJars`: the cookie jars, kept with the checkpoint;
- :class:`~.setup_requests.SetupRequests`: requests every run makes again (a login), and
  the resumed requests held until they finish;
- :class:`~.spider_state.SpiderStateKeeper`: ``spider.state``, journaled with the requests;
- :class:`~.stage_totals.StageTotals`: Scrapy's counters over every run, ``CLOSESPIDER_*``;
- :class:`~.item_ids.ItemIds`: the items' ids, attached by :class:`~.pipeline.CheckpointItemPipeline`;
- :func:`~.stats.publish`: the ``checkpoint/*`` stats.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn
from weakref import WeakKeyDictionary

from itemadapter import ItemAdapter
from scrapy import Spider, signals
from scrapy.exceptions import CloseSpider, DontCloseSpider, NotConfigured
from scrapy.utils.asyncio import create_looping_call
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.serialize import ScrapyJSONEncoder

from ..bar import ProgressBar
from ..checkpoint import EnhancedCheckpoint
from ..durability import timer_period
from ..errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointLostError,
    CheckpointWriteError,
    ConfigError,
)
from ..journal.groups import ATTACHED, OUTPUTS, TOTAL
from ..metrics import Metrics
from ..stores.base import Store
from .deliveries import Deliveries, ItemTracking
from .deliveries import modes as deliveries_modes
from .engine_hooks import (
    START_ITEM,
    callbacks_idle,
    crawl_started,
    fail_at_stop,
    hook_item_processing,
    hook_refusals,
    hook_request_lifecycle,
    hook_spider_output,
)
from .frontier import LOST_NEVER_DONE, LOST_UNJOURNALED, Frontier, resume_order
from .identity import IGNORE_META, UNIT_META
from .invocation import borrowing_command, describe
from .item_ids import ItemIds
from .open_policy import open_stage
from .outputs import DurableOutput, OutputSet, configured_outputs
from .progress import CrawlProgress
from .requests import NEEDS_ATTACHED
from .scrapy_redis import uses_scrapy_redis
from .sessions import ATTACHED_NAME, CookieJars
from .settings import CheckpointSettings
from .setup_requests import ATTACHED_NAME as SETUP_ATTACHED
from .setup_requests import SETUP_META, SetupRequests, finish_expired
from .shared_worker import SharedWorker
from .spider_state import SpiderStateError, SpiderStateKeeper, give_completed_state
from .stage_totals import StageTotals
from .start_errors import mark_reported, report
from .stats import publish, publish_recorded

logger = logging.getLogger("scrapy_checkpoint")

#: Close reasons after which a stage is failed; ``finished`` completes it, any other pauses it.
FAILED_REASONS = frozenset({"start_error"})

_extensions: WeakKeyDictionary[Any, CheckpointExtension] = WeakKeyDictionary()


class CheckpointExtension:
    """Enabled by the add-on, or by ``EXTENSIONS`` with ``CHECKPOINT_ENABLED = True``.

    Build it with :meth:`from_crawler` (one per crawler; the middleware and the feeds
    find it with :meth:`of`). Raises ``NotConfigured`` when ``CHECKPOINT_ENABLED`` is
    False or the Scrapy command does not crawl (``scrapy shell``, ``fetch``, ...),
    ConfigError for bad settings, CheckpointLockedError when another crawl owns the
    stage; each CheckpointError logged once as one paragraph (:mod:`.start_errors`).
    """

    def __init__(self, crawler: Any, config: CheckpointSettings) -> None:
        self.crawler = crawler
        self.config = config
        self.stats = crawler.stats
        self.stage: str = config.stage_name or crawler.spidercls.name
        #: True from a successful open to the close: the stage records this crawl.
        self.active = False
        self.cp: EnhancedCheckpoint | None = None
        self.frontier: Frontier | None = None
        self.outputs: OutputSet | None = None
        self.worker: SharedWorker | None = None
        self.cookies: CookieJars | None = None
        self.setup: SetupRequests | None = None
        self.spider_state: SpiderStateKeeper | None = None
        self.totals: StageTotals | None = None
        self.deliveries: Deliveries | None = None
        self.progress: CrawlProgress | None = None
        #: The item ids, when :class:`~.pipeline.CheckpointItemPipeline` is installed.
        self.item_ids: ItemIds | None = None
        #: The live progress bar (CHECKPOINT_PROGRESS_BAR), while it is shown.
        self.bar: ProgressBar | None = None
        self._own_output: DurableOutput | None = None
        #: The :class:`~.scheduler.CheckpointScheduler`, when the crawl uses it.
        self.scheduler: Any = None
        self._encoder = ScrapyJSONEncoder()
        self._warned: set[str] = set()
        self._stopping = False
        self._write_failed = False  # then nothing more is committed (see stop())
        self._skip_completed = False
        self._loops: list[Any] = []
        #: SCHEDULER is scrapy-redis's: its queue hands back copies of the requests.
        self._scrapy_redis = uses_scrapy_redis(crawler.settings.get("SCHEDULER"))

    # -- construction --------------------------------------------------------------------

    @classmethod
    def of(cls, crawler: Any) -> CheckpointExtension | None:
        """The extension of ``crawler``, if it was built."""
        return _extensions.get(crawler)

    @classmethod
    def from_crawler(cls, crawler: Any) -> CheckpointExtension:
        """Read the settings, open the stage and connect the signals (see the class doc)."""
        existing = _extensions.get(crawler)
        if existing is not None:
            return existing
        try:
            return cls._build(crawler)
        except CheckpointError as exc:
            raise report(exc) from None

    @classmethod
    def _build(cls, crawler: Any) -> CheckpointExtension:
        command = borrowing_command(crawler.spidercls, crawler.settings)
        if command is not None:
            logger.debug(describe(command))
            raise NotConfigured
        config = CheckpointSettings.from_settings(crawler.settings)
        if not config.enabled:
            raise NotConfigured("CHECKPOINT_ENABLED is False")
        if crawler.settings.get("JOBDIR"):
            raise ConfigError(
                "JOBDIR and scrapy-checkpoint must not be combined: JOBDIR's requests.seen "
                "would drop the requests scrapy-checkpoint schedules again on resume. Remove "
                "JOBDIR (scrapy-checkpoint keeps the frontier itself) or set "
                "CHECKPOINT_ENABLED = False."
            )
        ext = cls(crawler, config)
        ext._open()
        _extensions[crawler] = ext
        connect = crawler.signals.connect
        connect(ext.spider_opened, signal=signals.spider_opened)
        connect(ext.spider_closed, signal=signals.spider_closed)
        frontier = ext.frontier
        if frontier is not None:  # the frontier's handlers directly: no call in between
            connect(frontier.request_scheduled, signal=signals.request_scheduled)
            connect(frontier.request_dropped, signal=signals.request_dropped)
            connect(frontier.spider_error, signal=signals.spider_error)
            totals = ext.totals
            assert totals is not None
            connect(totals.item_scraped, signal=signals.item_scraped)
            connect(totals.item_dropped, signal=signals.item_dropped)
            connect(totals.item_error, signal=signals.item_error)
            connect(totals.response_received, signal=signals.response_received)
            connect(totals.spider_error, signal=signals.spider_error)
            if ext._own_output is not None or frontier.inflight_at_crash or ext.worker is not None:
                connect(ext.item_scraped, signal=signals.item_scraped)  # else nothing per item
        if ext.active:  # (the stage is open: so is its setup)
            connect(ext.spider_idle, signal=signals.spider_idle)
            connect(ext.setup.response_downloaded, signal=signals.response_downloaded)  # type: ignore[union-attr]
        return ext

    def _open(self) -> None:
        config = self.config
        store = config.store()
        if not config.shared:
            self._open_stage(store, self.stage)
            return
        worker = SharedWorker.join(self.crawler, config, store, self.stage)
        if worker is None:  # completed, and CHECKPOINT_ON_COMPLETE = 'skip' (the default)
            self._skip_completed = True
            return
        try:
            self.worker = worker
            self._open_stage(store, worker.sub_stage)
        finally:
            worker.release_joining()  # joined, or failed: let the next worker in

    def _open_stage(self, store: Store, stage: str) -> None:
        """Open ``stage`` and start it (see :func:`~.open_policy.open_stage`), then build the
        collaborators that work on it."""
        cp, started = open_stage(self.crawler, self.config, store, stage, name=self.stage,
                                 shared=self.worker is not None, scrapy_redis=self._scrapy_redis)
        if not started:  # completed, and nothing to do
            self._skip_completed, self.cp = True, cp
            give_completed_state(getattr(self.crawler, "spider", None), cp)  # for open_spider()
            return
        worker = self.worker
        outputs = self.outputs = OutputSet(
            cp, self.stats, claim_file=self._claim_file if worker is not None else None,
            configured=configured_outputs(self.crawler.settings,
                                          getattr(self.crawler.spidercls, "name", "") or "",
                                          self.config.output, self.crawler.spider),
            warn_once=self.warn_once)
        frontier = self.frontier = Frontier(self.crawler, cp, outputs, warn_once=self.warn_once,
                                            stop=self.stop)
        frontier.progress = self.progress = CrawlProgress(
            cp, self.crawler.settings.getint("DEPTH_LIMIT"))
        totals = self.totals = StageTotals(cp, frontier.unit_of_request, self.stop, self.crawler)
        totals.log_earlier_items(self.stage)
        self.deliveries = Deliveries(  # not where units move between processes (see .deliveries)
            cp, frontier.live, outputs, totals, self.stats, **deliveries_modes(
                self.crawler.settings, alone=worker is None and not self._scrapy_redis))
        keeper = self.spider_state = SpiderStateKeeper(
            cp, lambda: not crawl_started(self.crawler) or callbacks_idle(self.crawler.engine))
        spider = getattr(self.crawler, "spider", None)
        if spider is not None:  # so that pipelines' open_spider() see it too
            keeper.attach(spider)
        cp.set_commit_gate(keeper.ready)
        outputs.cut(cp.live.outputs)
        self.cookies = _cookie_jars(cp, frontier, totals, self.warn_once)
        setup = self.setup = frontier.setup = SetupRequests(
            cp.live.attached.get(SETUP_ATTACHED), self.stats, self.warn_once, self.stage,
            lambda request: self.crawler.engine.crawl(request))  # noqa: PLW0108 (no engine yet)
        setup.retry_expired(cp)
        cp.add_commit_hook(lambda: _commit_fields(self))
        cp.add_sync_hook(outputs.fds)
        self.cp = cp
        self.active = True
        if worker is not None:
            worker.attach(cp, frontier, outputs)
        elif self._scrapy_redis:
            frontier.copies_from_queue = True
        if self.config.output:
            self._own_output = outputs.open(self.config.output, overwrite=False,
                                            has_header=False)

    def _claim_file(self, key: str, overwrite: bool) -> bool:
        assert self.worker is not None
        return self.worker.claim_file(key, overwrite, stop=self.stop)

    # -- used by the feeds ---------------------------------------------------------------------

    def warn_once(self, kind: str, message: str) -> None:
        """Log ``message`` as a warning the first time ``kind`` comes up in this crawl."""
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message)

    @property
    def skipping_completed(self) -> bool:
        """True when this run does nothing because the stage is completed."""
        return self._skip_completed

    # -- signals -------------------------------------------------------------------------------

    def spider_opened(self, spider: Spider) -> None:
        """Hook the engine, schedule the pending requests again, start the timers."""
        if self._skip_completed:
            give_completed_state(spider, self.cp)
            raise CloseSpider("checkpoint_completed")
        cp, frontier = self.cp, self.frontier
        if not self.active or cp is None or frontier is None:
            return
        assert self.spider_state is not None
        assert self.totals is not None
        self.spider_state.attach(spider)
        reached = self.totals.seed_close_spider(self.crawler)
        if reached is not None and not _drain_inflight(self, frontier, cp, reached):
            _already_reached(self.stage, reached)
        _hook_engine(self, frontier)
        _schedule_resumed(self, frontier, cp)
        self._start_loop(self._tick, timer_period(cp.config))
        if self.config.progress_bar:
            self.bar = ProgressBar(self.stage)
            self.bar.start(self._metrics())
            self._start_loop(lambda: self.bar.update(self._metrics()) if self.bar else None, 0.5)
        if self.config.log_interval:
            self._start_loop(self.log_progress, self.config.log_interval)

    def _start_loop(self, fn: Any, interval: float) -> None:
        loop = create_looping_call(fn)
        loop.start(interval, now=False)
        self._loops.append(loop)

    def item_scraped(self, item: Any, response: Any, spider: Spider) -> None:
        """Count replayed items; write the item to ``CHECKPOINT_OUTPUT`` with its request."""
        frontier, outputs = self.frontier, self.outputs
        if not self.active or frontier is None or outputs is None:
            return
        request = getattr(response, "request", None)
        if request is not None and request.meta.get(UNIT_META) in frontier.inflight_at_crash:
            self.stats.inc_value("checkpoint/items_replayed")
        if self._own_output is not None:
            line = self._encoder.encode(ItemAdapter(item).asdict()) + "\n"
            router = outputs.router
            previous, router.current = router.current, frontier.unit_of(response)
            try:
                self._own_output.write(line.encode())
            finally:
                if router.current is None and self.deliveries is not None:  # start()'s item
                    self.deliveries.start_written(START_ITEM.get())
                router.current = previous

    def spider_idle(self, spider: Spider) -> None:
        """Commit what is done: a crawl about to finish has it journaled before it closes
        (killed while closing, its next run finds everything done). Shared stages: see
        :meth:`SharedWorker.idle`."""
        if not self.active or self.cp is None or self._write_failed:
            return
        if self.frontier is not None:
            self.frontier.release_holds()
        if self.setup is not None and self.setup.idle():
            raise DontCloseSpider  # the held resumed requests were just scheduled
        try:
            self.cp.request_durable()
            if self.worker is not None:
                self.worker.idle()
        except CheckpointError as exc:
            self.stop(exc)

    def _tick(self) -> None:
        # A looping call whose function raises stops for good: never let it.
        try:
            if self.cp is not None and self.active and not self._write_failed:
                self.cp.tick()
                if self.worker is not None:
                    self.worker.tick()
        except CheckpointError as exc:
            self.stop(exc)
        except Exception:
            logger.exception("Stage %s: checkpoint timer failed", self.stage)

    def log_progress(self) -> None:
        """Log the progress line and refresh the stats (every ``CHECKPOINT_LOG_INTERVAL``)."""
        cp, frontier = self.cp, self.frontier
        if cp is None or frontier is None or not self.active or self._write_failed:
            return  # (after a failed write the in-memory counts are not what is recorded)
        frontier.record_skips()
        metrics = self._metrics()
        if metrics.eta_seconds is not None:
            self.stats.set_value("checkpoint/eta_seconds", round(metrics.eta_seconds, 1))
        if self.bar is None:
            _log_line(self, metrics)
        publish(self.stats, cp)
        if self.totals is not None:
            self.totals.publish(self.stats)

    def _metrics(self) -> Metrics:
        """The stage's figures now, against the estimate of the crawl's final size (the
        estimate and the pending count of one moment: the recorded total is a commit old)."""
        assert self.cp is not None
        if self.progress is None:
            return self.cp.metrics()
        estimate = self.progress.estimate()  # the one the commits record too
        self.stats.set_value("checkpoint/estimated_total", estimate.total)
        return replace(self.cp.metrics(estimate.total), estimated=estimate.wide,
                       eta_total=estimate.eta_total)

    def stop(self, exc: Exception) -> None:
        """The checkpoint cannot record progress: stop the crawl (resumable) rather than
        crawl on with nothing recorded. After a failed write nothing more is committed
        (an item whose feed could not be opened must not be recorded done)."""
        if isinstance(exc, (CheckpointWriteError, CheckpointLockedError)) and not self._write_failed:
            self._write_failed = True
            if self.cp is not None:
                self.cp.set_commit_gate(lambda: False)
        if self._say_stopped(exc):  # and scrapy crawl exits with status 1, not 0
            fail_at_stop(self.crawler, mark_reported(exc))
            deferred_from_coro(self.crawler.engine.close_spider_async(reason="checkpoint_error"))

    def _say_stopped(self, exc: Exception) -> bool:
        """Log why the crawl stops, once (False if it was said before)."""
        if self._stopping:
            return False
        self._stopping = True
        if not isinstance(exc, CheckpointWriteError):
            logger.error("Stage %s: %s The crawl stops; run the same command again to resume.",
                         self.stage, exc)
        elif isinstance(exc, CheckpointLostError) and self.outputs is not None and self.outputs.files:
            # The next run cannot know what these hold: say it before they are written twice.
            logger.error("Stage %s: the crawl stops. %s Its outputs (%s) keep the items written "
                         "so far: move them aside before the next run, or those items will be "
                         "written to them again.", self.stage, exc,
                         ", ".join(sorted(self.outputs.files)))
        else:  # the error says what happened, what is kept and what to do
            logger.error("Stage %s: the crawl stops. %s", self.stage, exc)
        return True

    # -- close -----------------------------------------------------------------------------------

    def spider_closed(self, spider: Spider, reason: str) -> None:
        """Close the stage: completed, failed or paused, per the close reason."""
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        if self.bar is not None:
            self.bar.stop(self._metrics() if self.active and self.cp is not None else None)
            self.bar = None
        cp = self.cp
        if cp is None:
            return
        broken = self.spider_state is not None and self.spider_state.error is not None
        try:
            if self.active and not broken and not self._write_failed:
                try:
                    self._finish(cp, reason)
                except SpiderStateError as exc:
                    logger.error("Stage %s: %s", self.stage, exc)
                    broken = True
                except (CheckpointWriteError, CheckpointLockedError) as exc:  # left at its last commit
                    self._say_stopped(exc)
        finally:
            self.active = False
            if self.frontier is not None:
                self.frontier.active = False
            if self._own_output is not None:
                self._own_output.close()
            if broken:  # nothing after the last good commit is kept: as after a crash
                logger.error("Stage %s stopped at its last commit: spider.state could not be "
                             "journaled. Fix the spider, then run the same command again to "
                             "resume.", self.stage)
            if broken or self._write_failed or cp.write_failure is not None:
                cp.abandon()  # resumes from the last commit
                publish_recorded(self.stats, cp.store, cp.stage)
            else:
                try:
                    cp.close()
                except (CheckpointWriteError, CheckpointLockedError) as exc:
                    self._say_stopped(exc)
            closer = getattr(cp.store, "close", None)
            if closer is not None:
                closer()

    def _finish(self, cp: EnhancedCheckpoint, reason: str) -> None:
        live = cp.live
        assert self.frontier is not None
        self.frontier.record_skips()
        worker = self.worker
        if worker is not None:
            reason = worker.finish(reason, len(live.pending))
        if reason == "finished" and live.pending:
            _record_never_done(cp, self.stage)
        if self.setup is not None:
            finish_expired(self.setup, cp, self.stage, finished=reason == "finished")
        if self.outputs is not None:
            self.outputs.close_documents()  # committed with the status below
        total = len(live.done) + len(live.pending) + live.lost_total
        cp.set_total(total)
        if self.progress is not None:
            self.progress.closing(total if reason == "finished" else None)
        publish(self.stats, cp)
        if self.totals is not None:
            self.totals.publish(self.stats)
        if reason == "finished":
            cp.complete(_caveats(self.outputs, self.totals, live.info.recoveries))
        elif reason in FAILED_REASONS:
            cp.fail(f"crawl closed with reason {reason!r}")
        else:
            cp.pause()
            if worker is None:
                logger.info("Stage %s paused (%s): run the same command again to resume; "
                            "%d request(s) pending.", self.stage, reason, len(live.pending))
            else:
                logger.info("Stage %s: worker %s stopped (%s) with %d request(s) pending; "
                            "another worker adopts them, or the next one started.",
                            self.stage, worker.shared.worker, reason, len(live.pending))
        if worker is not None:
            worker.leave(reason == "finished")


def _log_line(ext: CheckpointExtension, metrics: Metrics) -> None:
    """The progress line: the metrics, the pending requests and the items of every run."""
    assert ext.cp is not None
    items = ext.totals.items_now() if ext.totals is not None else 0
    logger.info("[%s] %s | pending %d | items %d", ext.stage, metrics.progress_line(),
                len(ext.cp.live.pending), items)


def _hook_engine(ext: CheckpointExtension, frontier: Frontier) -> None:
    """Have the engine tell the frontier about refused requests, the requests' lifecycle
    and what callbacks yield, and the deliveries and item ids about items."""
    engine = ext.crawler.engine
    hook_refusals(engine, frontier.refused)
    hook_request_lifecycle(engine, frontier.request_started, frontier.request_finished)
    assert ext.deliveries is not None
    assert ext.totals is not None
    items = ItemTracking(ext.deliveries, ext.totals, ext.item_ids)
    hook_spider_output(engine, frontier.child_yielded, items)
    hook_item_processing(engine, items)


def _cookie_jars(cp: EnhancedCheckpoint, frontier: Frontier, totals: StageTotals,
                 warn_once: Callable[[str, str], None]) -> CookieJars:
    """The stage's cookie jars. A unit done joins its counts to the stage totals and the
    cookies its responses set to the journaled jars; a unit that leaves the run undone, not."""
    cookies = CookieJars(cp.live.attached.get(ATTACHED_NAME), warn_once,
                         frontier.unit_of_request)

    def done(code: int) -> None:
        totals.release(code)
        cookies.release(code)

    def left(code: int) -> None:
        totals.discard(code)
        cookies.discard(code)

    frontier.on_done, frontier.on_leave = done, left
    return cookies


def _commit_fields(ext: CheckpointExtension) -> dict[str, Any] | None:
    """Fields added to every journal group: output lengths, the total (the estimate of the
    crawl's final size), the stage totals and spider.state when they changed, and the
    attached data (items delivered by units in flight, cookie jars, setup requests, what
    the requests need, the depth profile and the estimate's range) when it changed."""
    assert ext.cp is not None
    assert ext.outputs is not None
    assert ext.totals is not None
    assert ext.spider_state is not None
    assert ext.deliveries is not None
    fields: dict[str, Any] = ext.spider_state.fields() or {}  # first: it may raise
    attached: dict[str, Any] = {}
    ext.deliveries.commit(attached)  # before the lengths and totals: it releases items
    fields.update(ext.totals.fields() or {})
    lengths = ext.outputs.changed_lengths()
    if lengths:
        fields[OUTPUTS] = lengths
    for name, part in ((ATTACHED_NAME, ext.cookies), (SETUP_ATTACHED, ext.setup)):
        changed = part.changed() if part is not None else None
        if changed is not None:
            attached[name] = changed
    needs = ext.frontier.needs_changed() if ext.frontier is not None else None
    if needs is not None:
        attached[NEEDS_ATTACHED] = needs
    live = ext.cp.live
    total = len(live.done) + len(live.pending) + live.lost_total
    if ext.progress is not None:
        total = ext.progress.commit(attached)
    if attached:
        fields[ATTACHED] = attached
    if total != live.info.progress.total_items:
        fields[TOTAL] = total
    return fields or None


def _release_held(ext: CheckpointExtension, held: list[Any]) -> int:
    """Schedule the resumed requests held for the setup requests (see :meth:`spider_opened`):
    ``(code, payload)`` pairs, or with the checkpoint scheduler the units' codes."""
    frontier = ext.frontier
    if frontier is None or not ext.active:
        return 0
    if ext.scheduler is not None:
        assert ext.cp is not None
        pending = ext.cp.live.pending
        codes = [code for code in held if not frontier.taken(code)]
        priorities = [(pending.entry(code) or (0, 0, 0))[2] for code in codes]
        ext.scheduler.resume(codes, priorities)
        return len(codes)
    return frontier.schedule(payload for code, payload in held if not frontier.taken(code))


def _record_never_done(cp: EnhancedCheckpoint, stage: str) -> None:
    """The crawl finished with pending units it never did: count them as lost."""
    pending = cp.live.pending
    unjournaled = [code for code in pending if not pending.has_payload(code)]
    never_done = [code for code in pending if pending.has_payload(code)]
    if unjournaled:
        cp.record_lost(LOST_UNJOURNALED, len(unjournaled), unjournaled)
        logger.warning("Stage %s: %d request(s) that could not be journaled were lost at an "
                       "interruption and not found again.", stage, len(unjournaled))
    if never_done:
        cp.record_lost(LOST_NEVER_DONE, len(never_done), never_done)
        logger.warning("Stage %s finished with %d journaled request(s) never done; they "
                       "are counted as lost.", stage, len(never_done))


def _schedule_resumed(ext: CheckpointExtension, frontier: Frontier, cp: EnhancedCheckpoint) -> None:
    """Resume: restore the cookie jars, then schedule the journaled pending requests (held
    while setup requests run), in the order the interrupted run had them; say how many."""
    live = cp.live
    if ext.cookies is not None:
        restored = ext.cookies.attach(ext.crawler)
        if restored:
            logger.info("Stage %s: %d cookie(s) of earlier runs restored before the "
                        "resumed requests.", ext.stage, restored)
    unjournaled = live.pending.unjournaled()
    if unjournaled:
        logger.warning(
            "Stage %s: %d request(s) that could not be journaled were pending at the "
            "interruption: they cannot be sent again, so their work is lost unless the "
            "crawl finds them again (a request whose callback yields one does it again); "
            "else the stage will end 'incomplete'.", ext.stage,
            unjournaled)
    assert ext.setup is not None
    # The estimate's pending units are those resumed (its counts may lag them by a second).
    progress = ext.progress
    if progress is not None and (ext.worker is not None or not progress.lags()):
        progress = None
    if ext.scheduler is not None:  # queued by code: nothing is rebuilt before its turn
        # (nor read: the records are read for the estimate only while they are few)
        if progress is not None and len(live.pending) <= RECONCILE_RECORDS:
            progress.resumed(_readable_payloads(live))
        resumed = _queue_resumed(ext, frontier, cp)
    else:
        lifo = "lifo" in str(ext.crawler.settings.get("SCHEDULER_MEMORY_QUEUE", "")).lower()
        # (code, payload) pairs: a held unit the spider scheduled meanwhile is not sent twice.
        pairs = resume_order({code: (code, payload) for code, payload in live.pending.items()},
                             frontier.inflight_at_crash, lifo=lifo)
        if progress is not None:
            progress.resumed(payload for _, payload in pairs)
        if ext.setup.hold(pairs, lambda held: _release_held(ext, held)):
            resumed = sum(payload is not None for _, payload in pairs)
        else:
            resumed = frontier.schedule(payload for _, payload in pairs)
    if ext.worker is not None:
        resumed += ext.worker.hand_over_adopted()
    inflight = len(frontier.inflight_at_crash)
    if resumed or len(live.done):
        logger.info("Stage %s: %d request(s) scheduled again (%d were in flight at the "
                    "interruption), %d done request(s) will not be fetched again.",
                    ext.stage, resumed, inflight, len(live.done))
    ext.stats.set_value("checkpoint/resumed", resumed)
    ext.stats.set_value("checkpoint/recovered_inflight", inflight)


#: A resume queued by code (the lazy frontier) reads the pending requests' records for the
#: estimate (:meth:`CrawlProgress.resumed`) only when there are at most this many, read
#: before the first download: a larger frontier resumes without reading them (it downloads
#: first, whatever its size; its estimate may count as pending the requests done in the
#: last second before an interruption).
RECONCILE_RECORDS = 10_000


def _readable_payloads(live: Any) -> Any:
    """The payloads of the pending units that can be read (the others: skipped)."""
    pending = live.pending
    for code in pending:
        try:
            yield pending.get(code)
        except (OSError, ValueError):
            continue


def _caveats(outputs: OutputSet | None, totals: StageTotals | None,
             recoveries: int) -> str | None:
    """What to say instead of 'Completed' (None: nothing): feeds not crash-safe written by a
    stage that crashed, items a feed's exporter could not write, pipelines of a resumed run
    that learned from the items in memory."""
    given = [c for c in (_unsafe_feeds(outputs, recoveries), *(
        (totals.unwritten_items(), totals.pipeline_memory()) if totals is not None else ())) if c]
    return " Also, ".join(given) or None


def _unsafe_feeds(outputs: OutputSet | None, recoveries: int) -> str | None:
    """What to say instead of 'Completed' when feeds that are not crash-safe were written by
    a stage that crashed (its runs' items may be missing from them, or repeated)."""
    if outputs is None or not outputs.unsafe or not recoveries:
        return None
    feeds = ", ".join(f"{path!r} ({why})" for path, why in sorted(outputs.unsafe.items()))
    return (f"this stage was interrupted by {recoveries} crash(es) and its feed(s) {feeds} "
            f"are written as plain Scrapy writes them, not crash-safe: they may lack or "
            f"repeat items of the crashed runs. The other outputs hold every item once. For "
            f"an exact copy, write a local feed scrapy-checkpoint makes crash-safe (no "
            f"postprocessing), or CHECKPOINT_OUTPUT, and convert or upload it after the crawl.")


def _already_reached(stage: str, reached: tuple[str, int, int]) -> NoReturn:
    """Close the spider at once: earlier runs reached a CLOSESPIDER limit (``reached``:
    the counter, its limit, its total) and nothing was in flight then.

    Raises CloseSpider."""
    counter, limit, total = reached
    logger.info("Stage %s already reached CLOSESPIDER_%s = %d in earlier runs (%d); nothing to "
                "do. Raise the limit to crawl on, or start over with CHECKPOINT_RESET=True.",
                stage, counter.upper(), limit, total)
    raise CloseSpider(f"closespider_{counter}")


def _drain_inflight(ext: CheckpointExtension, frontier: Frontier, cp: EnhancedCheckpoint,
                    reached: tuple[str, int, int]) -> bool:
    """The units in flight when an earlier run, which had reached a CLOSESPIDER limit, was
    stopped (killed while it finished them, as Scrapy finishes the requests in flight when
    the limit closes the spider): this run does them and nothing else (see
    CheckpointScheduler.drain), so the stage ends with their items as an uninterrupted run
    does. False: nothing to do (or no checkpoint scheduler, or setup requests to wait for)."""
    pending = cp.live.pending
    codes = sorted(code for code in frontier.inflight_at_crash if pending.has_payload(code))
    if not codes or ext.scheduler is None or (ext.setup is not None and ext.setup.known):
        return False
    counter, limit, total = reached
    logger.info("Stage %s reached CLOSESPIDER_%s = %d in earlier runs (%d) and was stopped while "
                "it finished the %d request(s) in flight then: they are done now, as in an "
                "uninterrupted run, and nothing else.", ext.stage, counter.upper(), limit, total,
                len(codes))
    engine = ext.crawler.engine
    ext.scheduler.drain(codes, lambda: deferred_from_coro(
        engine.close_spider_async(reason=f"closespider_{counter}")))
    return True


def _queue_resumed(ext: CheckpointExtension, frontier: Frontier, cp: EnhancedCheckpoint) -> int:
    """Queue the pending units in the checkpoint scheduler by code, the units in flight at
    the interruption due first (or hold them for the setup requests); returns how many."""
    pending = cp.live.pending  # holes stay: their codes are no longer pending, and skipped
    inflight = [code for code in frontier.inflight_at_crash if pending.has_payload(code)]
    resumed = len(pending) - pending.unjournaled()
    if not resumed:
        return 0
    assert ext.setup is not None
    if ext.setup.known and ext.setup.hold([code for code in pending if pending.has_payload(code)],
                                          lambda held: _release_held(ext, held)):
        return resumed
    ext.scheduler.resume(pending.codes, pending.priorities,
                         first=[(code, (pending.entry(code) or (0, 0, 0))[2]) for code in inflight])
    return resumed


__all__ = ["FAILED_REASONS", "IGNORE_META", "SETUP_META", "UNIT_META", "CheckpointExtension"]

