"""One worker of a shared stage (``CHECKPOINT_SHARED``): several crawls, one stage in Redis
or PostgreSQL.

Each worker journals its own sub-stage. It claims a unit before scheduling it,
so a request is fetched by one worker; gives part of its unstarted frontier to
idle workers (through their inbox); adopts the sub-stage of a worker that died
(its pending requests are scheduled here, its outputs cut back on this host);
and stays open while other workers are busy, since their work comes here if
they die. The store-level pieces live in :mod:`scrapy_checkpoint.shared`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from scrapy.exceptions import DontCloseSpider

from ..checkpoint import EnhancedCheckpoint
from ..clock import monotonic
from ..errors import CheckpointError, CheckpointLockedError, ConfigError
from ..journal.doneset import DoneSet
from ..shared import OVER, SharedStage, Worker, open_shared, sub_stage_name
from ..state import Owner, pid_alive
from ..stores.base import Store
from ..view import read_stage
from .engine_hooks import crawl_started, wake
from .outputs import cut_to_committed
from .scrapy_redis import ScrapyRedisPairing, reset_scrapy_redis, uses_scrapy_redis

if TYPE_CHECKING:
    from .frontier import Frontier
    from .outputs import OutputSet
    from .settings import CheckpointSettings

logger = logging.getLogger("scrapy_checkpoint")

#: Work given to an idle worker of a shared stage: at least GIVE_MIN units, at most GIVE_MAX.
GIVE_MIN, GIVE_MAX = 4, 500


class SharedWorker:
    """This crawl as one worker of the shared stage ``stage`` (see the module docstring).

    Made by :meth:`join` before the worker's checkpoint opens; :meth:`attach` gives it the
    open checkpoint, frontier and outputs.
    """

    def __init__(self, crawler: Any, stage: str, shared: SharedStage, *, paired: bool) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.stage = stage
        self.shared = shared
        #: scrapy-redis's scheduler is used: requests go through its shared queue.
        self.paired = paired
        self.cp: EnhancedCheckpoint | None = None
        self.frontier: Frontier | None = None
        self.outputs: OutputSet | None = None
        # Units other workers own (a cache; cleared when a worker is adopted).
        self._elsewhere = DoneSet(timed=False)
        # Dead workers being adopted: their view, their open sub-stage, outputs cut here.
        self._adopting: list[tuple[Worker, EnhancedCheckpoint, bool]] = []
        self._waiting_logged = 0.0
        self._shared_warned = 0.0
        self._next_share = 0.0

    # -- joining -------------------------------------------------------------------------------

    @classmethod
    def join(cls, crawler: Any, config: CheckpointSettings, store: Store,
             stage: str) -> SharedWorker | None:
        """This worker's view of the shared stage, holding the stage's joining lock (release
        it with :meth:`release_joining`). Resets the stage with CHECKPOINT_RESET, or when it is
        completed and CHECKPOINT_ON_COMPLETE is 'restart'; returns None
        when it is completed and CHECKPOINT_ON_COMPLETE is 'skip' (the default).

        Raises ConfigError for settings a shared stage cannot run with.
        """
        shared = open_shared(store, stage)  # ConfigError for a store that cannot share
        if config.retry_failed:
            raise ConfigError("CHECKPOINT_RETRY_FAILED is not available with CHECKPOINT_SHARED: "
                              "failed requests stay with the worker that failed them.")
        if config.on_complete == "incremental":
            raise ConfigError("CHECKPOINT_ON_COMPLETE = 'incremental' is not available with "
                              "CHECKPOINT_SHARED: use 'skip' (the default) or 'restart' on every "
                              "worker.")
        paired = uses_scrapy_redis(crawler.settings.get("SCHEDULER"))
        if paired and not crawler.settings.getbool("SCHEDULER_PERSIST"):
            raise ConfigError("CHECKPOINT_SHARED with scrapy-redis's scheduler needs "
                              "SCHEDULER_PERSIST = True: without it the first worker to close "
                              "empties the queue the others still work from.")
        shared.hold_joining()  # until this worker has joined: no other resets the stage under it
        try:
            if config.reset:
                if shared.any_alive():
                    raise ConfigError(f"CHECKPOINT_RESET: other workers of stage {stage} are "
                                      f"running; stop them first, then start every worker again.")
                removed = shared.reset()
                if paired:
                    reset_scrapy_redis(crawler, stage)
                logger.info("Stage %s: reset (CHECKPOINT_RESET), %d worker sub-stage(s) removed.",
                            stage, len(removed))
            elif (lost := shared.lost()) is not None:
                raise CheckpointError(lost)
            elif shared.completed():
                if config.on_complete == "skip":
                    logger.info(config.completed_message(stage))
                    # Outputs of a worker adopted by another host: only here can they be cut.
                    for dead in shared.workers():
                        if _cut_here(dead):
                            _cut_outputs_of(shared, stage, store, dead,
                                            partial(_cut_files, stats=crawler.stats))
                    shared.release_joining()
                    return None
                removed = shared.reset()
                if paired:
                    reset_scrapy_redis(crawler, stage)
                logger.info("Stage %s was completed by %d worker(s); starting it over "
                            "(CHECKPOINT_ON_COMPLETE = 'restart').", stage, len(removed))
            shared.track_in_journal()
        except BaseException:
            shared.release_joining()
            raise
        logger.info("Stage %s: worker %s joins (sub-stage %s).", stage, shared.worker,
                    shared.sub_stage)
        return cls(crawler, stage, shared, paired=paired)

    @property
    def sub_stage(self) -> str:
        """This worker's own stage, where its checkpoint lives."""
        return self.shared.sub_stage

    def release_joining(self) -> None:
        """Joined, or failed to: let the next worker in."""
        self.shared.release_joining()

    def attach(self, cp: EnhancedCheckpoint, frontier: Frontier, outputs: OutputSet) -> None:
        """Start working the stage with this worker's open checkpoint: announce the worker,
        then take over dead workers (before this run's outputs open: theirs are cut first)."""
        self.cp, self.frontier, self.outputs = cp, frontier, outputs
        frontier.shared = self
        if self.paired:
            frontier.pairing = ScrapyRedisPairing(frontier, self.shared)
        token = getattr(cp.store, "token", lambda _: None)(cp.stage)
        assert token is not None
        live = cp.live
        self.shared.join(token, lambda: {"done": len(live.done), "pending": len(live.pending)})
        self.take_over_dead()

    # -- claims --------------------------------------------------------------------------------

    def claimed(self, code: int) -> bool:
        """Claim the unit for this worker; False if another worker owns it."""
        if code in self._elsewhere:
            return False
        try:
            if self.shared.claim(code):
                return True
        except Exception as exc:  # server away: crawl it (at worst twice), never lose it
            assert self.frontier is not None
            self.frontier.warn_once("claim", f"Stage {self.stage}: cannot claim requests in "
                                    f"{self.shared.server} ({exc}); crawling them here, another "
                                    f"worker may crawl some too.")
            return True
        self._elsewhere.add_new(code)
        return False

    # -- adopting dead workers -------------------------------------------------------------

    def take_over_dead(self) -> None:
        """Take the sub-stage of every dead worker not yet adopted (the one that gets its lock
        adopts it) and cut its outputs back to their committed length when they are on this
        host. Its requests are scheduled here by :meth:`hand_over_adopted`."""
        shared, cp, outputs = self.shared, self.cp, self.outputs
        assert cp is not None
        assert outputs is not None
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
                if _cut_here(worker):
                    _cut_outputs_of(shared, self.stage, cp.store, worker,
                                    lambda files: outputs.cut(files, configured_only=False))
                continue
            if not on_this_host:
                shared.release_dead(worker)  # a lock that outlives the lease (PostgreSQL)
            other = EnhancedCheckpoint(stage=sub_stage_name(self.stage, worker.id),
                                       config=cp.config, store=cp.store, units="requests")
            try:
                other.open()
            except CheckpointLockedError:
                continue  # alive after all, or another worker is adopting it
            except CheckpointError as exc:
                logger.error("Stage %s: cannot adopt worker %s: %s", self.stage, worker.id, exc)
                continue
            if on_this_host:
                outputs.cut(_only_theirs(shared, self.stage, worker, other.live.outputs),
                            configured_only=False)  # the dead worker's own files
            self._adopting.append((worker, other, on_this_host))

    def hand_over_adopted(self) -> int:
        """Schedule here the pending requests of the dead workers taken over, journal them,
        then record them handed over in the dead worker's sub-stage and complete it.
        Returns how many requests were scheduled."""
        cp, shared, frontier = self.cp, self.shared, self.frontier
        assert cp is not None
        assert frontier is not None
        scheduled = 0
        while self._adopting:
            worker, other, cut = self._adopting.pop(0)
            live = other.live
            frontier.inflight_at_crash |= {c for c in live.started if c in live.pending}
            self._elsewhere = DoneSet(timed=False)  # it may hold units the dead worker had claimed
            inbox = shared.inbox(worker.id)
            scheduled += frontier.schedule(
                [*live.pending.values(), *(payload for _, payload in inbox)], foreign=True)
            handed = len(live.pending) + len(inbox)
            # Its sub-stage's own lines ("Detected incomplete checkpoint", "Completed 100%")
            # would read as a crash resumed and finished there: the line below says what is.
            with _quiet(other.stage):
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
            logger.info("Stage %s: adopted worker %s (%s, pid %d on %s): its %d pending "
                        "request(s) are scheduled here; its sub-stage %s (%d done there) is "
                        "closed as handed over.", self.stage, worker.id, worker.status,
                        worker.pid, worker.host, handed, other.stage, len(live.done))
            shared.record_adoption(worker, outputs_cut=cut)
            self.stats.inc_value("checkpoint/workers_adopted")
        if scheduled:
            shared.beat("running")
        return scheduled

    # -- giving and receiving work ---------------------------------------------------------

    def drain_inbox(self) -> int:
        """Schedule the requests other workers gave this one, journal them, then trim them
        from the inbox (a crash in between schedules them twice: the dupefilter keeps one)."""
        shared, cp, frontier = self.shared, self.cp, self.frontier
        assert cp is not None
        assert frontier is not None
        units = shared.inbox()
        if not units:
            return 0
        self._elsewhere.discard_many([code for code, _ in units])  # ours now
        scheduled = frontier.schedule([payload for _, payload in units], foreign=True)
        cp.save()
        if shared.status != "running":  # before the inbox empties: never seen idle with work
            shared.beat("running")
        shared.trim_inbox(len(units))
        self.stats.inc_value("checkpoint/received", scheduled)
        return scheduled

    def share_work(self) -> None:
        """Give idle workers part of this worker's pending requests that have not started."""
        now = monotonic()
        if now < self._next_share:
            return
        self._next_share = now + 1.0
        shared, cp, frontier = self.shared, self.cp, self.frontier
        assert cp is not None
        assert frontier is not None
        pending = cp.live.pending
        if len(pending) < 2 * GIVE_MIN:
            return
        idle = [w for w in shared.workers()
                if w.alive and w.status == "idle" and w.id != shared.worker]
        if not idle:
            return
        share = min(len(pending) // (len(idle) + 1), GIVE_MAX)
        spare = frontier.spare()
        given_total = 0
        for i, worker in enumerate(idle):
            chunk = spare[i * share:(i + 1) * share]
            if len(chunk) < GIVE_MIN:
                break
            given = shared.give(worker.id, [(code, pending[code]) for code in chunk])
            cp.hand_off(given)
            for code in given:
                frontier.let_go(code)
            given_total += len(given)
        if given_total:
            cp.save()
            self.stats.inc_value("checkpoint/given", given_total)
            logger.debug("Stage %s: gave %d request(s) to %d idle worker(s).", self.stage,
                         given_total, len(idle))

    # -- timer, idle, outputs, close ---------------------------------------------------------

    def tick(self) -> None:
        """Timer work. Raises CheckpointError when this worker was adopted by another."""
        shared = self.shared
        if shared.adopted:
            raise CheckpointError(f"Worker {shared.worker} was taken for dead and adopted by "
                                  f"another worker.")
        try:
            if not self.paired:
                if shared.status == "idle":  # work is given only to idle workers
                    self.drain_inbox()
                self.share_work()
            elif shared.status == "idle":
                wake(self.crawler.engine)  # look at the shared queue now, not in 5 s
        except CheckpointError:
            raise
        except Exception as exc:  # server away: the journal buffers; say so now and then
            now = monotonic()
            if now - self._shared_warned > 30:
                self._shared_warned = now
                logger.warning("Stage %s: cannot reach the other workers through %s (%s); "
                               "trying again.", self.stage, shared.server, exc)

    def idle(self) -> None:
        """``spider_idle``: adopt dead workers' work; stay (``DontCloseSpider``) while other
        workers are busy (their work comes here if they die); return when none is.
        Raises CheckpointError when the checkpoint cannot record progress."""
        shared, frontier = self.shared, self.frontier
        assert frontier is not None
        try:
            if self.drain_inbox():
                raise DontCloseSpider
            self.take_over_dead()
            if self.hand_over_adopted():
                raise DontCloseSpider
            busy = shared.others_busy()
            if self.paired and not busy:
                # Every worker is idle, so the shared queue is empty: a payload still queued
                # and held by no live worker was lost with a worker; put it back.
                lost = shared.lost_queued()
                if lost is None:  # another worker is sweeping: look again later
                    raise DontCloseSpider
                if lost:
                    logger.info("Stage %s: %d request(s) popped by workers that died are put "
                                "back in the queue.", self.stage, len(lost))
                    self.stats.inc_value("checkpoint/requeued_lost", len(lost))
                    frontier.schedule(lost, foreign=True)
                    raise DontCloseSpider
        except (CheckpointError, DontCloseSpider):
            raise
        except Exception as exc:  # server away: do not close as finished while others may work
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

    def claim_file(self, key: str, overwrite: bool, *, stop: Any) -> bool:
        """A shared stage's output: refuse a file a live worker on this host writes; append to,
        never overwrite, one an earlier worker of the stage wrote. Returns ``overwrite``.
        ``stop(exc)`` stops a running crawl; before it runs, ConfigError is raised."""
        shared = self.shared
        host = Owner.current().host
        for worker in shared.workers():
            if worker.id == shared.worker or key not in worker.outputs or worker.host != host:
                continue
            if worker.alive:
                error = ConfigError(
                    f"Worker {worker.id} (pid {worker.pid}) of stage {self.stage} writes {key} "
                    f"too: give every worker on a host its own output file (-o items-1.jl).")
                if crawl_started(self.crawler):
                    stop(error)  # a feed opened with the spider: stop the crawl
                else:
                    raise error  # CHECKPOINT_OUTPUT, opened with the extension: fail at start
            elif overwrite:
                assert self.frontier is not None
                self.frontier.warn_once(
                    f"append:{key}", f"{key} holds items of worker {worker.id} of stage "
                    f"{self.stage}: appending to it instead of overwriting.")
                overwrite = False
        shared.outputs.append(key)
        shared.beat()
        return overwrite

    def finish(self, reason: str, pending: int) -> str:
        """The crawl closes with ``reason`` and ``pending`` requests left here: the reason the
        sub-stage closes with (``handed_over`` when others take the rest over)."""
        shared = self.shared
        if reason != "finished":
            return reason
        # No more work may be given to this worker; any given before is adopted with it.
        try:
            shared.beat("leaving")
            leftover = len(shared.inbox())
        except Exception as exc:
            logger.warning("Stage %s: cannot check this worker's inbox (%s).", self.stage, exc)
            leftover = 1
        if leftover or pending:
            logger.info("Stage %s: worker %s leaves %d request(s) to the other workers.",
                        self.stage, shared.worker, leftover + pending)
            return "handed_over"
        return reason

    def leave(self, finished: bool) -> None:
        """This worker leaves the stage, finished or paused."""
        self.shared.leave("finished" if finished else "paused")


def _cut_here(worker: Worker) -> bool:
    """Whether ``worker`` died on this host and was adopted with its outputs not cut."""
    return (worker.status == "adopted" and not worker.outputs_cut
            and worker.host == Owner.current().host)


def _cut_files(files: dict[str, list[Any]], stats: Any) -> None:
    for key in list(files):
        cut_to_committed(files, key, stats)


def _cut_outputs_of(shared: SharedStage, stage: str, store: Store, worker: Worker,
                    cut: Callable[[dict[str, list[Any]]], object]) -> None:
    """Cut the outputs of ``worker``, which died on this host and was adopted elsewhere, back
    to their committed length with ``cut`` (given its files, path -> journal entry), and
    record them cut."""
    try:
        view = read_stage(store, sub_stage_name(stage, worker.id))
    except Exception as exc:
        logger.warning("Stage %s: cannot read worker %s to cut its outputs (%s)",
                       stage, worker.id, exc)
        return
    cut(_only_theirs(shared, stage, worker, view.outputs))
    shared.record_outputs_cut(worker)


def _only_theirs(shared: SharedStage, stage: str, dead: Worker,
                 recorded: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """The outputs of a dead worker that no other worker of the stage writes: a file
    another worker also wrote (two workers were given one file) is never cut."""
    # Files another worker on that host wrote while the dead one lived (two workers given
    # one file), not those of workers before it (a supervisor reusing the path).
    others = {path for w in shared.workers()
              if w.id != dead.id and w.host == dead.host
              and (w.alive or w.heartbeat >= dead.started_at) for path in w.outputs}
    shared_files = sorted(set(recorded) & others)
    for path in shared_files:
        logger.warning("Stage %s: %s is also written by another worker; not cutting it back "
                       "for adopted worker %s (a file per worker keeps outputs exact).",
                       stage, path, dead.id)
    return {k: v for k, v in recorded.items() if k not in others}


@contextlib.contextmanager
def _quiet(stage: str | None) -> Iterator[None]:
    """Leave out the checkpoint's log lines about ``stage`` (their first argument) meanwhile."""
    def other_stages(record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and args[0] == stage)

    logger.addFilter(other_stages)
    try:
        yield
    finally:
        logger.removeFilter(other_stages)
