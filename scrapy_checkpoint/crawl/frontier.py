"""The crawl's requests as units of the checkpoint: which are tracked, and when each is done.

A request is a unit keyed by the code of its fingerprint, or for a ``dont_filter``
request, of its fingerprint and its place among what its parent yielded
(:mod:`.identity`). It is journaled as *added* when the scheduler is handed it
(``request_scheduled``), *started* when it begins downloading and *done* when the
engine has finished with it (callback or errback output processed, items through
the pipelines and released to the durable outputs). Requests whose unit is done
are dropped wherever they come from (``start()`` included), and at open the
added-but-not-done requests are scheduled again, each with its unit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from itertools import chain
from typing import TYPE_CHECKING, Any, Protocol
from weakref import WeakKeyDictionary, WeakSet, WeakValueDictionary

from scrapy import Request, Spider
from scrapy.exceptions import IgnoreRequest

from ..errors import CheckpointError
from ..journal.doneset import DoneSet
from ..journal.keys import fingerprint_code
from ..journal.pending import NO_REF
from .identity import HELD_META, HOLDER_META, IGNORE_META, UNIT_META, UnitIdentity
from .outputs import OutputSet
from .progress import CrawlProgress, unit_kind
from .requests import (
    NEEDS_ATTACHED,
    UnserializableRequest,
    callbacks_by_name,
    needs_of,
    payload_to_request,
    request_record,
    request_to_payload,
)
from .setup_requests import SETUP_META, SetupRequests

if TYPE_CHECKING:
    from ..checkpoint import EnhancedCheckpoint

logger = logging.getLogger("scrapy_checkpoint")

#: What becomes of a request that cannot be journaled (see Frontier.payload).
_UNJOURNALED = ("it is crawled but kept in memory only, so a crash before it finishes loses it "
                "(the loss is counted, and the stage then ends 'incomplete')")
#: The same, for a request a unit's callback yielded (see HeldUnits).
_HELD = ("it is crawled as a unit without its request: the request whose callback yielded "
         "it is done only once it is done, so a crash before then does that one again, which "
         "yields it again")

#: What Frontier.request_scheduled knows of a request no callback yielded.
_NOT_YIELDED: tuple[None, None] = (None, None)

#: scrapy-redis pairing: a request put back in the shared queue (adopted, lost, retried).
REQUEUE_META = "_checkpoint_requeue"
#: A unit's request sent again after the setup requests ran again (its session had expired).
AGAIN_META = "_checkpoint_again"

#: Reasons of lost units (``lost`` in the state, ``checkpoint/lost/<reason>`` in the stats):
#: a request that could not be journaled was pending at an interruption;
LOST_UNJOURNALED = "unjournaled"
#: a journaled request that cannot be rebuilt (CHECKPOINT_DROP_UNRESTORABLE, or adopted);
LOST_UNRESTORABLE = "unrestorable"
#: a journaled request still pending when the crawl finished.
LOST_NEVER_DONE = "never_done"


def resume_order(pending: dict[int, Any], inflight: set[int], *, lifo: bool) -> list[Any]:
    """The payloads of ``pending`` (unit -> payload, in the order the units were added) in
    the order to schedule them again, so the scheduler hands them out as the interrupted
    run would have: the units in flight at the interruption come out first (they were
    taken from the queue before every other pending one). Scheduled last into a LIFO queue
    (Scrapy's default), first into a FIFO one; the others keep the order they were added
    in, which is the order the interrupted run had queued them."""
    again = [payload for code, payload in pending.items() if code in inflight]
    rest = [payload for code, payload in pending.items() if code not in inflight]
    return rest + again if lifo else again + rest


def _needs_of_journaled(cp: EnhancedCheckpoint) -> set[tuple[str, str]]:
    """What the pending and failed units' payloads need (a stage journaled before what they
    need was recorded: read once, then recorded)."""
    live = cp.live
    needs: set[tuple[str, str]] = set()
    for code in chain(live.pending, live.failed_units):
        try:
            payload = live.pending.get(code) if code in live.pending else live.failed_payload(code)
        except (OSError, ValueError):
            continue  # unreadable: the resume counts it when it comes to it
        if isinstance(payload, dict):
            needs.update(needs_of(payload))
    return needs


class Holds:
    """``checkpoint_ignore`` requests that a unit's callback yielded hold that unit: it is done
    once they are finished (their items are its items), so a crash before then redoes them
    with it. So do the units of requests that cannot be journaled for their callback
    (:data:`~.identity.HELD_META`), until they are done. A few per unit whose callback runs;
    nothing once they are finished."""

    def __init__(self) -> None:
        #: Unit -> how many requests hold it (empty: nothing to release, the usual case).
        self.count: dict[int, int] = {}
        self._holder: WeakKeyDictionary[Request, int] = WeakKeyDictionary()
        #: Units whose own request is finished, waiting for the requests that hold them.
        self.waiting: dict[int, Request] = {}
        #: Units held for their callbacks -> the unit each holds.
        self._held_units: dict[int, int] = {}

    def hold(self, request: Request | int, unit: int) -> None:
        """``request`` (scheduled; or a unit's code) holds ``unit`` until :meth:`release`."""
        holders: Any = self._held_units if type(request) is int else self._holder
        if request not in holders:
            holders[request] = unit
            self.count[unit] = self.count.get(unit, 0) + 1

    def held(self, unit: int) -> bool:
        return unit in self.count

    def release(self, request: Request | int) -> int | None:
        """``request`` is finished or was dropped (a unit's code: it is done): the unit it
        held if that unit now waits for nothing (and is no longer waiting), else None."""
        holders: Any = self._held_units if type(request) is int else self._holder
        unit = holders.pop(request, None)
        if unit is None:
            return None
        left = self.count[unit] - 1
        if left:
            self.count[unit] = left
            return None
        del self.count[unit]
        return unit if self.waiting.get(unit) is not None else None


class Claims(Protocol):
    """Units owned by one worker of a shared stage (a :class:`~.shared_worker.SharedWorker`)."""

    def claimed(self, code: int) -> bool:
        """Claim unit ``code`` for this worker; False if another worker owns it."""
        ...


class SharedQueue(Protocol):
    """A queue all workers of a shared stage pop from (:class:`~.scrapy_redis.ScrapyRedisPairing`)."""

    def queue(self, request: Request, code: int, spider: Spider, *, continuation: bool) -> None:
        """Send a newly scheduled unit to the shared queue (``IgnoreRequest``: not this time);
        ``continuation``: the request continues unit ``code`` of this worker (a retry)."""
        ...

    def take(self, request: Request, code: int) -> None:
        """A popped request starts downloading here: take its unit, or mark it not ours."""
        ...


class WorkerUnits:
    """The part of :class:`Frontier` for units that move between the workers of a shared
    stage (given away, taken from the shared queue, another worker's). Uses the frontier's
    unit sets, declared here."""

    cp: EnhancedCheckpoint
    live: set[int]
    lazy: bool
    identity: UnitIdentity
    continued: dict[int, int]
    unfiltered: set[int]
    on_leave: Callable[[int], None] | None
    _failures: set[int]
    _ignored: set[int]
    _expired: set[int]
    _registered: WeakSet[Request]
    _requests: WeakValueDictionary[int, Request]
    _not_ours: WeakSet[Request]

    def own(self, request: Request, code: int) -> None:
        """Track ``request`` as unit ``code`` of this worker (the scrapy-redis pairing took it)."""
        self.live.add(code)
        self._registered.add(request)

    def not_ours(self, request: Request) -> None:
        """``request`` is queued here but another worker has its unit: drop it when it comes up."""
        self._not_ours.add(request)

    def let_go(self, code: int) -> None:
        """The unit left this worker (given away, or queued for any worker to take)."""
        self.live.discard(code)
        self.identity.forget(code)
        self._failures.discard(code)
        self._ignored.discard(code)
        self._expired.discard(code)
        if self.on_leave is not None:
            self.on_leave(code)
        request = self._requests.pop(code, None)
        if request is not None:  # still queued here: dropped when it comes up
            self._registered.discard(request)
            self._not_ours.add(request)

    def spare(self) -> list[int]:
        """Pending units of this worker that may be given away: scheduled here (or queued
        on disk), not started, not continued, not keyed by a fingerprint that bypassed the
        dupefilter here."""
        live = self.cp.live
        started = live.started
        pending = live.pending
        here = self.live
        return [code for code in pending if (code in here or self.lazy) and code not in started
                and code not in self.continued and code not in self.unfiltered
                and pending.has_payload(code)]


class ExpiredSessions:
    """The part of :class:`Frontier` for units whose request was redirected to the login page
    (the URL of a setup request, see :mod:`.setup_requests`). Uses the frontier's fields,
    declared here."""

    cp: EnhancedCheckpoint
    setup: SetupRequests | None
    pairing: SharedQueue | None
    shared: Claims | None
    continued: dict[int, int]
    _expired: set[int]

    def _session_expired(self, code: int, redirect: Request, spider: Spider) -> None:
        """Unit ``code``'s request is redirected to the login page (a setup request's URL): the
        redirect is dropped (the login page is not the unit's page). The unit's request is sent
        once more after the setup requests ran again, when it can be (see
        :meth:`SetupRequests.requeue`); else the unit is done as failed, for the next run."""
        assert self.setup is not None
        alone = self.pairing is None and self.shared is None
        if alone and self.setup.requeue(code, lambda: self._request_again(code, spider)):
            self.continued[code] = self.continued.get(code, 0) + 1  # the redirected one ends
            raise IgnoreRequest(f"redirected to the login page {redirect.url}: sent again "
                                f"after the setup requests")
        self._expired.add(code)
        raise IgnoreRequest(f"redirected to the login page {redirect.url} (the URL of a setup "
                            f"request): the session expired")

    def _request_again(self, code: int, spider: Spider) -> Request | None:
        """Unit ``code``'s request rebuilt from the journal, to send again (None: it cannot be)."""
        payload = self.cp.live.pending.get(code)
        if payload is None:
            return None
        try:
            request = payload_to_request(payload, spider)
        except Exception:
            return None
        request.meta[UNIT_META] = code
        request.meta[AGAIN_META] = True
        request.dont_filter = True
        return request


class RebuiltUnits:
    """The part of :class:`Frontier` that sends journaled units again: rebuilt from their
    request records all at once (:meth:`schedule`), or queued by code in the checkpoint
    scheduler and rebuilt at their turn (:meth:`queued`, :meth:`popped`). Uses the
    frontier's fields, declared here."""

    crawler: Any
    cp: EnhancedCheckpoint
    stats: Any
    live: set[int]
    identity: UnitIdentity
    inflight_at_crash: set[int]
    copies_from_queue: bool
    pairing: SharedQueue | None
    shared: Claims | None
    warn_once: Callable[[str, str], None]
    stop: Callable[[Exception], None]
    _admitted: Request | None
    _rescheduled: Request | None
    _registered: WeakSet[Request]
    _requests: WeakValueDictionary[int, Request]

    def schedule(self, payloads: Iterable[Any], *, foreign: bool = False) -> int:
        """Rebuild journaled requests and hand them to the engine; returns how many.

        ``foreign``: they come from another worker of a shared stage (adopted or given);
        those that cannot be sent (no payload, or not rebuilt) are counted as lost here.
        Own pending units that cannot be sent stay pending (the close counts them).
        """
        engine = self.crawler.engine
        scheduled = unjournaled = unrestorable = 0
        for payload in payloads:
            if payload is None:  # a request that could not be journaled
                unjournaled += foreign
                continue
            request = self._rebuilt(payload, None)
            if request is None:
                unrestorable += foreign
                continue
            if foreign:
                # Past the dupefilter, which may have seen it here before it was given away or
                # taken by a dead one.
                request.dont_filter = True
                if self.pairing is not None:  # back to the shared queue
                    request.meta[REQUEUE_META] = True
            self._rescheduled = request
            try:
                engine.crawl(request)
            finally:
                self._rescheduled = None
            scheduled += 1
        if unjournaled:
            self.cp.record_lost(LOST_UNJOURNALED, unjournaled)
        if unrestorable:
            self.cp.record_lost(LOST_UNRESTORABLE, unrestorable)
        return scheduled

    def _rebuilt(self, payload: Any, code: int | None) -> Request | None:
        """The request of a journaled ``payload`` as unit ``code`` (None: the unit its
        payload names), ready to send again; None (a warning, a stat) if it cannot be
        rebuilt."""
        try:
            request = payload_to_request(payload, self.crawler.spider)
        except Exception as exc:
            self.warn_once("resume", f"A journaled request could not be rebuilt ({exc}); "
                           f"it is skipped.")
            self.stats.inc_value("checkpoint/unrestorable")
            return None
        self.stats.inc_value("checkpoint/rebuilt")
        meta = request.meta
        # Its unit, whatever dont_filter becomes: never a continuation of one here.
        if code is None:
            code = self.identity.journaled_code(request)
        meta[UNIT_META] = code
        if code in self.inflight_at_crash:
            # Taken from the queue before the crash: it comes out first again. A start
            # request would wait in Scrapy's start queue behind every other request.
            meta.pop("is_start_request", None)
        if self.copies_from_queue:  # scrapy-redis's dupefilter saw it in an earlier run
            request.dont_filter = True
        return request

    def queued(self, request: Request) -> int | None:
        """The unit ``request`` carries if it is the journaled unit just registered: it is
        queued by code now (no longer in :attr:`live` until :meth:`popped`); else None."""
        if request is not self._admitted:
            return None
        self._admitted = None
        code: int = request.meta[UNIT_META]
        self.live.discard(code)
        return code

    def popped(self, code: int, request: Request | None) -> Request | None:
        """Unit ``code`` comes out of the queue: its request (``request``, or rebuilt from
        its record), now a unit of this run again; None if it is no longer pending here
        (done, given away, dropped, or already out) or cannot be rebuilt (counted lost)."""
        pending = self.cp.live.pending
        if code in self.live or not pending.has_payload(code):
            return None
        if request is None:
            try:
                request = self._rebuilt(pending.get(code), code)
            except (OSError, ValueError) as exc:  # its record deleted or damaged behind us
                self.warn_once("unreadable", f"A journaled request cannot be read ({exc}): it "
                               f"is not sent again and counted lost (unrestorable), as is any "
                               f"other whose record is gone.")
                self.stats.inc_value("checkpoint/unrestorable")
            if request is None:
                try:
                    self.cp.record_lost(LOST_UNRESTORABLE, 1, [code])
                except CheckpointError as error:
                    self.stop(error)
                return None
            self._registered.add(request)
            if self.shared is not None:
                self._requests[code] = request
        self.live.add(code)
        return request


class JournaledRecords:
    """What the frontier journals of each request: its record, and the names the journaled
    requests need from the spider (see :func:`.requests.needs_of`)."""

    stats: Any
    needs: set[tuple[str, str]]
    warn_once: Callable[[str, str], None]
    _needs_seen: set[tuple[tuple[str, str], ...]]
    _needs_changed: bool

    def payload(self, request: Request, spider: Spider, *,
                then: str = _UNJOURNALED) -> dict[str, Any] | None:
        """The request as a journal payload, or None (one warning per kind, and a stat) when it
        cannot be one; ``then`` says what becomes of it."""
        try:
            payload = request_to_payload(request, spider)
        except UnserializableRequest as exc:
            self._unserializable(exc, then)
            return None
        self._note_needs(tuple(needs_of(payload)))
        return payload

    def record(self, request: Request, spider: Spider, *,
               then: str = _UNJOURNALED) -> bytes | None:
        """:meth:`payload` as the request record's bytes (UTF-8 JSON, encoded once), for
        :meth:`EnhancedCheckpoint.add_unit`."""
        try:
            data, needs = request_record(request, spider)
        except UnserializableRequest as exc:
            self._unserializable(exc, then)
            return None
        self._note_needs(needs)
        return data

    def _unserializable(self, exc: UnserializableRequest, then: str) -> None:
        self.warn_once(f"unserializable:{exc.kind}",
                       f"A request cannot be journaled ({exc}); {then}.")
        self.stats.inc_value("checkpoint/unserializable")

    def _note_needs(self, needs: tuple[tuple[str, str], ...]) -> None:
        """Add what a journaled request needs to :attr:`needs` (each distinct tuple looked
        at once: most requests of a crawl need the same)."""
        if needs in self._needs_seen:
            return
        self._needs_seen.add(needs)
        known = self.needs
        for need in needs:
            if need not in known:
                known.add(need)
                self._needs_changed = True

    def needs_changed(self) -> list[list[str]] | None:
        """What every journaled request needs (see :func:`.requests.needs_of`), for the
        stage's attached data, if it grew since the last call; else None."""
        if not self._needs_changed:
            return None
        self._needs_changed = False
        return sorted([kind, name] for kind, name in self.needs)


class HeldUnits:
    """The part of :class:`Frontier` for requests a unit's callback yields that cannot be
    journaled (a callback or errback that is no spider method, such as a lambda; an object in
    ``meta`` or ``cb_kwargs``, such as an ``ItemLoader``): they are journaled without their
    request, so the unit whose callback yielded one is done only once that one's unit is done
    (:class:`Holds`), and a crash before then redoes that unit, which yields it again and
    finds it. Uses the frontier's fields, declared here."""

    crawler: Any
    live: set[int]
    holds: Holds
    #: The unit :meth:`hold_parent` found for the request being registered.
    _holder: int | None = None
    cp: EnhancedCheckpoint

    def record(self, request: Request, spider: Spider, *, then: str = _UNJOURNALED
               ) -> bytes | None:
        raise NotImplementedError

    def _finish(self, code: int, request: Request) -> None:
        raise NotImplementedError

    def held(self, request: Request, holder: int | None) -> int | None:
        """A unit's callback yielded ``request`` (``holder``: that unit, None if none): mark it
        (:data:`HELD_META`, the unit in :data:`HOLDER_META`) if its callback or errback cannot
        be journaled; else return ``holder``, to keep until it is scheduled (Scrapy schedules
        a callback's output after a queue) for :meth:`hold_parent`."""
        meta = request.meta
        if callbacks_by_name(request, self.crawler.spider):
            if meta.pop(HELD_META, None):  # (copied from another request's meta)
                meta.pop(HOLDER_META, None)
            return holder
        if holder is not None:  # (none: start()'s, journaled without its request: counted)
            meta[HELD_META], meta[HOLDER_META] = True, holder
        return None

    def hold_parent(self, code: int, request: Request, holder: int | None,
                    unrecorded: bool) -> None:
        """``request`` was just registered as unit ``code``: if it is held for its callback, it
        holds the unit that yielded it; else that unit (``holder``, from :meth:`held`), if
        any, is kept for :meth:`record_held`, and held now if an earlier run recorded ``code``
        without its request (``unrecorded``: the unit redone after a crash yields it again)."""
        meta = request.meta
        if meta.get(HELD_META):
            if meta.get(HOLDER_META) in self.live:
                self.holds.hold(code, meta[HOLDER_META])
            return
        self._holder = holder = holder if holder in self.live else None
        if holder is not None and unrecorded:
            self.holds.hold(code, holder)

    def record_held(self, request: Request, spider: Spider, code: int) -> bytes | None:
        """The record of ``request``, registered as the new unit ``code`` just after
        :meth:`hold_parent` (None: it cannot be journaled). One that cannot be journaled for
        what it carries (``meta``, ``cb_kwargs``, cookies), yielded by a unit's callback, holds
        that unit as one held for its callback does; from ``start()`` nothing would yield it
        again: a crash loses it (counted)."""
        if request.meta.get(HELD_META):
            return self.record(request, spider, then=_HELD)
        holder = self._holder
        record = self.record(request, spider, then=_UNJOURNALED if holder is None else _HELD)
        if record is None and holder is not None:
            self.holds.hold(code, holder)
        return record

    def release_holds(self) -> None:
        """The crawl is idle: every request is finished, so units still held (a
        ``checkpoint_ignore`` request dropped unseen, e.g. by another ``request_scheduled``
        handler) are finished now."""
        waiting, self.holds = self.holds.waiting, Holds()
        for code, request in waiting.items():
            self._finish(code, request)


class Frontier(WorkerUnits, ExpiredSessions, RebuiltUnits, JournaledRecords, HeldUnits):
    """Per-request unit bookkeeping of one crawl (the checkpoint holds the journaled state).

    ``crawler`` is Scrapy's crawler, ``cp`` the open checkpoint, ``outputs`` the stage's
    durable outputs. ``warn_once(kind, message)`` logs a warning once per kind;
    ``stop(exc)`` stops the crawl (resumable) when the checkpoint cannot record progress.
    A shared stage's worker and the scrapy-redis pairing are attached after construction.
    """

    def __init__(self, crawler: Any, cp: EnhancedCheckpoint, outputs: OutputSet, *,
                 warn_once: Callable[[str, str], None],
                 stop: Callable[[Exception], None]) -> None:
        self.crawler = crawler
        self.cp = cp
        self.stats = crawler.stats
        self.outputs = outputs
        self.warn_once = warn_once
        self.stop = stop
        self.stage = cp.stage
        #: False once the crawl's checkpoint is closed: signals are ignored from then on.
        self.active = True
        #: Units scheduled in this run and not done.
        self.live: set[int] = set()
        #: Units done in this run (8 bytes each).
        self.done_here = DoneSet(timed=False)
        #: Which unit each request is (its fingerprint, or its place for dont_filter ones).
        self._fingerprint = crawler.request_fingerprinter.fingerprint
        self.identity = UnitIdentity(self._fingerprint)
        #: Units of this run keyed by their fingerprint whose request bypassed the dupefilter
        #: (scheduled again with dont_filter, see schedule()): few, kept.
        self.unfiltered: set[int] = set()
        #: Units whose request is queued again (a retry or continuation): unit -> how many.
        self.continued: dict[int, int] = {}
        #: Units held by the checkpoint_ignore requests their callbacks yielded.
        self.holds = Holds()
        #: Units pending at open that had started (in flight at the crash): redone now.
        live = cp.live
        self.inflight_at_crash: set[int] = {c for c in live.started if c in live.pending}
        #: Requests done by earlier runs dropped at scheduling, not yet counted in the journal.
        self.skipped = 0
        self._failures: set[int] = set()
        self._ignored: set[int] = set()
        self._expired: set[int] = set()
        self._just_registered: Request | None = None
        # The journaled request schedule() is handing to the engine: its meta holds its unit.
        self._rescheduled: Request | None = None
        # The request objects that carry a unit: scheduled through request_scheduled. Others
        # (an inline engine.download() with copied meta) must not start or finish it.
        self._registered: WeakSet[Request] = WeakSet()
        # Shared stages: the request carrying each unit (to find it when the unit is given).
        self._requests: WeakValueDictionary[int, Request] = WeakValueDictionary()
        # Queued requests not to download: their unit was given to another worker, or (with
        # scrapy-redis) another worker has it or it is done.
        self._not_ours: WeakSet[Request] = WeakSet()
        #: The crawl's depth profile and estimate (see .progress), fed as units come and go.
        self.progress: CrawlProgress | None = None
        #: Requests callbacks yielded, not scheduled yet (a little later): the kind of the unit
        #: that found each (None: no progress) and that unit if :meth:`hold_parent` needs it.
        self._yielded: dict[Request, tuple[tuple[str, str] | None, int | None]] = {}
        #: Called with a unit's code when it is done here, and when it leaves this run
        #: undone (the stage totals' ``release`` and ``discard``).
        self.on_done: Callable[[int], None] | None = None
        self.on_leave: Callable[[int], None] | None = None
        #: The crawl's setup requests (``meta["checkpoint_setup"]``), see :mod:`.setup_requests`.
        self.setup: SetupRequests | None = None
        #: Shared stages: this worker's claims, and (scrapy-redis) the shared queue.
        self.shared: Claims | None = None
        self.pairing: SharedQueue | None = None
        #: The scheduler hands back copies of the requests it was given (scrapy-redis's queue,
        #: a stage that is not shared): a copy of a unit of this run is registered when it
        #: starts, and requests scheduled again bypass the scheduler's dupefilter.
        self.copies_from_queue = False
        #: The :class:`~.scheduler.CheckpointScheduler` queues journaled units by code (see
        #: :meth:`queued`, :meth:`popped`): a queued unit is pending, not in :attr:`live`.
        self.lazy = False
        #: A duplicate of a unit queued or done in this run, for the checkpoint scheduler to
        #: filter (Scrapy's dupefilter never saw the units it queues).
        self.duplicate: Request | None = None
        # The journaled unit request_scheduled just registered (lazy: for the queue).
        self._admitted: Request | None = None
        #: What the journaled requests need from the spider (see :meth:`needs_changed`).
        recorded = cp.live.attached.get(NEEDS_ATTACHED)
        self.needs: set[tuple[str, str]] = (
            {(str(k), str(n)) for k, n in recorded} if isinstance(recorded, list)
            else _needs_of_journaled(cp))
        self._needs_changed = not isinstance(recorded, list)
        # The distinct needs of the requests journaled in this run (see _note_needs).
        self._needs_seen: set[tuple[tuple[str, str], ...]] = set()

    # -- scheduling --------------------------------------------------------------------------

    def request_scheduled(self, request: Request, spider: Spider, **_: Any) -> None:
        """``request_scheduled`` signal: register the request as a unit, or drop it
        (``IgnoreRequest``) when it is done, a duplicate, another worker's, or a unit's
        redirect to the login page (the URL of a setup request). (``**_``: the signal's
        other arguments, so the dispatcher passes them all rather than pick them.)"""
        if not self.active:
            return
        found_by, holder = self._yielded.pop(request, _NOT_YIELDED)
        meta = request.meta
        setup = self.setup
        if setup is not None:
            if meta.get(SETUP_META):  # runs in every run: not a unit
                meta.pop(UNIT_META, None)
                setup.scheduled(request)
                return
            if meta.get(UNIT_META) in self.live and setup.redirected_to_setup(request):
                self._session_expired(meta[UNIT_META], request, spider)
        if meta.get(IGNORE_META):
            meta.pop(UNIT_META, None)  # a copied unit key must not make it count as its parent
            holder = meta.get(HOLDER_META)
            # Not with scrapy-redis: the request that finishes is a copy from its queue.
            if (holder is not None and holder in self.live and self.pairing is None
                    and not self.copies_from_queue):
                self.holds.hold(request, holder)
            return
        if meta.get(AGAIN_META) and meta.get(UNIT_META) in self.live:
            del meta[AGAIN_META]  # sent again after the setup requests: the unit's request
            self._registered.add(request)
            return
        cp = self.cp
        journal = cp.live
        live = self.live
        self._just_registered = None
        continued = False
        if request is self._rescheduled:
            code = meta[UNIT_META]
        elif request.dont_filter:
            code, continued = self.identity.unfiltered_code(request, live)
        else:
            code = fingerprint_code(self._fingerprint(request))
        if code in journal.done:
            if code not in self.done_here:
                self.skipped += 1
                self.stats.inc_value("checkpoint/skipped")
                raise IgnoreRequest(f"done by an earlier run of checkpoint stage {self.stage}")
            if self.pairing is not None:  # scrapy-redis's dupefilter never saw a dont_filter one
                raise IgnoreRequest("duplicate of a request done in this run")
            self._drop_duplicate(request, code)
            return
        if self.pairing is not None:
            self.pairing.queue(request, code, spider, continuation=continued)
            return
        if code in live:
            if continued:
                # A retry (or the same unit continued): it finishes the unit, not the original,
                # and its own outcome is the unit's.
                self.continued[code] = self.continued.get(code, 0) + 1
                self._failures.discard(code)
                self._ignored.discard(code)
                self._registered.add(request)
                return
            self._drop_duplicate(request, code)
            return
        pending = journal.pending
        entry = pending.entry(code)  # (None: not pending; ref NO_REF: pending, no record)
        if self.lazy and entry is not None and entry[0] != NO_REF:
            self._drop_duplicate(request, code)  # queued on disk
            return
        if self.shared is not None:
            if not self.shared.claimed(code):
                self.stats.inc_value("checkpoint/claimed_elsewhere")
                raise IgnoreRequest(f"another worker of checkpoint stage {self.stage} owns it")
            entry = pending.entry(code)  # (a claim may take it in)
        meta[UNIT_META] = code
        live.add(code)
        self._registered.add(request)
        self.hold_parent(code, request, holder, entry is not None and entry[0] == NO_REF)
        if self.shared is not None:
            self._requests[code] = request
        self._just_registered = request
        if request.dont_filter and code == self.identity.plain_code(request):
            self.unfiltered.add(code)
        if entry is None:  # not pending (nor done: see above)
            # A request that cannot be journaled is recorded as existing (payload None): a
            # crash before it is done loses its work, and the next run counts that.
            record = self.record_held(request, spider, code)
            try:
                cp.add_new_unit(code, record, request.priority)
            except CheckpointError as exc:  # its record cannot be written: the crawl stops
                self.stop(exc)
                return
            if self.progress is not None:
                kind, shape = unit_kind(request)
                self.progress.add(meta.get("depth", 0), kind, found_by, shape)
            if record is not None and self.lazy:
                self._admitted = request

    def _drop_duplicate(self, request: Request, code: int) -> None:
        """A unit is fetched once per stage. A plain duplicate is left to the dupefilter,
        which saw the unit in this run (cheaper than raising); a ``dont_filter`` request of a
        unit already here (what a callback done again yields again, a ``start()`` request
        resumed), or a duplicate of a unit that bypassed the dupefilter, is dropped here."""
        if not request.dont_filter and code not in self.unfiltered:
            self.duplicate = request
            return
        self.stats.inc_value("checkpoint/duplicates_dropped")
        raise IgnoreRequest("duplicate of a request already scheduled or done in this run")

    def request_dropped(self, request: Request, spider: Spider) -> None:
        """``request_dropped`` signal: the scheduler refused a request just registered (or a
        setup request, or a ``checkpoint_ignore`` one holding a unit)."""
        if not self.active:
            return
        if self.setup is not None and request.meta.get(SETUP_META):
            self.setup.dropped(request)
            return
        self._release(request)
        # Only a request registered just now can be refused by the scheduler as ours.
        if request is self._just_registered:
            self._just_registered = None
            code = request.meta[UNIT_META]
            self.live.discard(code)
            self.unfiltered.discard(code)
            self.identity.forget(code)
            if self.progress is not None:
                self.progress.finish(request.meta.get("depth", 0), *unit_kind(request))
            try:
                self.cp.finish_unit(code, processed=1, skipped=1, last_item=request.url)
            except CheckpointError as exc:
                self.stop(exc)

    def refused(self, request: Request) -> None:
        """The engine dropped ``request`` without a signal: a ``request_scheduled`` receiver
        raised IgnoreRequest (OffsiteMiddleware's for a URL outside ``allowed_domains``).
        If it became a unit just now, the unit is taken back: neither pending nor done, as
        without the add-on, where the request never existed."""
        if not self.active or request is not self._just_registered:
            return
        self._just_registered = None
        self._admitted = None
        code = request.meta.pop(UNIT_META)
        self.unfiltered.discard(code)
        self._registered.discard(request)
        self.let_go(code)
        if self.progress is not None:
            self.progress.finish(request.meta.get("depth", 0), *unit_kind(request))
        try:
            self.cp.hand_off([code])
        except CheckpointError as exc:
            self.stop(exc)

    def taken(self, code: int) -> bool:
        """Unit ``code`` is done, or was scheduled in this run (a resumed copy of it is not
        needed)."""
        return code in self.live or code in self.cp.live.done

    def record_skips(self) -> None:
        """Journal the count of requests dropped as done by earlier runs."""
        if self.skipped:
            self.cp.finish_unit(None, skipped=self.skipped)
            self.skipped = 0

    # -- outcomes ------------------------------------------------------------------------------

    def note_failure(self, request: Request | None) -> None:
        """The request failed (download error, 5xx, callback error): its unit is done-with-failure."""
        if (request is not None and request.meta.get(UNIT_META) in self.live
                and request in self._registered):
            self._failures.add(request.meta[UNIT_META])

    def note_ignored(self, request: Request) -> None:
        """A middleware ignored the request (``IgnoreRequest``): its unit is done as skipped."""
        # Not a copy this worker drops (given away, or another worker's): only its own.
        if request.meta.get(UNIT_META) in self.live and request in self._registered:
            self._ignored.add(request.meta[UNIT_META])

    def child_yielded(self, request: Request, parent: Request) -> None:
        """A callback or errback of ``parent`` yielded ``request`` (before it is scheduled):
        a ``checkpoint_ignore`` one holds the parent's unit (:class:`Holds`), a ``dont_filter``
        one is given its origin (see :mod:`.identity`)."""
        if not self.active or request is parent:
            return
        meta = request.meta
        holder = self.unit_of_request(parent)
        if meta.get(IGNORE_META):
            if holder is None:
                meta.pop(HOLDER_META, None)
            else:
                meta[HOLDER_META] = holder
            holder = None
        else:
            if request.dont_filter:
                self.identity.tag(request, holder)
            holder = self.held(request, holder)
        found_by = self.progress.finder(parent) if self.progress is not None else None
        if found_by is not None or holder is not None:
            yielded = self._yielded
            if len(yielded) >= 100_000:  # never scheduled (cannot be: a safety net)
                yielded.clear()
            yielded[request] = (found_by, holder)

    def spider_error(self, failure: Any, response: Any, spider: Spider) -> None:
        """``spider_error`` signal: the callback raised."""
        self.note_failure(getattr(response, "request", None))

    def should_drop(self, request: Request) -> bool:
        """A queued request this worker must not download: its unit was given to another
        worker, or (with scrapy-redis) is done or in flight elsewhere."""
        return request in self._not_ours

    def unit_of(self, response: Any) -> int | None:
        """The unit whose output ``response``'s items are (None: not a unit of this run).
        Writers set ``outputs.router.current`` to it around the write."""
        return self.unit_of_request(getattr(response, "request", None))

    def unit_of_request(self, request: Request | None) -> int | None:
        """The unit ``request`` carries in this run, or the one it holds (None: none)."""
        if request is None:
            return None
        meta = request.meta
        unit = meta.get(UNIT_META)
        if unit is None:
            unit = meta.get(HOLDER_META)
        return unit if unit in self.live else None

    # -- the engine's request lifecycle (see engine_hooks) ---------------------------------

    def request_started(self, request: Request) -> None:
        """The engine starts downloading ``request``: its unit is in flight."""
        code = request.meta.get(UNIT_META)
        if (self.pairing is not None and code is not None and request not in self._registered
                and self.active):
            self.pairing.take(request, code)
        elif code in self.live and self.active and (request in self._registered
                                                    or self._copy_of_a_unit(request)):
            self.cp.start_unit(code)

    def _copy_of_a_unit(self, request: Request) -> bool:
        """With :attr:`copies_from_queue`, register ``request`` (the scheduler's copy of a unit
        of this run) and return True."""
        if self.copies_from_queue:
            self._registered.add(request)
            return True
        return False

    def request_finished(self, request: Request) -> None:
        """The engine is done with ``request``: its unit is done, with its outcome."""
        if self.setup is not None and request.meta.get(SETUP_META):
            self.setup.finished(request)
            return
        code = request.meta.get(UNIT_META)
        if code not in self.live or not self.active or request not in self._registered:
            if self.active:
                self._release(request)
            return
        continued = self.continued.get(code)
        if continued:  # a later request finishes the unit: it may be this very object,
            if continued == 1:  # scheduled again (a callback yielding its response.request),
                del self.continued[code]  # so it stays registered
            else:
                self.continued[code] = continued - 1
            return
        self._registered.discard(request)
        if self.holds.held(code):  # checkpoint_ignore requests it yielded are not finished
            self.holds.waiting[code] = request
            return
        self._finish(code, request)

    def _release(self, request: Request | int) -> None:
        """``request`` is finished or dropped: finish the unit it held, if that waited only
        for it."""
        if not self.holds.count:  # no request holds a unit (the usual case)
            return
        unit = self.holds.release(request)
        if unit is not None:
            self._finish(unit, self.holds.waiting.pop(unit))

    def _finish(self, code: int, request: Request) -> None:
        """Unit ``code`` is done; ``request`` is the last request that carried it."""
        self.live.discard(code)
        self.identity.forget(code)
        self.done_here.add_new(code)
        if self.progress is not None:  # (its kind is known already if it yielded requests)
            self.progress.finish(request.meta.get("depth", 0),
                                 *self.progress.finder(request, done=True))
        cp = self.cp
        try:
            self.outputs.release(code)  # an output that cannot take them stops: not done
            if self.on_done is not None:  # (after: release may commit, before the done record)
                self.on_done(code)
            if code in self._expired or code in self._failures:
                self._failures.discard(code)
                cp.finish_unit(code, processed=1, failed=1, last_item=request.url)
                self.stats.inc_value("checkpoint/failed")
                if code in self._expired and self.setup is not None:
                    self._expired.discard(code)
                    self.setup.note_expired(code)
            elif code in self._ignored:
                self._ignored.discard(code)
                cp.finish_unit(code, processed=1, skipped=1, last_item=request.url)
            else:
                cp.finish_unit(code, processed=1, successful=1, last_item=request.url)
                if self.setup is not None:
                    self.setup.worked()
        except CheckpointError as exc:
            self.stop(exc)
            return
        self._release(code)  # a unit held for its callback: the unit it holds may be done
        self.stats.inc_value("checkpoint/done")
