"""Which unit of the stage a request is: its fingerprint, or for ``dont_filter``, its place.

Plain Scrapy sends a request with ``dont_filter=True`` even when a request with the
same fingerprint was sent before: its scheduler asks the dupefilter only about the
other requests, and does not add ``dont_filter`` ones to the dupefilter's seen-set
(``Scheduler.enqueue_request``). A stage sends each unit once, so:

- a request without ``dont_filter`` is the unit of its fingerprint (the dupefilter lets
  one through per crawl, the stage one per stage);
- a ``dont_filter`` request is a unit of its own, the code of the string
  ``"<fingerprint hex> <parent> <n>"`` (:func:`derived_code`). ``parent`` is the unit whose
  callback or errback yielded it (for a redirect: the unit redirected; :data:`ROOT` for
  ``start()`` and for requests scheduled outside callbacks); ``n`` counts the ``dont_filter``
  requests with the same fingerprint that parent yielded before it in this run. A callback
  that yields the same requests in every run gives them the same units in every run, so a
  resumed crawl recognises what a redone callback yields again, and the done requests of
  ``start()``. The order matters only among requests with the same fingerprint;
- a copy of a request that carries the request's unit continues that unit: a retry
  (``RetryMiddleware``'s ``dont_filter`` copy), and a journaled request scheduled again.

``meta`` carries the unit code (:data:`UNIT_META`) and, for a ``dont_filter`` unit, its
origin ``[parent, n]`` (:data:`ORIGIN_META`), both journaled with the request. A copy is
recognised as its unit only when its fingerprint and origin give that unit again: a
redirect to another URL, or a request built with the ``meta`` of another, is not.

Memory: per parent whose callback is running, one counter per fingerprint it yielded
with ``dont_filter``, dropped when the parent is done; for :data:`ROOT`, 8 bytes per
fingerprint for the run (a :class:`~scrapy_checkpoint.journal.doneset.DoneSet`).
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any

from scrapy import Request

from ..journal.doneset import DoneSet
from ..journal.keys import fingerprint_code, key_code

#: ``request.meta`` key holding the request's unit code (survives retries and redirects).
UNIT_META = "_checkpoint_unit"
#: ``request.meta`` key holding a ``dont_filter`` request's origin: ``[parent unit, n]``.
ORIGIN_META = "_checkpoint_origin"
#: Set ``request.meta["checkpoint_ignore"] = True`` to keep a request out of the checkpoint.
IGNORE_META = "checkpoint_ignore"
#: ``request.meta`` key holding the unit a ``checkpoint_ignore`` request belongs to: the
#: unit whose callback or errback yielded it (done only once that request is finished).
HOLDER_META = "_checkpoint_holder"
#: ``request.meta`` key set on a request whose callback or errback is no spider method (a
#: lambda, another object's method) yielded by a unit's callback: it cannot be journaled, so
#: it holds that unit as a ``checkpoint_ignore`` request does (redone with it after a crash).
HELD_META = "_checkpoint_held"
#: The parent of ``dont_filter`` requests that no unit's callback yielded (``start()``).
ROOT = 0


def derived_code(fingerprint: bytes, parent: int, n: int) -> int:
    """The unit code of the ``n``-th ``dont_filter`` request with ``fingerprint`` that unit
    ``parent`` yielded (a key of its own: never the code of a fingerprint)."""
    return key_code(f"{fingerprint.hex()} {parent} {n}")


def _origin_code(fingerprint: bytes, origin: Any) -> int | None:
    """The unit an origin ``[parent, n]`` from ``meta`` gives (None: not an origin)."""
    if (type(origin) is list and len(origin) == 2 and type(origin[0]) is int
            and type(origin[1]) is int):
        return derived_code(fingerprint, origin[0], origin[1])
    return None


class UnitIdentity:
    """The unit codes of one crawl's requests (see the module docstring).

    ``fingerprint`` is the crawler's ``request_fingerprinter.fingerprint``.
    """

    def __init__(self, fingerprint: Callable[[Request], bytes]) -> None:
        self.fingerprint = fingerprint
        # Parent unit -> {fingerprint code: dont_filter requests it yielded so far}.
        self._counts: dict[int, dict[int, int]] = {}
        # ROOT's counters: fingerprints seen once (8 bytes each), and the few seen again.
        self._root_once = DoneSet(timed=False)
        self._root_more: dict[int, int] = {}

    def plain_code(self, request: Request) -> int:
        """The code of ``request``'s fingerprint (the unit it is without ``dont_filter``)."""
        return fingerprint_code(self.fingerprint(request))

    def tag(self, request: Request, parent: int | None) -> None:
        """``request`` (``dont_filter``) was yielded by the callback or errback of unit
        ``parent`` (None: of a request that is no unit): give it its origin. A unit key in
        its ``meta`` was copied from another request (``meta=response.meta``): dropped."""
        meta = request.meta
        if meta.get(IGNORE_META):
            return
        meta.pop(UNIT_META, None)
        p = ROOT if parent is None else parent
        meta[ORIGIN_META] = [p, self._next(p, self.plain_code(request))]

    def unfiltered_code(self, request: Request, live: Container[int]) -> tuple[int, bool]:
        """``(unit, continued)`` of a ``dont_filter`` request being scheduled: ``continued``
        when it is a copy of the request of unit ``unit``, which is in ``live`` (a retry).
        Sets its origin in ``meta`` when it is a new unit."""
        fingerprint = self.fingerprint(request)
        plain = fingerprint_code(fingerprint)
        meta = request.meta
        unit = meta.get(UNIT_META)
        origin = meta.get(ORIGIN_META)
        if unit is None:
            code = _origin_code(fingerprint, origin)
            if code is not None:  # yielded by a callback: tagged with its origin
                return code, False
            parent = ROOT
        elif unit == plain or unit == _origin_code(fingerprint, origin):
            if unit in live:
                return unit, True
            parent = ROOT  # a copy of a request finished or gone: a request of its own
        else:  # a redirect of unit ``unit`` (or a request with another's meta)
            parent = unit if unit in live else ROOT
        n = self._next(parent, plain)
        meta[ORIGIN_META] = [parent, n]
        return derived_code(fingerprint, parent, n), False

    def journaled_code(self, request: Request) -> int:
        """The unit of a request rebuilt from its journaled payload, before it is scheduled
        again: the one in its ``meta`` (payloads journaled before the unit was set there:
        the one its fingerprint and origin give)."""
        meta = request.meta
        unit = meta.get(UNIT_META)
        if type(unit) is int:
            return unit
        fingerprint = self.fingerprint(request)
        if request.dont_filter:
            code = _origin_code(fingerprint, meta.get(ORIGIN_META))
            if code is not None:
                return code
        return fingerprint_code(fingerprint)

    def forget(self, parent: int) -> None:
        """Unit ``parent`` is done (or left this run): it yields nothing more."""
        self._counts.pop(parent, None)

    def _next(self, parent: int, plain: int) -> int:
        """How many ``dont_filter`` requests with fingerprint code ``plain`` ``parent`` has
        yielded before this one in this run (counting this one)."""
        if parent == ROOT:
            if self._root_once.add(plain):
                return 0
            n = self._root_more.get(plain, 1)
            self._root_more[plain] = n + 1
            return n
        counts = self._counts.get(parent)
        if counts is None:
            counts = self._counts[parent] = {}
        n = counts.get(plain, 0)
        counts[plain] = n + 1
        return n
