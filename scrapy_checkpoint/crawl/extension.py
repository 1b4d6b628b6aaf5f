"""CheckpointExtension: the frontier and the done-set of a crawl, kept in the journal.

A request is a unit keyed by its fingerprint. It is journaled as *added* when
the scheduler is handed it, *started* when it begins downloading and *done*
when the engine has finished with it (callback or errback output processed,
items through the pipelines and released to the durable outputs). At open, the
added-but-not-done requests are scheduled again, and requests whose
fingerprint is done are dropped wherever they come from (start() included).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any
from weakref import WeakKeyDictionary, WeakSet, WeakValueDictionary

from itemadapter import ItemAdapter
from scrapy import Request, Spider, signals
from scrapy.exceptions import CloseSpider, DontCloseSpider, IgnoreRequest, NotConfigured
from scrapy.utils.serialize import ScrapyJSONEncoder
from twisted.internet.task import LoopingCall

from ..checkpoint import EnhancedCheckpoint
from ..clock import monotonic
from ..errors import CheckpointError, CheckpointLockedError, ConfigError
from ..journal.doneset import DoneSet
from ..journal.keys import key_code
from ..shared import OVER, SharedStage, Worker, sub_stage_name
from ..state import Owner, Status, pid_alive
from ..stores.base import Store
from ..view import read_stage
from .engine_hooks import hook_request_lifecycle, wake
from .outputs import DurableOutput, UnitRouter
from .requests import UnserializableRequest, payload_to_request, request_to_payload
from .settings import CheckpointSettings

logger = logging.getLogger("scrapy_checkpoint")

#: ``request.meta`` key holding the request's unit code (survives retries and redirects).
UNIT_META = "_checkpoint_unit"
#: Set ``request.meta["checkpoint_ignore"] = True`` to keep a request out of the checkpoint.
IGNORE_META = "checkpoint_ignore"
#: scrapy-redis pairing: a request put back in the shared queue (adopted, lost, retried).
REQUEUE_META = "_checkpoint_requeue"

#: Work given to an idle worker of a shared stage: at least GIVE_MIN units, at most GIVE_MAX.
GIVE_MIN, GIVE_MAX = 4, 500

#: Close reasons after which a stage is completed or failed; any other one pauses it.
_FAILED_REASONS = frozenset({"start_error"})

_extensions: WeakKeyDictionary[Any, CheckpointExtension] = WeakKeyDictionary()


def _uses_scrapy_redis(scheduler: Any) -> bool:
    """The SCHEDULER setting names scrapy-redis's scheduler or a subclass of it."""
    try:
        from scrapy_redis.scheduler import Scheduler as RedisScheduler  # type: ignore[import-untyped]
    except ImportError:
        return False
    from scrapy.utils.misc import load_object

    try:
        cls = load_object(scheduler) if isinstance(scheduler, str) else scheduler
    except (ImportError, NameError, ValueError):
        return False
    return isinstance(cls, type) and issubclass(cls, RedisScheduler)


class CheckpointExtension:
    """Enabled by the add-on, or by ``EXTENSIONS`` with ``CHECKPOINT_ENABLED = True``."""

    def __init__(self, crawler: Any, config: CheckpointSettings) -> None:
        self.crawler = crawler
        self.config = config
        self.stats = crawler.stats
        self.router = UnitRouter()
        self.outputs: dict[str, DurableOutput] = {}
        self.active = False
        self.cp: EnhancedCheckpoint | None = None
        self.stage = config.stage_name or crawler.spider.name
        self._live: set[int] = set()  # units scheduled in this run and not done
        self._done_here = DoneSet()  # units done in this run (8 bytes each)
        # Units of this run whose request bypassed the dupefilter (dont_filter): few, kept.
        self._unfiltered: set[int] = set()
        self._just_registered: Request | None = None
        # The request objects that carry a unit: scheduled through request_scheduled. Others
        # (an inline engine.download() with copied meta) must not start or finish it.
        self._registered: WeakSet[Request] = WeakSet()
        self._skipped = 0
        self._stopping = False
        self._continued: dict[int, int] = {}  # unit -> retries/continuations queued
        self._failures: set[int] = set()
        self._ignored: set[int] = set()
        self._inflight_at_crash: set[int] = set()
        self._recorded_lengths: dict[str, int] = {}
        self._warned: set[str] = set()
        self._skip_completed = False
        self._loops: list[LoopingCall] = []
        self._encoder = ScrapyJSONEncoder()
        self._own_output: DurableOutput | None = None
        # CHECKPOINT_SHARED: this worker's view of the stage, units other workers own
        # (a cache; cleared when a worker is adopted), dead workers being adopted.
        self.shared: SharedStage | None = None
        self._elsewhere = DoneSet()
        self._adopting: list[tuple[Worker, EnhancedCheckpoint, bool]] = []
        self._waiting_logged = 0.0
        self._shared_warned = 0.0
        self._joining: SharedStage | None = None
        # The request carrying each unit registered here (to find it when the unit is given).
        self._requests: WeakValueDictionary[int, Request] = WeakValueDictionary()
        # scrapy-redis pairing: requests go through its shared queue; the worker that pops one
        # takes its unit when the download starts.
        self._paired = False
        # Queued requests not to download: their unit was given to another worker, or (with
        # scrapy-redis) another worker has it or it is done.
        self._not_ours: WeakSet[Request] = WeakSet()
        self._next_share = 0.0

    # -- construction --------------------------------------------------------------------

    @classmethod
    def of(cls, crawler: Any) -> CheckpointExtension | None:
        return _extensions.get(crawler)

    @classmethod
    def from_crawler(cls, crawler: Any) -> CheckpointExtension:
        existing = _extensions.get(crawler)
        if existing is not None:
            return existing
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
        connect(ext.request_scheduled, signal=signals.request_scheduled)
        connect(ext.request_dropped, signal=signals.request_dropped)
        connect(ext.spider_error, signal=signals.spider_error)
        if ext._own_output is not None or ext._inflight_at_crash or ext.shared is not None:
            connect(ext.item_scraped, signal=signals.item_scraped)  # else nothing to do per item
        if ext.shared is not None:
            connect(ext.spider_idle, signal=signals.spider_idle)
        return ext

    def _open(self) -> None:
        try:
            self._open_stage()
        finally:
            if self._joining is not None:
                self._joining.release_joining()  # joined, or failed: let the next worker in
                self._joining = None

    def _open_stage(self) -> None:
        config = self.config
        store = config.store()
        stage = self.stage
        if config.shared:
            shared = self._join_shared(store)
            if shared is None:  # completed, and CHECKPOINT_ON_COMPLETE = 'skip'
                return
            stage = shared.sub_stage
        try:
            cp = EnhancedCheckpoint(stage=stage, config=config.checkpoint_config(), store=store)
        except ConfigError as exc:
            raise ConfigError(f"{exc} Set CHECKPOINT_STAGE_NAME to a valid name.") from None
        cp.open()  # CheckpointLockedError (nothing written) if another crawl owns the stage
        try:
            reset = config.reset and self.shared is None  # a shared stage was reset as a whole
            if cp.status is Status.COMPLETED and not reset:
                if config.retry_failed and cp.live.failed_units:
                    logger.info("Stage %s was completed with %d failed request(s); fetching "
                                "them again (CHECKPOINT_RETRY_FAILED).", self.stage,
                                len(cp.live.failed_units))
                elif config.on_complete == "skip":
                    logger.info("Stage %s is already completed; nothing to do "
                                "(CHECKPOINT_ON_COMPLETE = 'skip').", self.stage)
                    self._skip_completed = True
                    self.cp = cp
                    return
                else:
                    logger.info("Stage %s was completed; starting it over "
                                "(CHECKPOINT_ON_COMPLETE = 'restart').", self.stage)
                    reset = True
            cp.start(input_file=config.input_file, reset=reset, retry_failed=config.retry_failed)
        except BaseException:
            cp.close()
            raise
        live = cp.live
        self._inflight_at_crash = live.started & live.pending.keys()
        self._cut_outputs(live.outputs)
        cp.add_commit_hook(self._before_commit)
        cp.add_sync_hook(self._output_fds)
        self.cp = cp
        self.active = True
        if self.shared is not None:
            token = getattr(store, "token", lambda _: None)(cp.stage)
            assert token is not None
            self.shared.join(token, lambda: {"done": len(live.done), "pending": len(live.pending)})
            self._take_over_dead()  # before this run's outputs open: dead ones' are cut first
        if config.output:
            self._own_output = self.open_output(config.output, overwrite=False, has_header=False)

    # -- several workers on one stage (CHECKPOINT_SHARED) ---------------------------------------

    def _join_shared(self, store: Store) -> SharedStage | None:
        """This worker's view of the shared stage; resets it when it is completed (or
        CHECKPOINT_RESET), or returns None when it is completed and ON_COMPLETE is 'skip'."""
        from ..stores.redis import RedisStore

        config = self.config
        if not isinstance(store, RedisStore):
            raise ConfigError("CHECKPOINT_SHARED needs the Redis backend: set CHECKPOINT_BACKEND "
                              "= 'redis://host:6379/0' on every worker.")
        if config.retry_failed:
            raise ConfigError("CHECKPOINT_RETRY_FAILED is not available with CHECKPOINT_SHARED: "
                              "failed requests stay with the worker that failed them.")
        self._paired = _uses_scrapy_redis(self.crawler.settings.get("SCHEDULER"))
        if self._paired and not self.crawler.settings.getbool("SCHEDULER_PERSIST"):
            raise ConfigError("CHECKPOINT_SHARED with scrapy-redis's scheduler needs "
                              "SCHEDULER_PERSIST = True: without it the first worker to close "
                              "empties the queue the others still work from.")
        shared = SharedStage(store, self.stage)
        shared.hold_joining()  # until this worker has joined: no other resets the stage under it
        self._joining = shared
        if config.reset:
            if shared.any_alive():
                raise ConfigError(f"CHECKPOINT_RESET: other workers of stage {self.stage} are "
                                  f"running; stop them first, then start every worker again.")
            removed = shared.reset()
            self._reset_scrapy_redis()
            logger.info("Stage %s: reset (CHECKPOINT_RESET), %d worker sub-stage(s) removed.",
                        self.stage, len(removed))
        elif shared.completed():
            if config.on_complete == "skip":
                logger.info("Stage %s is already completed; nothing to do "
                            "(CHECKPOINT_ON_COMPLETE = 'skip').", self.stage)
                self._skip_completed = True
                shared.release_joining()
                return None
            removed = shared.reset()
            self._reset_scrapy_redis()
            logger.info("Stage %s was completed by %d worker(s); starting it over "
                        "(CHECKPOINT_ON_COMPLETE = 'restart').", self.stage, len(removed))
        store.mark_done_in(shared.sub_stage, shared.claims_key)
        self.shared = shared
        logger.info("Stage %s: worker %s joins (sub-stage %s).", self.stage, shared.worker,
                    shared.sub_stage)
        return shared

    def _reset_scrapy_redis(self) -> None:
        """Starting a shared stage over with scrapy-redis: its queue and dupefilter (kept by
        SCHEDULER_PERSIST) go too, or the dupefilter would drop every request again."""
        if not self._paired:
            return
        from scrapy_redis import connection, defaults  # type: ignore[import-untyped]

        settings, name = self.crawler.settings, self.crawler.spider.name
        keys = [settings.get("SCHEDULER_QUEUE_KEY", defaults.SCHEDULER_QUEUE_KEY),
                settings.get("SCHEDULER_DUPEFILTER_KEY", defaults.SCHEDULER_DUPEFILTER_KEY)]
        keys = [key % {"spider": name} for key in keys]
        connection.get_redis_from_settings(settings).delete(*keys)
        logger.info("Stage %s: scrapy-redis's %s emptied too.", self.stage, " and ".join(keys))

    def _claimed(self, code: int) -> bool:
        """Claim the unit for this worker (shared stages); False if another worker owns it."""
        shared = self.shared
        if shared is None:
            return True
        if code in self._elsewhere:
            return False
        try:
            if shared.claim(code):
                return True
        except Exception as exc:  # Redis away: crawl it (at worst twice), never lose it
            self.warn_once("claim", f"Stage {self.stage}: cannot claim requests in Redis ({exc}); "
                           f"crawling them here, another worker may crawl some too.")
            return True
        self._elsewhere.add_new(code)
        return False

    def _take_over_dead(self) -> None:
        """Take the sub-stage of every dead worker not yet adopted (the one that gets its lock
        adopts it) and cut its outputs back to their committed length when they are on this
        host. Its requests are scheduled here by :meth:`_hand_over_adopted`."""
        shared, cp = self.shared, self.cp
        assert shared is not None
        assert cp is not None
        host = Owner.current().host
        taken = {w.id for w, _, _ in self._adopting}
        for worker in shared.workers():
            if worker.id == shared.worker or worker.alive or worker.id in taken:
                continue
            on_this_host = worker.host == host
            if (on_this_host and worker.status not in ("paused", *OVER)
                    and worker.pid != os.getpid() and pid_alive(worker.pid)):
                continue  # frozen past its lease: not dead (a pid reused by us, or a worker
                # that left and released its lock, does not count)
            if worker.status in OVER:
                if worker.status == "adopted" and on_this_host and not worker.outputs_cut:
                    self._cut_outputs_of(worker)
                continue
            other = EnhancedCheckpoint(stage=sub_stage_name(self.stage, worker.id),
                                       config=cp.config, store=cp.store)
            try:
                other.open()
            except CheckpointLockedError:
                continue  # alive after all, or another worker is adopting it
            except CheckpointError as exc:
                logger.error("Stage %s: cannot adopt worker %s: %s", self.stage, worker.id, exc)
                continue
            if on_this_host:
                self._cut_outputs(self._only_theirs(worker, other.live.outputs))
            self._adopting.append((worker, other, on_this_host))

    def _cut_outputs_of(self, worker: Worker) -> None:
        """Outputs of a worker that died on this host and was adopted elsewhere."""
        assert self.cp is not None
        try:
            view = read_stage(self.cp.store, sub_stage_name(self.stage, worker.id))
        except Exception as exc:
            logger.warning("Stage %s: cannot read worker %s to cut its outputs (%s)",
                           self.stage, worker.id, exc)
            return
        self._cut_outputs(self._only_theirs(worker, view.outputs))
        assert self.shared is not None
        self.shared.record_outputs_cut(worker)

    def _only_theirs(self, dead: Worker, recorded: dict[str, list[int]]) -> dict[str, list[int]]:
        """The outputs of a dead worker that no other worker of the stage writes: a file
        another worker also wrote (two workers were given one file) is never cut."""
        assert self.shared is not None
        # Files another worker on that host wrote while the dead one lived (two workers given
        # one file), not those of workers before it (a supervisor reusing the path).
        others = {path for w in self.shared.workers()
                  if w.id != dead.id and w.host == dead.host
                  and (w.alive or w.heartbeat >= dead.started_at) for path in w.outputs}
        shared_files = sorted(set(recorded) & others)
        for path in shared_files:
            logger.warning("Stage %s: %s is also written by another worker; not cutting it back "
                           "for adopted worker %s (a file per worker keeps outputs exact).",
                           self.stage, path, dead.id)
        return {k: v for k, v in recorded.items() if k not in others}

    def _hand_over_adopted(self) -> int:
        """Schedule here the pending requests of the dead workers taken over, journal them,
        then record them handed over in the dead worker's sub-stage and complete it."""
        cp, shared = self.cp, self.shared
        assert cp is not None
        assert shared is not None
        scheduled = 0
        while self._adopting:
            worker, other, cut = self._adopting.pop(0)
            live = other.live
            self._inflight_at_crash |= live.started & live.pending.keys()
            self._elsewhere = DoneSet()  # it may hold units the dead worker had claimed
            inbox = shared.inbox(worker.id)
            scheduled += self._schedule_payloads(
                [*live.pending.values(), *(payload for _, payload in inbox)])
            try:
                cp.save()  # their claims are ours now: journal them before the dead one lets go
                shared.trim_inbox(len(inbox), worker.id)
                other.start()
                for code in list(live.pending):
                    other.finish_unit(code, processed=1, skipped=1)
                other.set_metadata(adopted_by=shared.worker)
                other.complete()
            finally:
                other.close()
            logger.info("Stage %s: adopted worker %s (%s, pid %d on %s): its pending requests "
                        "are scheduled here.", self.stage, worker.id, worker.status, worker.pid,
                        worker.host)
            shared.record_adoption(worker, outputs_cut=cut)
            self.stats.inc_value("checkpoint/workers_adopted")
        if scheduled:
            shared.beat("running")
        return scheduled

    def _schedule_payloads(self, payloads: list[Any]) -> int:
        """Rebuild journaled requests and hand them to the engine; returns how many."""
        engine, spider = self.crawler.engine, self.crawler.spider
        scheduled = 0
        for payload in payloads:
            try:
                request = payload_to_request(payload, spider)
            except Exception as exc:
                self.warn_once("resume", f"A journaled request could not be rebuilt ({exc}); "
                               f"it is skipped. Was a callback renamed?")
                self.stats.inc_value("checkpoint/unrestorable")
                continue
            if self.shared is not None:
                # Not a continuation of the unit it had in another worker; past the dupefilter,
                # which may have seen it here before it was given away or taken by a dead one.
                request.meta.pop(UNIT_META, None)
                request.dont_filter = True
                if self._paired:  # back to the shared queue
                    request.meta[REQUEUE_META] = True
            engine.crawl(request)
            scheduled += 1
        return scheduled

    def _drain_inbox(self) -> int:
        """Schedule the requests other workers gave this one, journal them, then trim them
        from the inbox (a crash in between schedules them twice: the dupefilter keeps one)."""
        shared, cp = self.shared, self.cp
        assert shared is not None
        assert cp is not None
        units = shared.inbox()
        if not units:
            return 0
        self._elsewhere.discard_many([code for code, _ in units])  # ours now
        scheduled = self._schedule_payloads([payload for _, payload in units])
        cp.save()
        shared.trim_inbox(len(units))
        self.stats.inc_value("checkpoint/received", scheduled)
        if shared.status != "running":
            shared.beat("running")
        return scheduled

    def _share_work(self) -> None:
        """Give idle workers part of this worker's pending requests that have not started."""
        now = monotonic()
        if now < self._next_share:
            return
        self._next_share = now + 1.0
        shared, cp = self.shared, self.cp
        assert shared is not None
        assert cp is not None
        pending, started = cp.live.pending, cp.live.started
        if len(pending) < 2 * GIVE_MIN:
            return
        idle = [w for w in shared.workers()
                if w.alive and w.status == "idle" and w.id != shared.worker]
        if not idle:
            return
        share = min(len(pending) // (len(idle) + 1), GIVE_MAX)
        spare = [code for code in pending if code in self._live and code not in started
                 and code not in self._continued and code not in self._unfiltered]
        given_total = 0
        for i, worker in enumerate(idle):
            chunk = spare[i * share:(i + 1) * share]
            if len(chunk) < GIVE_MIN:
                break
            given = shared.give(worker.id, [(code, pending[code]) for code in chunk])
            cp.hand_off(given)
            for code in given:
                self._live.discard(code)
                request = self._requests.pop(code, None)
                if request is not None:  # still queued here: dropped when it comes up
                    self._registered.discard(request)
                    self._not_ours.add(request)
            given_total += len(given)
        if given_total:
            cp.save()
            self.stats.inc_value("checkpoint/given", given_total)
            logger.debug("Stage %s: gave %d request(s) to %d idle worker(s).", self.stage,
                         given_total, len(idle))

    def spider_idle(self, spider: Spider) -> None:
        """Shared stages: adopt dead workers' work; stay while other workers are busy (their
        work comes here if they die); close when none is."""
        if not self.active or self.shared is None:
            return
        shared = self.shared
        try:
            if self._drain_inbox():
                raise DontCloseSpider
            self._take_over_dead()
            if self._hand_over_adopted():
                raise DontCloseSpider
            busy = shared.others_busy()
            if self._paired and not busy:
                # Every worker is idle, so the shared queue is empty: a payload still queued
                # and held by no live worker was lost with a worker; put it back.
                lost = shared.lost_queued()
                if lost is None:  # another worker is sweeping: look again later
                    raise DontCloseSpider
                if lost:
                    logger.info("Stage %s: %d request(s) popped by workers that died are put "
                                "back in the queue.", self.stage, len(lost))
                    self.stats.inc_value("checkpoint/requeued_lost", len(lost))
                    self._schedule_payloads(lost)
                    raise DontCloseSpider
        except CheckpointError as exc:
            self._stop(exc)
            return
        except DontCloseSpider:
            raise
        except Exception as exc:  # Redis away: do not close as finished while others may work
            logger.warning("Stage %s: cannot see the other workers (%s); staying open.",
                           self.stage, exc)
            raise DontCloseSpider from None
        if busy:
            if shared.status != "idle":
                try:
                    shared.beat("idle")
                except Exception as exc:
                    logger.warning("Stage %s: heartbeat not written (%s)", self.stage, exc)
            if monotonic() - self._waiting_logged > 60:
                self._waiting_logged = monotonic()
                logger.info("Stage %s: worker %s has nothing to do; staying while %s work, to "
                            "adopt their requests if they stop.", self.stage, shared.worker,
                            ", ".join(w.id for w in busy))
            raise DontCloseSpider

    # -- outputs -------------------------------------------------------------------------------

    def _cut_outputs(self, recorded: dict[str, list[int]]) -> None:
        """Cut every output this stage wrote back to its committed length: the bytes after
        it belong to requests that run again (even if this run never reopens the file)."""
        for key, (_, length) in recorded.items():
            size = os.path.getsize(key) if os.path.exists(key) else 0
            if size > length:
                with open(key, "r+b") as f:
                    f.seek(length)
                    lines = f.read().count(b"\n")
                    f.truncate(length)
                logger.info("Output %s: removing %d line(s) written after the last commit; "
                            "their requests run again.", key, lines)
                self.stats.inc_value("checkpoint/output_lines_rolled_back", lines)
            elif size < length:
                logger.error("Output %s is %d bytes but %d were committed: items of finished "
                             "requests are missing (was the disk lost?). Writing on from its end.",
                             key, size, length)

    def open_output(self, path: str, *, overwrite: bool, has_header: bool) -> DurableOutput:
        """A durable output at ``path``, at its committed length (see :meth:`_cut_outputs`)."""
        assert self.cp is not None
        key = os.path.abspath(path)
        if key in self.outputs and not self.outputs[key].closed:
            return self.outputs[key]
        size = os.path.getsize(key) if os.path.exists(key) else 0
        recorded = self.cp.live.outputs.get(key)
        if self.shared is not None and recorded is None:
            overwrite = self._shared_output(key, overwrite)
        if recorded is None:  # first time this stage writes the file
            base = 0 if overwrite else size
            length = base
            self.cp.record_output(key, base, length)
        else:
            base, length = recorded
            length = min(length, size)
        output = DurableOutput(key, self.router, length=length, header=has_header,
                               drop_header=has_header and length > base)
        self.outputs[key] = output
        self._recorded_lengths[key] = length
        return output

    def _shared_output(self, key: str, overwrite: bool) -> bool:
        """A shared stage's output: refuse a file a live worker on this host writes; append to,
        never overwrite, one an earlier worker of the stage wrote. Returns ``overwrite``."""
        shared = self.shared
        assert shared is not None
        host = Owner.current().host
        for worker in shared.workers():
            if worker.id == shared.worker or key not in worker.outputs or worker.host != host:
                continue
            if worker.alive:
                error = ConfigError(
                    f"Worker {worker.id} (pid {worker.pid}) of stage {self.stage} writes {key} "
                    f"too: give every worker on a host its own output file (-o items-1.jl).")
                if self.crawler.crawling and getattr(self.crawler, "_engine", None) is not None:
                    self._stop(error)  # a feed opened with the spider: stop the crawl
                else:
                    raise error  # CHECKPOINT_OUTPUT, opened with the extension: fail at start
            elif overwrite:
                self.warn_once(f"append:{key}", f"{key} holds items of worker {worker.id} of "
                               f"stage {self.stage}: appending to it instead of overwriting.")
                overwrite = False
        shared.outputs.append(key)
        shared.beat()
        return overwrite

    def _before_commit(self) -> dict[str, Any] | None:
        """Fields added to every journal group: output lengths, skips, the known frontier."""
        assert self.cp is not None
        fields: dict[str, Any] = {}
        lengths = self._output_lengths()
        if lengths:
            fields["fo"] = lengths
        live = self.cp.live
        total = len(live.done) + len(live.pending)
        if total != live.info.progress.total_items:
            fields["t"] = total
        return fields or None

    def _output_lengths(self) -> dict[str, Any]:
        changed = {}
        assert self.cp is not None
        for key, output in self.outputs.items():
            length = output.committed_length()
            if length != self._recorded_lengths.get(key):
                self._recorded_lengths[key] = length
                changed[key] = [self.cp.live.outputs.get(key, [length, length])[0], length]
        return changed

    def unit_of(self, response: Any) -> int | None:
        """The unit whose output ``response``'s items are (None: not a unit of this run).
        Writers set ``self.router.current`` to it around the write."""
        request = getattr(response, "request", None)
        unit = request.meta.get(UNIT_META) if request is not None else None
        return unit if unit in self._live else None

    @property
    def skipping_completed(self) -> bool:
        """True when this run does nothing because the stage is completed."""
        return self._skip_completed

    def _output_fds(self) -> list[int]:
        return [fd for output in self.outputs.values() if (fd := output.fileno()) is not None]

    def warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message)

    # -- signals -------------------------------------------------------------------------------

    def spider_opened(self, spider: Spider) -> None:
        if self._skip_completed:
            raise CloseSpider("checkpoint_completed")
        if not self.active:
            return
        cp = self.cp
        assert cp is not None
        engine = self.crawler.engine
        hook_request_lifecycle(engine, self._request_started, self._request_finished)
        live = cp.live
        resumed = self._schedule_payloads(list(live.pending.values()))
        if self.shared is not None:
            resumed += self._hand_over_adopted()
        if resumed or len(live.done):
            logger.info("Stage %s: %d request(s) scheduled again (%d were in flight at the "
                        "interruption), %d done request(s) will not be fetched again.",
                        self.stage, resumed, len(self._inflight_at_crash), len(live.done))
        self.stats.set_value("checkpoint/resumed", resumed)
        self.stats.set_value("checkpoint/recovered_inflight", len(self._inflight_at_crash))
        tick = LoopingCall(self._tick)
        tick.start(min(0.5, cp.config.save_interval), now=False)
        self._loops.append(tick)
        if self.config.log_interval:
            progress = LoopingCall(self.log_progress)
            progress.start(self.config.log_interval, now=False)
            self._loops.append(progress)

    def request_scheduled(self, request: Request, spider: Spider) -> None:
        if not self.active:
            return
        meta = request.meta
        if meta.get(IGNORE_META):
            meta.pop(UNIT_META, None)  # a copied unit key must not make it count as its parent
            return
        cp = self.cp
        assert cp is not None
        self._just_registered = None
        code = key_code(self.crawler.request_fingerprinter.fingerprint(request))
        if code in cp.live.done:
            if code not in self._done_here:
                self._skipped += 1
                self.stats.inc_value("checkpoint/skipped")
                raise IgnoreRequest(f"done by an earlier run of checkpoint stage {self.stage}")
            if self._paired:  # scrapy-redis's dupefilter never saw a dont_filter request
                raise IgnoreRequest("duplicate of a request done in this run")
            self._drop_duplicate(request, code)
            return
        if self._paired:
            self._queue_request(request, code, spider)
            return
        if code in self._live:
            if meta.get(UNIT_META) == code and request.dont_filter:
                # A retry (or the same unit continued): it finishes the unit, not the original,
                # and its own outcome is the unit's.
                self._continued[code] = self._continued.get(code, 0) + 1
                self._failures.discard(code)
                self._ignored.discard(code)
                self._registered.add(request)
                return
            self._drop_duplicate(request, code)
            return
        if self.shared is not None and not self._claimed(code):
            self.stats.inc_value("checkpoint/claimed_elsewhere")
            raise IgnoreRequest(f"another worker of checkpoint stage {self.stage} owns it")
        meta[UNIT_META] = code
        self._live.add(code)
        self._registered.add(request)
        if self.shared is not None:
            self._requests[code] = request
        self._just_registered = request
        if request.dont_filter:
            self._unfiltered.add(code)
        if code not in cp.live.pending:
            payload = self._payload(request, spider)
            if payload is not None:
                cp.add_unit(code, payload)

    def _payload(self, request: Request, spider: Spider, *,
                 then: str = "it is crawled but kept in memory only, so a crash before it "
                             "finishes loses it") -> dict[str, Any] | None:
        """The request as a journal payload, or None (one warning per kind, and a stat) when it
        cannot be one; ``then`` says what becomes of it."""
        try:
            return request_to_payload(request, spider)
        except UnserializableRequest as exc:
            self.warn_once(f"unserializable:{exc.kind}",
                           f"A request cannot be journaled ({exc}); {then}.")
            self.stats.inc_value("checkpoint/unserializable")
            return None

    def _queue_request(self, request: Request, code: int, spider: Spider) -> None:
        """scrapy-redis pairing: the request goes to the shared queue, its payload kept in
        Redis until the worker that pops it has journaled it. A retry of a unit this worker
        has puts the unit back in the queue: whoever pops the retry finishes it."""
        meta = request.meta
        requeue = bool(meta.pop(REQUEUE_META, False))
        continuation = code in self._live and meta.get(UNIT_META) == code and request.dont_filter
        if code in self._live and not continuation:
            raise IgnoreRequest("duplicate of a request in flight in this worker")
        shared, cp = self.shared, self.cp
        assert shared is not None
        assert cp is not None
        payload = self._payload(request, spider, then="it goes to the shared queue untracked, "
                                "so a crash of the worker that pops it loses it")
        if payload is None:
            meta.pop(UNIT_META, None)
            return
        try:
            queued = shared.queue(code, payload, requeue=requeue or continuation)
        except Exception as exc:  # Redis away: let it go (at worst crawled twice, never lost)
            self.warn_once("claim", f"Stage {self.stage}: cannot claim requests in Redis ({exc}); "
                           f"queuing them untracked.")
            queued = True
        if not queued:
            self.stats.inc_value("checkpoint/claimed_elsewhere")
            raise IgnoreRequest(f"done, queued or in flight in checkpoint stage {self.stage}")
        meta[UNIT_META] = code
        if continuation:
            cp.hand_off([code])
            self._live.discard(code)
            self._failures.discard(code)
            self._ignored.discard(code)

    def _take(self, request: Request, code: int) -> None:
        """scrapy-redis pairing: a request popped from the shared queue starts downloading
        here: take its unit and journal it, or drop it if it is done or another worker's."""
        shared, cp = self.shared, self.cp
        assert shared is not None
        assert cp is not None
        if code in self._live:  # a second copy of a unit in flight here
            self._not_ours.add(request)
            return
        try:
            ours = code not in cp.live.done and shared.take(code)
        except Exception as exc:
            self.warn_once("claim", f"Stage {self.stage}: cannot claim requests in Redis ({exc}); "
                           f"crawling them untracked.")
            return
        if not ours:
            self._not_ours.add(request)
            return
        self._live.add(code)
        self._registered.add(request)
        if shared.status != "running":
            with contextlib.suppress(Exception):  # the heartbeat thread writes it later
                shared.beat("running")
        payload = self._payload(request, self.crawler.spider)
        if payload is not None:
            cp.add_unit(code, payload)
        cp.start_unit(code)

    def should_drop(self, request: Request) -> bool:
        """A queued request this worker must not download: its unit was given to another
        worker, or (with scrapy-redis) is done or in flight elsewhere."""
        return request in self._not_ours

    def _drop_duplicate(self, request: Request, code: int) -> None:
        """A unit is fetched once per stage. A plain duplicate is left to the dupefilter,
        which saw the unit in this run (cheaper than raising); a ``dont_filter`` copy, or
        one of a unit that bypassed the dupefilter, is dropped here."""
        if not request.dont_filter and code not in self._unfiltered:
            return
        self.stats.inc_value("checkpoint/duplicates_dropped")
        raise IgnoreRequest("duplicate of a request already scheduled or done in this run")

    def request_dropped(self, request: Request, spider: Spider) -> None:
        # Only a request registered just now can be refused by the scheduler as ours.
        if request is self._just_registered and self.cp is not None:
            self._just_registered = None
            code = request.meta[UNIT_META]
            self._live.discard(code)
            self._unfiltered.discard(code)
            self.cp.finish_unit(code, processed=1, skipped=1, last_item=request.url)

    def spider_error(self, failure: Any, response: Any, spider: Spider) -> None:
        self.note_failure(getattr(response, "request", None))

    def item_scraped(self, item: Any, response: Any, spider: Spider) -> None:
        if not self.active:
            return
        request = getattr(response, "request", None)
        if request is not None and request.meta.get(UNIT_META) in self._inflight_at_crash:
            self.stats.inc_value("checkpoint/items_replayed")
        if self._own_output is not None:
            line = self._encoder.encode(ItemAdapter(item).asdict()) + "\n"
            router = self.router
            previous, router.current = router.current, self.unit_of(response)
            try:
                self._own_output.write(line.encode())
            finally:
                router.current = previous

    def note_failure(self, request: Request | None) -> None:
        if (request is not None and request.meta.get(UNIT_META) in self._live
                and request in self._registered):
            self._failures.add(request.meta[UNIT_META])

    def note_ignored(self, request: Request) -> None:
        # Not a copy this worker drops (given away, or another worker's): only its own.
        if request.meta.get(UNIT_META) in self._live and request in self._registered:
            self._ignored.add(request.meta[UNIT_META])

    # -- the engine's request lifecycle -------------------------------------------------------

    def _request_started(self, request: Request) -> None:
        code = request.meta.get(UNIT_META)
        if self._paired and code is not None and request not in self._registered and self.active:
            self._take(request, code)
        elif code in self._live and self.cp is not None and request in self._registered:
            self.cp.start_unit(code)

    def _request_finished(self, request: Request) -> None:
        code = request.meta.get(UNIT_META)
        if code not in self._live or self.cp is None or request not in self._registered:
            return
        self._registered.discard(request)
        continued = self._continued.get(code)
        if continued:
            if continued == 1:
                del self._continued[code]
            else:
                self._continued[code] = continued - 1
            return
        self._live.discard(code)
        self._done_here.add_new(code)
        for output in self.outputs.values():
            output.release(code)
        try:
            if code in self._failures:
                self._failures.discard(code)
                self.cp.finish_unit(code, processed=1, failed=1, last_item=request.url)
                self.stats.inc_value("checkpoint/failed")
            elif code in self._ignored:
                self._ignored.discard(code)
                self.cp.finish_unit(code, processed=1, skipped=1, last_item=request.url)
            else:
                self.cp.finish_unit(code, processed=1, successful=1, last_item=request.url)
        except CheckpointError as exc:
            self._stop(exc)
            return
        self.stats.inc_value("checkpoint/done")

    def _stop(self, exc: Exception) -> None:
        """The checkpoint cannot record progress: stop the crawl (resumable) rather than
        crawl on with nothing recorded."""
        if self._stopping:
            return
        self._stopping = True
        logger.error("Stage %s: %s The crawl stops; run the same command again to resume.",
                     self.stage, exc)
        from scrapy.utils.defer import deferred_from_coro

        deferred_from_coro(self.crawler.engine.close_spider_async(reason="checkpoint_error"))

    # -- progress and close -----------------------------------------------------------------------

    def _tick(self) -> None:
        # A LoopingCall whose function raises stops for good: never let it.
        try:
            if self.cp is not None and self.active:
                self.cp.tick()
                if self.shared is not None and self.shared.adopted:
                    raise CheckpointError(f"Worker {self.shared.worker} was taken for dead and "
                                          f"adopted by another worker.")
                if self.shared is not None:
                    self._shared_tick()
        except CheckpointError as exc:
            self._stop(exc)
        except Exception:
            logger.exception("Stage %s: checkpoint timer failed", self.stage)

    def _shared_tick(self) -> None:
        shared = self.shared
        assert shared is not None
        try:
            if not self._paired:
                if shared.status == "idle":  # work is given only to idle workers
                    self._drain_inbox()
                self._share_work()
            elif shared.status == "idle":
                wake(self.crawler.engine)  # look at the shared queue now, not in 5 s
        except CheckpointError:
            raise
        except Exception as exc:  # Redis away: the journal buffers; say so now and then
            now = monotonic()
            if now - self._shared_warned > 30:
                self._shared_warned = now
                logger.warning("Stage %s: cannot reach the other workers through Redis (%s); "
                               "trying again.", self.stage, exc)

    def _record_skips(self) -> None:
        if self._skipped and self.cp is not None:
            self.cp.finish_unit(None, skipped=self._skipped)
            self._skipped = 0

    def log_progress(self) -> None:
        cp = self.cp
        if cp is None or not self.active:
            return
        live = cp.live
        self._record_skips()
        logger.info("[%s] %s | pending %d", self.stage, cp.progress_line(), len(live.pending))
        self._update_stats()

    def _update_stats(self) -> None:
        cp = self.cp
        assert cp is not None
        live = cp.live
        set_value = self.stats.set_value
        set_value("checkpoint/done_total", len(live.done))
        set_value("checkpoint/pending", len(live.pending))
        set_value("checkpoint/failed_total", live.failed)
        writer = cp._writer
        if writer is not None:
            set_value("checkpoint/journal_bytes", writer.size)
        for name, micros in (cp.commit_latency_us() or {}).items():
            set_value(f"checkpoint/commit_latency_{name}_us", micros)

    def spider_closed(self, spider: Spider, reason: str) -> None:
        for loop in self._loops:
            if loop.running:
                loop.stop()
        self._loops.clear()
        cp = self.cp
        if cp is None:
            return
        try:
            if self.active:
                self._finish(cp, reason)
        finally:
            self.active = False
            if self._own_output is not None:
                self._own_output.close()
            cp.close()
            closer = getattr(cp.store, "close", None)
            if closer is not None:
                closer()

    def _finish(self, cp: EnhancedCheckpoint, reason: str) -> None:
        live = cp.live
        self._record_skips()
        cp.set_total(len(live.done) + len(live.pending))
        self._update_stats()
        shared = self.shared
        if shared is not None and reason == "finished":
            # No more work may be given to this worker; any given before is adopted with it.
            try:
                shared.beat("leaving")
                leftover = len(shared.inbox())
            except Exception as exc:
                logger.warning("Stage %s: cannot check this worker's inbox (%s).", self.stage, exc)
                leftover = 1
            if leftover or live.pending:
                logger.info("Stage %s: worker %s leaves %d request(s) to the other workers.",
                            self.stage, shared.worker, leftover + len(live.pending))
                reason = "handed_over"
        if reason == "finished":
            if live.pending:
                logger.warning("Stage %s finished with %d journaled request(s) never done; "
                               "they are dropped.", self.stage, len(live.pending))
            cp.complete()
        elif reason in _FAILED_REASONS:
            cp.fail(f"crawl closed with reason {reason!r}")
        else:
            cp.pause()
            if shared is None:
                logger.info("Stage %s paused (%s): run the same command again to resume; "
                            "%d request(s) pending.", self.stage, reason, len(live.pending))
            else:
                logger.info("Stage %s: worker %s stopped (%s) with %d request(s) pending; "
                            "another worker adopts them, or the next one started.",
                            self.stage, shared.worker, reason, len(live.pending))
        if shared is not None:
            shared.leave("finished" if reason == "finished" else "paused")
