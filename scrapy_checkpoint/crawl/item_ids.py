"""Stable item ids: :func:`item_id` gives every item its place in the crawl, as a string.

An item is the ``n``-th item (0, 1, 2...) that the callback or errback of a unit yielded
(the unit of the request: its fingerprint, or for ``dont_filter`` its place, see
:mod:`.identity`). A deterministic callback yields the same items in the same order in
every run, so the same item of the same request has the same id in every run: an
idempotency key for a database (``INSERT ... ON CONFLICT DO NOTHING``), with no field
added to the item and nothing computed from its contents. The id's form:

- ``<unit code, hex>:<n>``, e.g. ``9c1f0e4a7b2d3e51:0``: the items of a unit's callback;
- ``0:<n>``: the ``n``-th item ``start()`` yielded (0 is the parent of ``start()``'s
  requests, :data:`.identity.ROOT`);
- ``r<code of the request's fingerprint, hex>:<n>``: the items of a request that is no
  unit (``meta["checkpoint_ignore"]``, setup requests), fetched again in every run;
- ``err`` before any of these: the items of an errback (:data:`.deliveries.ERRBACK_PREFIX`),
  numbered apart from the callback's of the same request.

Ids are unique within one stage; a table shared by several stages needs the stage too.

Cost per item: one dict entry while the item is in the pipelines, from the moment it is
yielded to the moment its processing ends (scraped, dropped or failed), whatever object
the pipelines hand on; the entry holds the item, so its ``id()`` cannot be reused meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scrapy import Request

from ..errors import UnknownItemError
from ..journal.keys import fingerprint_code
from .identity import ROOT, UNIT_META

#: What a live item maps to: (the item, the prefix of its id, its ordinal).
Entry = tuple[Any, str, int]

_open: list[ItemIds] = []


class ItemIds:
    """The ids of the items of one crawl that are in its pipelines now.

    ``fingerprint`` is the crawler's ``request_fingerprinter.fingerprint`` (for the items of
    requests that are no unit). The engine hooks (:func:`.engine_hooks.hook_spider_output`,
    :func:`.engine_hooks.hook_item_processing`) call :meth:`prefix`, :meth:`yielded`,
    :meth:`from_start` and :meth:`finished`; :meth:`open` and :meth:`close` make the ids
    visible to :func:`item_id` for the crawl's lifetime.
    """

    def __init__(self, fingerprint: Callable[[Request], bytes]) -> None:
        self.fingerprint = fingerprint
        #: ``id(item)`` -> :data:`Entry`, for the items between yield and the end of processing.
        self.live: dict[int, Entry] = {}
        self._start = 0

    def prefix(self, request: Request) -> str:
        """The prefix of the ids of the items ``request``'s callback or errback yields."""
        unit = request.meta.get(UNIT_META)
        if type(unit) is int:
            return f"{unit:x}"
        return f"r{fingerprint_code(self.fingerprint(request)):x}"

    def yielded(self, item: Any, prefix: str, n: int) -> None:
        """``item`` is the ``n``-th item of the callback whose ids start with ``prefix``."""
        self.live[id(item)] = (item, prefix, n)

    def from_start(self, item: Any, *, delivered: bool = False) -> None:
        """``item`` is the next item ``start()`` yielded in this run (``delivered``: by an
        earlier run, dropped: it only takes its number)."""
        if not delivered:
            self.live[id(item)] = (item, f"{ROOT}", self._start)
        self._start += 1

    def finished(self, item: Any) -> None:
        """``item``'s processing ended (scraped, dropped or failed): its entry goes."""
        self.live.pop(id(item), None)

    def get(self, item: Any) -> str | None:
        """``item``'s id, or None when it is not in this crawl's pipelines."""
        entry = self.live.get(id(item))
        if entry is None or entry[0] is not item:
            return None
        return f"{entry[1]}:{entry[2]}"

    def open(self) -> None:
        """Make these ids visible to :func:`item_id`."""
        if self not in _open:
            _open.append(self)

    def close(self) -> None:
        """The crawl is over: forget its items."""
        if self in _open:
            _open.remove(self)
        self.live.clear()


def item_id(item: Any) -> str:
    """The stable id of ``item``, an item (dict, ``scrapy.Item``, dataclass, attrs...) that a
    callback, an errback or ``start()`` of a crawl with the checkpoint yielded, while it is
    in the item pipelines: an ASCII string ``<prefix>:<n>``, the prefix at most 17
    characters and ``n`` the item's ordinal in decimal (see the module docstring), the
    same for the same item of the same request in every run when the callbacks are
    deterministic. Raises :class:`~scrapy_checkpoint.UnknownItemError`
    (a LookupError) for any other object: outside a crawl, with the checkpoint disabled, a
    copy a pipeline made, or an item whose processing has ended."""
    for ids in _open:
        found = ids.get(item)
        if found is not None:
            return found
    raise UnknownItemError(item)


__all__ = ["ItemIds", "item_id"]
