"""Items handed to the pipelines are not handed again when their request is redone.

A unit (request) is done when its callback's output has been processed, items through
the item pipelines included; a crash before its group is committed redoes the unit, and
its callback yields its items again. A long callback (a listing page of thousands of
items, a slow pipeline) spans many commits, so without more every item it yielded
before the crash would reach the pipelines twice.

So each item a unit's callback yields gets an **ordinal**, its place in that
callback's output (0, 1, 2...), the same as in its id (:mod:`.item_ids`); an item is
**delivered** when the pipelines are done with it (scraped, dropped or failed), after the
receivers of its ``item_*`` signal (:func:`.engine_hooks.hook_item_processing`). At each
commit the ordinals delivered by units still in flight are kept with the stage (attached
data ``"delivered"``, ``{unit code hex: [[first, last], ...]}``), with those items'
counts in the stage totals; the first item delivered after a commit makes the next
timer commit due. When such a unit is redone after a crash, its callback's items with
those ordinals are dropped before the pipelines (stat
``checkpoint/items_already_delivered``); only items delivered after the unit's last
commit are handed again (``checkpoint/items_replayed``): the replays are bounded by what
the last, uncommitted group saw.

Items that ``start()`` yields are numbered the same way (its ``n``-th item), and the
ordinals delivered before a commit are kept with the stage (attached data
``"start_delivered"``, ranges): ``start()`` runs again from the top on every run, and
its items delivered by an earlier run are dropped before the pipelines
(``checkpoint/items_already_delivered``), so a feed holds each of them once, as in an
uninterrupted crawl (``start()`` must yield the same items in the same order, as a
callback redone must). Their bytes are written when they are scraped (not held: they
belong to no unit), and a commit records them with the length that covers them; so this
holds with batch feeds too (:func:`modes`).

Limits:

- The outputs (feeds, ``CHECKPOINT_OUTPUT``) keep a unit's bytes until it is done, or
  until a commit finds every item of it that reached an ``item_*`` signal finished
  (:meth:`StageTotals.settled <.stage_totals.StageTotals.settled>`): then they are
  released with the ordinals. Not in a crawl with a remote, batch or postprocessed feed
  (:func:`possible`): every item of a redone unit is handed again there, as before.
- Not in a shared stage, nor with scrapy-redis's scheduler: a unit redone by another
  worker (adopted from a dead one, or popped from the shared queue) would not know the
  ordinals its first worker kept.
- A unit that holds ``checkpoint_ignore`` requests (whose items are the unit's output
  too, and which run again when it is redone), whose errback yields items, or whose
  callback runs a second time in one run (its request yielded again) keeps all its items
  until it is done.
- A callback must yield the same items in the same order when it is redone (a
  deterministic callback, as for every replay).

Memory: one entry per item between the callback yielding it and the pipelines being
done with it, and per unit in flight its delivered ordinals as ranges (:class:`Ordinals`:
one range for items delivered in order, however many).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Container, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from scrapy import Request

from .identity import HOLDER_META, UNIT_META

if TYPE_CHECKING:
    from ..checkpoint import EnhancedCheckpoint
    from .item_ids import ItemIds
    from .outputs import OutputSet
    from .stage_totals import StageTotals

#: Attached data: ``{unit code as hex: [[first, last], ...]}``, ordinals of delivered items
#: of units not done yet (ranges, both ends included).
DELIVERED_ATTACHED = "delivered"

#: Attached data: ordinals (ranges) of the items ``start()`` yielded that were delivered.
START_DELIVERED_ATTACHED = "start_delivered"

#: Items yielded and not yet through the pipelines above which the bookkeeping is reset
#: (cannot happen with Scrapy's scraper, which limits the items in progress: a safety net).
_MAX_IN_PROGRESS = 100_000


def to_ranges(ordinals: set[int]) -> list[list[int]]:
    """``{0, 1, 2, 5}`` -> ``[[0, 2], [5, 5]]``."""
    ranges: list[list[int]] = []
    for n in sorted(ordinals):
        if ranges and ranges[-1][1] == n - 1:
            ranges[-1][1] = n
        else:
            ranges.append([n, n])
    return ranges


class Ordinals:
    """A set of ordinals kept as sorted, disjoint ranges (``[[first, last], ...]``, both ends
    included): a unit that delivered a million items in order holds one range, and adding
    the few delivered since the last commit merges them in, without sorting the rest."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []

    def __contains__(self, n: object) -> bool:
        if type(n) is not int:
            return False
        i = bisect_right(self._firsts, n) - 1
        return i >= 0 and n <= self._lasts[i]

    def __iter__(self) -> Iterator[int]:
        for first, last in zip(self._firsts, self._lasts, strict=True):
            yield from range(first, last + 1)

    def update(self, ordinals: Iterable[int]) -> None:
        """Add ``ordinals`` (any order)."""
        ranges = to_ranges(set(ordinals))
        if self._firsts:
            self._merge(ranges)
        else:  # the first ones of a unit (the usual case): nothing to merge with
            self._firsts = [a for a, _ in ranges]
            self._lasts = [b for _, b in ranges]

    def _merge(self, ranges: list[list[int]]) -> None:
        merged: list[list[int]] = []
        for first, last in sorted([*zip(self._firsts, self._lasts, strict=True),
                                   *((a, b) for a, b in ranges)]):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self._firsts = [a for a, _ in merged]
        self._lasts = [b for _, b in merged]

    def ranges(self) -> list[list[int]]:
        """The ranges, for the journal."""
        return [[a, b] for a, b in zip(self._firsts, self._lasts, strict=True)]


def from_ranges(value: Any) -> Ordinals:
    """The ordinals of :func:`to_ranges`'s output; malformed parts are ignored (the items
    concerned are then handed again, as before this record existed)."""
    ordinals = Ordinals()
    if not isinstance(value, list):
        return ordinals
    ordinals._merge([pair for pair in value
                     if isinstance(pair, list) and len(pair) == 2
                     and all(type(n) is int for n in pair) and 0 <= pair[0] <= pair[1]])
    return ordinals


#: Before the id prefix of an errback's items (``err<unit hex>:<n>``): an errback and a
#: callback of one unit number their items apart (which of the two runs depends on the
#: network, not on the spider). Never a prefix of a unit's hex code nor of ``r<code>``.
ERRBACK_PREFIX = "err"

#: Feed formats whose exporters write each item as one record of its own (Scrapy's).
_RECORD_FORMATS = frozenset({"jsonlines", "jl", "json", "csv", "xml", "marshal", "pickle"})


def possible(settings: Any, *, batches: bool = False) -> bool:
    """True when the crawl's feeds can keep the items of a unit in flight item by item:
    every feed a local file of a format Scrapy ships, without batches (unless ``batches``:
    for the items of ``start()``, written at once) or postprocessing. A remote feed (Scrapy
    writes it as in a plain crawl) would never get an item dropped before the pipelines; a
    batch feed opens its next file (a commit) while it appends."""
    if settings.getint("FEED_EXPORT_BATCH_ITEM_COUNT") and not batches:
        return False
    for uri, given in settings.getdict("FEEDS").items():
        text = str(uri)
        if "://" in text and not text.startswith("file:"):
            return False
        options = given if isinstance(given, dict) else {}
        batched = options.get("batch_item_count") or "%(batch_" in text
        if ((batched and not batches) or options.get("postprocessing")
                or options.get("format") not in _RECORD_FORMATS):
            return False
    return True


def modes(settings: Any, *, alone: bool) -> dict[str, bool]:
    """:class:`Deliveries`' ``enabled`` and ``start_enabled`` for a crawl with ``settings``
    (``alone``: no worker of a shared stage, nor with scrapy-redis's scheduler)."""
    return {"enabled": alone and possible(settings),
            "start_enabled": alone and possible(settings, batches=True)}


class Deliveries:
    """Which items of the units in flight were delivered (see the module docstring).

    ``cp``: the open stage (its attached data holds the ordinals delivered before this
    run); ``in_flight``: the units of this run not done (the frontier's); ``outputs`` and
    ``totals``: the files and counters released at each commit for the items delivered so
    far; ``enabled``: False when :func:`possible` says so (every item of a redone unit is
    handed again, as before); ``start_enabled``: the same for the items of ``start()``
    (:func:`possible` with batches).
    :meth:`yielded` is called for every item a callback yields (False: drop it),
    :meth:`finished` when the pipelines are done with one, :meth:`commit` from the commit
    hook.
    """

    def __init__(self, cp: EnhancedCheckpoint, in_flight: Container[int], outputs: OutputSet,
                 totals: StageTotals, stats: Any, *, enabled: bool = True,
                 start_enabled: bool | None = None) -> None:
        self.cp = cp
        self.start_enabled = enabled if start_enabled is None else start_enabled
        #: False in a crawl with outputs whose items cannot be kept per item (see
        #: :func:`possible`).
        self.enabled = enabled
        self.in_flight = in_flight
        self.outputs = outputs
        self.totals = totals
        self.stats = stats
        #: Ordinals delivered before this run: unit -> ordinals (units redone in this run).
        self._before: dict[int, Ordinals] = {}
        recorded = cp.live.attached.get(DELIVERED_ATTACHED)
        #: What the journal holds (what a commit before the next change would keep).
        self._journaled: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        if isinstance(recorded, dict) and enabled:
            pending = cp.live.pending
            for key, ranges in recorded.items():
                try:
                    code = int(key, 16)
                except (TypeError, ValueError):
                    continue
                if code in pending:
                    self._before[code] = from_ranges(ranges)
        #: Items between their callback and the end of the pipelines: id(item) -> (unit, ordinal).
        self._in_progress: dict[int, tuple[int, int]] = {}
        #: Ordinals delivered in this run by units not done (or done since the last commit).
        self._delivered: dict[int, set[int]] = {}
        self._changed = bool(recorded)  # also: a record of units no longer pending is dropped
        #: Units whose output also holds items of checkpoint_ignore requests they yielded
        #: (those requests run again with the unit), of an errback, or of a second run of
        #: their callback: their items are kept whole until done, none dropped.
        self._mixed: set[int] = set()
        #: Outputs started per unit in this run (pruned at each commit to the units in flight).
        self._passes: dict[int, int] = {}
        #: start()'s items: the ordinals delivered before this run and since the last
        #: commit, the next ordinal, and the ones between start() and the end of the pipelines.
        self._start_before = from_ranges(cp.live.attached.get(START_DELIVERED_ATTACHED))
        self._start_delivered: set[int] = set()
        self._start_next = 0
        self._start_in_progress: dict[int, int] = {}

    def yielded(self, item: Any, request: Request, ordinal: int) -> bool:
        """The callback of ``request`` yielded ``item``, its ``ordinal``-th item: False when
        the item was delivered by an earlier run (drop it), else True (it goes on to the
        pipelines)."""
        if not self.enabled:
            return True
        meta = request.meta
        code = meta.get(UNIT_META)
        if code is None:
            holder = meta.get(HOLDER_META)
            if holder is not None:  # its items are held with the unit's own: see _mixed
                self._mixed.add(holder)
            return True
        if ordinal == 0:  # an output starts: a second one of the unit in this run is numbered
            passes = self._passes[code] = self._passes.get(code, 0) + 1  # from 0 again
            if passes > 1:
                self._mixed.add(code)
        if code in self._mixed:
            return True  # kept whole until done: nothing dropped, nothing released early
        before = self._before.get(code)
        if before is not None and ordinal in before:
            self.stats.inc_value("checkpoint/items_already_delivered")
            return False
        in_progress = self._in_progress
        if len(in_progress) >= _MAX_IN_PROGRESS:
            in_progress.clear()
        in_progress[id(item)] = (code, ordinal)
        return True

    def from_start(self, item: Any) -> bool:
        """``start()`` yielded ``item``, its next item: False when an earlier run delivered
        it (drop it), else True."""
        ordinal = self._start_next
        self._start_next += 1
        if not self.start_enabled:
            return True
        if ordinal in self._start_before:
            self.stats.inc_value("checkpoint/items_already_delivered")
            return False
        if len(self._start_in_progress) >= _MAX_IN_PROGRESS:
            self._start_in_progress.clear()
        self._start_in_progress[id(item)] = ordinal
        return True

    def errback_output(self, request: Request) -> None:
        """An errback of ``request`` yields items: its unit keeps them until it is done."""
        meta = request.meta
        code = meta.get(UNIT_META)
        if code is None:
            code = meta.get(HOLDER_META)
        if code is not None:
            self._mixed.add(code)

    def start_written(self, item: Any) -> None:
        """An output has the bytes of ``item``, an item of ``start()``: it is delivered now,
        not when its ``item_scraped`` receivers have all run. A commit meanwhile (another
        receiver still running) records the output's length with the item in it, and must
        record the item delivered with it, or the next run's ``start()`` hands it again."""
        ordinal = self._start_in_progress.pop(id(item), None)
        if ordinal is not None:
            self._start_done(ordinal)

    def _start_done(self, ordinal: int) -> None:
        if not self._start_delivered:  # the next commit is due
            self.cp.attach(START_DELIVERED_ATTACHED, self._start_before.ranges())
        self._start_delivered.add(ordinal)

    def finished(self, item: Any) -> None:
        """The pipelines are done with ``item`` (scraped, dropped or failed), and the
        receivers of its ``item_*`` signal have run: the feeds hold its bytes."""
        if self._start_in_progress:
            ordinal = self._start_in_progress.pop(id(item), None)
            if ordinal is not None:
                self._start_done(ordinal)
                return
        where = self._in_progress.pop(id(item), None)
        if where is not None:
            code, ordinal = where
            if not self._delivered:  # the next commit is due even if no unit is done by then
                self.cp.attach(DELIVERED_ATTACHED, self._journaled)
            delivered = self._delivered.get(code)
            if delivered is None:
                self._delivered[code] = {ordinal}
            else:
                delivered.add(ordinal)

    # -- the commit hook -------------------------------------------------------------------------

    def commit(self, attached: dict[str, Any]) -> None:
        """Before a commit: release the output bytes and item counts of the items delivered
        by units still in flight (those with no item between its signal and the end of its
        processing), and put the ordinals delivered into ``attached`` when they changed.
        Units done are forgotten."""
        if self._start_delivered and self.outputs.take_released():
            self._start_before.update(self._start_delivered)
            self._start_delivered = set()
            attached[START_DELIVERED_ATTACHED] = self._start_before.ranges()
        if not self.enabled:
            return
        live = self.cp.live
        done, pending = live.done, live.pending
        in_flight = self.in_flight
        mixed = self._mixed
        kept: dict[int, set[int]] = {}
        totals, outputs = self.totals, self.outputs
        writing = outputs.take_released()  # (not once the outputs are closed)
        for code, ordinals in self._delivered.items():
            if code not in in_flight or code in mixed or not writing:
                continue  # done (its items are released with it), or see _mixed
            if not totals.settled(code):
                kept[code] = ordinals  # an item of it is still being finished: next time
                continue
            # Every byte the outputs hold for the unit is of an item finished: all delivered.
            outputs.release(code)
            totals.release_items(code)
            kept_before = self._before.get(code)
            if kept_before is None:
                kept_before = self._before[code] = Ordinals()
            kept_before.update(ordinals)
            self._changed = True
        self._delivered = kept
        # A unit in flight is pending and not done (a set lookup: most units are).
        gone = [code for code in self._before
                if code not in in_flight and (code in done or code not in pending)]
        for code in gone:
            del self._before[code]
        if len(mixed) > 1000:
            self._mixed = {c for c in mixed if c in in_flight}
        if self._passes:
            self._passes = {c: n for c, n in self._passes.items() if c in in_flight}
        if not (self._changed or gone):
            return
        self._changed = False
        self._journaled = attached[DELIVERED_ATTACHED] = {
            f"{code:x}": ordinals.ranges() for code, ordinals in self._before.items()}


class ItemTracking:
    """The engine hooks' :class:`~.engine_hooks.ItemHooks`: the :class:`Deliveries` of the
    crawl, its item counts (:class:`~.stage_totals.StageTotals`) and the item ids
    (:class:`~.item_ids.ItemIds`) when they are on."""

    def __init__(self, deliveries: Deliveries, totals: StageTotals, ids: ItemIds | None) -> None:
        self.deliveries = deliveries
        self.totals = totals
        self.ids = ids

    def prefix(self, request: Request, errback: bool) -> str:
        prefix = self.ids.prefix(request) if self.ids is not None else ""
        return ERRBACK_PREFIX + prefix if errback else prefix

    def yielded(self, item: Any, request: Request, prefix: str, n: int) -> bool:
        if prefix.startswith(ERRBACK_PREFIX):  # numbered apart: its items are never dropped
            self.deliveries.errback_output(request)
        elif not self.deliveries.yielded(item, request, n):
            return False
        if self.ids is not None:
            self.ids.yielded(item, prefix, n)
        return True

    def from_start(self, item: Any) -> bool:
        delivered = not self.deliveries.from_start(item)
        if self.ids is not None:
            self.ids.from_start(item, delivered=delivered)
        return not delivered

    def finished(self, item: Any, response: Any) -> None:
        self.totals.item_finished(response)
        self.deliveries.finished(item)
        if self.ids is not None:
            self.ids.finished(item)


__all__ = ["DELIVERED_ATTACHED", "ERRBACK_PREFIX", "START_DELIVERED_ATTACHED", "Deliveries",
           "ItemTracking", "Ordinals", "from_ranges", "to_ranges"]
