"""How big a crawl will be: an estimate of its final size while its frontier still grows.

A crawl knows the units it has found (done and pending), not those its pending units
will find. This module learns how the frontier grows, depth by depth: how many new
units a finished unit at depth ``d`` found at depth ``d + 1`` (recently: the ratio
falls as more of the site's links turn out to be known already; over the last 50 units
done at that depth, or over the last 5 when that is higher, so that units finding more
than those before them count at once, erring on the side of a bigger crawl), and from
those ratios how many units each pending unit will bring in, down to ``DEPTH_LIMIT``:

    E(d) = r(d) * (1 + E(d + 1)),   E(limit) = 0
    estimate = done + lost + sum over d of pending(d) * (1 + E(d))

A depth no finished unit has reached yet gets the ratio of the deepest one that has,
at most 1 and halved at each further level (a crawl has to end; a depth-first crawl,
Scrapy's default, reaches its deepest levels early). A completed earlier run of the same
stage is the best prior there is: while the units found stay below its total, that
total is the estimate.

**By kind.** When the crawl says which callback each unit goes to and which callback's
unit found it (more than one kind), the ratios are by depth *and* kind: ``r(d, k)``
units found per unit of kind ``k`` done at depth ``d``, split among kinds as the units of
``k`` have split theirs, so ``E(d, k) = sum over k' of r(d, k) * share(k -> k') *
(1 + E(d + 1, k'))``. A kind none of whose units is done at a depth yet (the next listing
page, while its level's details are being fetched) gets what its units found elsewhere;
a kind whose units found nothing (detail pages) is expected to find nothing.

**By URL shape.** A kind is a callback, or a callback and a URL shape (:func:`url_shape`:
``/list?page=#``, ``/item/#``) once ``SHAPE_UNITS`` units of that callback and shape were
found (up to ``MAX_SHAPE_KINDS`` shapes): a spider with one callback for every link has
its listing pages and its detail pages told apart by their URLs. The units of a shape
found before it is split out, what they found and the counts of those that found them
move to its kind, so a unit counts once. Pages named by words (``/post/some-title``) each
have a shape of their own, never shared by enough units: they stay with their callback.

**Chains.** A kind whose units keep bringing units of their own kind, one each (a
listing page the next listing page), and whose deepest unit done found units of its kind
deeper, is a chain, and how long it goes on is not in the counts. It is taken to go on
for as many levels again as it has run so far, from its first to its deepest (the median
of "we are somewhere in its middle"), each as wide as its levels were on average (one
unit for next-page links), counted once for the kind, not once per pending unit of it
(hundreds of pending related-product pages, each finding one more, are one chain, not
hundreds), and ``CHAIN_HIGH``
(3) times that for the high estimate; the estimate is then wide. The percent counts on a
total leaning to that high end (it errs low); the ETA on the chain's median run
(``median_high``, ``eta_total``): right at half the chain, as often too long as too
short. With one kind only in use (a spider following every link with one callback, its
URLs of one shape or of none shared) every growing crawl would look like a chain: the
depth profile alone is used.

**Paths deeper than a hierarchy.** A kind whose units span ``GRAPH_LEVELS`` levels or more
and is not (or no longer) a chain followed links sideways (related pages of related
pages): its ratios by depth are those of the path the crawl took. Its pending units are
each expected to bring at most ``r / (1 - r)`` of its kind, ``r`` the units of its kind
its last ``RECENT_UNITS`` done found each, when ``r < 1``, else as many again as are done,
spread over its pending units. The same ``r / (1 - r)`` bounds a chain that is dying out.

**After a resume** the counts restored are those journaled last, up to a second before
an interruption: :func:`reconcile` makes their pending units those the stage resumes (a
unit done in that second is counted done, not pending for ever; one found then, found).

The estimate comes with a range: ``low`` is what is known (done, lost and pending:
the crawl is at least that big), ``high`` uses the ratios over all finished units
(older ratios are higher on a site whose links repeat) and the longer chains. Between
them the estimate is ``wide`` when they differ by more than a tenth (a ``~`` in the
progress line).

**Links not all opened yet** (the high end, by depth). Scrapy's LIFO order takes a page's
last links first; those may find nothing while its first ones are the fan-out (a home
page's 100 links: its 81 last pages without links, then 19 with 100 each). While fewer
units are done at a depth than a unit of the depth above found on average (not one
page's worth of its links opened), its pending units may each find as many as that:
``high`` counts them with the ratio of the depth above (a ratio seen, never more) where
theirs is lower, and the estimate is wide until that many are done.

**What is shown** (:class:`ShownTotal`): while the estimate is wide, the total halfway
from the estimate to the high one (the percent errs low); the percent falls back by at
most ``MAX_FALL`` points a second unless the units found leave no choice; below 99 %
while the model may find more. Pure arithmetic: the crawl feeds the counts
(:mod:`scrapy_checkpoint.crawl`).
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from typing import Any

#: A URL shape (:func:`url_shape`) is a kind of its own, apart from its callback's, once
#: this many units of that callback and shape were found; before, and for a shape whose
#: units are each alone of their shape (word slugs), its units count with their callback's.
SHAPE_UNITS = 5
#: Shapes counted apart, at most (units of other shapes count with their callback's).
MAX_SHAPE_KINDS = 32
#: Shapes followed until they have SHAPE_UNITS units, at most (then forgotten, all at once).
MAX_CANDIDATES = 4096
#: Units done at a depth over which its recent ratio is measured (at least).
RECENT_UNITS = 50
#: ... and over the last few, when that is higher: units that now find more than those
#: before them (a fan-out's first pages, which Scrapy's LIFO order takes last) count at once.
SHORT_UNITS = 5
#: Beyond the deepest depth with finished units, the ratio is halved per level.
UNSEEN_DECAY = 0.5
#: The deepest level the expectation looks at without a DEPTH_LIMIT.
MAX_DEPTH = 64
#: The estimate is wide when ``(high - low) / estimate`` is above this.
WIDE = 0.10
#: An estimate is at most this many times what is known: a site whose every level finds
#: more than it was (an endless one) is "far bigger than known", not a number of 40 digits.
MAX_FACTOR = 1000
#: Kinds (callbacks) counted apart, at most; the others are counted together.
MAX_KINDS = 64
OTHER_KIND = "*"
#: Units of a kind done before its ratio stands for its units at depths not done yet.
KIND_UNITS = 5
#: A kind is a chain when its units bring at least this many of its kind each, over at
#: least CHAIN_UNITS done.
CHAIN_RATIO = 0.5
CHAIN_UNITS = 1
#: The high estimate runs a chain this many times as many more levels as it has run.
CHAIN_HIGH = 3.0
#: Levels a chain is followed beyond where it is, at most.
CHAIN_LEVELS = 1024
#: A kind whose units span at least this many levels, not a chain, and lately finding fewer
#: than one unit of their kind each, is expected to bring at most r / (1 - r) of its kind
#: per pending unit (a branching process dying out), whatever its ratios by depth say.
GRAPH_LEVELS = 16
#: A chain whose levels below its first hold at most this many units per unit done at its
#: first is one chain per unit there: its first level's pending units head chains of their own.
HEAD_WIDTH = 1.5
#: The key of a kind's samples of units of its own kind found (at every depth).
OWN = -1
#: The shown percent falls by at most this many points a second.
MAX_FALL = 2.0
#: While the estimate is wide, the shown total leans this far from the model to the high one.
WIDE_LEAN = 0.5
#: The percent shown while more may be found stays below this: "98.9 %" at most, not a
#: "99.0 %" by rounding.
ALMOST_DONE = 98.9


@dataclass(frozen=True)
class Estimate:
    """An estimate of a crawl's final size, in units (see the module docstring)."""

    total: int
    low: int
    high: int
    #: True when the range is wide (the line shows ``~``).
    wide: bool
    #: Where it comes from: ``"model"``, ``"history"`` or ``"known"`` (nothing left to find).
    source: str
    #: The high end with the chains run only as long again as they have (their median):
    #: what the ETA leans to (None: ``high``). See :class:`ShownTotal`.
    median_high: int | None = None
    #: The size the ETA counts on, when it is not ``total`` (a chain's median run, where the
    #: percent counts on a longer one). Set by :class:`ShownTotal`.
    eta_total: int | None = None

    @property
    def eta_size(self) -> int:
        """The size the ETA counts on: ``eta_total``, or ``total``."""
        return self.total if self.eta_total is None else self.eta_total


class _Kind:
    """The counts of one kind of unit (a callback): added and done per depth, units found
    at depth ``d + 1`` by its units at depth ``d``, and the kinds of the units it found."""

    __slots__ = ("added", "children", "done", "found")

    def __init__(self) -> None:
        self.added: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.found: dict[int, int] = {}
        self.children: dict[str, int] = {}

    def to_json(self) -> dict[str, dict[str, int]]:
        return {"added": _keyed(self.added), "done": _keyed(self.done),
                "found": _keyed(self.found), "children": dict(self.children)}

    @classmethod
    def from_json(cls, value: Any) -> _Kind:
        kind = cls()
        if isinstance(value, dict):
            kind.added = _int_counts(value.get("added"))
            kind.done = _int_counts(value.get("done"))
            kind.found = _int_counts(value.get("found"))
            children = value.get("children")
            if isinstance(children, dict):
                kind.children = {str(k): n for k, n in children.items()
                                 if type(n) is int and n >= 0}
        return kind


#: In a URL's path and query: an id-like segment or value (8 or more hexadecimal digits and
#: dashes, at least one a decimal digit: a hash, a UUID), or a run of decimal digits.
_NUMBERS = re.compile(
    r"(?<=[/=])(?=[0-9a-fA-F-]*[0-9])[0-9a-fA-F-]{8,}(?=[/?&;]|$)|[0-9]+")


def url_shape(url: str) -> str:
    """The shape of ``url``, for the kinds of units: its path and query (no scheme, host nor
    fragment), each run of decimal digits a ``#`` and each id-like segment or query value
    (8 or more hexadecimal digits and dashes, one a decimal digit: a hash, a UUID) a
    single ``#``.

    ``http://h/list?page=12`` -> ``/list?page=#``, ``http://h/item/7`` -> ``/item/#``,
    ``http://h/post/some-title`` -> ``/post/some-title`` (pages named by words each have
    their own shape: such a shape becomes a kind only once enough units share it,
    see :data:`SHAPE_UNITS`).
    """
    stem = url.rstrip(_SUFFIX)
    suffix = url[len(stem):]
    head = stem.rstrip("0123456789")
    if (len(head) < len(stem) and head[-1:] in {"/", "="}
            and (not suffix or suffix[0] == ".")):
        # A number after "/" or "=", then only a suffix such as ".html": the shape is the
        # one of the URL up to the number, a "#" and the suffix (the URL up to the number
        # looked at once, then remembered).
        shape = _SHAPE_BY_HEAD.get(head)
        if shape:
            return shape + suffix if suffix else shape
        if shape is None:
            shape, prefix = _url_shape(url), _url_shape(head) + "#"
            if len(_SHAPE_BY_HEAD) >= 1024:
                _SHAPE_BY_HEAD.clear()
            _SHAPE_BY_HEAD[head] = prefix if "#" not in head and shape == prefix + suffix else ""
            return shape
    return _url_shape(url)


#: What may follow the last number of a URL whose shape :func:`url_shape` remembers.
_SUFFIX = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ."
#: :func:`url_shape` of the URL up to its last number, and a "#", by that part of the URL
#: ("": its last number does not simply become a "#", see :func:`url_shape`). The URLs of
#: a crawl mostly differ in such a number: one regular expression less for each.
_SHAPE_BY_HEAD: dict[str, str] = {}


def _url_shape(url: str) -> str:
    """:func:`url_shape`, worked out."""
    _, sep, rest = url.partition("://")
    if sep:
        slash = rest.find("/")
        rest = rest[slash:] if slash >= 0 else "/"
    else:
        rest = url
    rest = rest.partition("#")[0]
    return _NUMBERS.sub("#", rest)


class _Candidate:
    """The counts of a URL shape's units (of one callback) not counted apart yet: also
    counted in their callback's kind, and moved from it to the shape's own kind when it is
    split out. ``parents``: (callback, shape) of the units that found them -> how many."""

    __slots__ = ("added", "children", "done", "found", "parents", "units")

    def __init__(self) -> None:
        self.units = 0
        self.added: dict[int, int] = {}
        self.done: dict[int, int] = {}
        self.found: dict[int, int] = {}
        self.children: dict[str, int] = {}
        self.parents: dict[tuple[str, str], int] = {}


class DepthProfile:
    """Units added and done per depth and per kind, and recent discovery ratios (see the
    module doc).

    ``added[d]``/``done[d]`` are cumulative over every run of the stage (the crawl keeps
    them with the stage totals), and so are the counts by kind (:attr:`kinds`, by callback
    name); :meth:`sample` is called as units finish, to follow the recent ratio of each
    depth and kind.
    """

    def __init__(self, added: dict[int, int] | None = None, done: dict[int, int] | None = None,
                 depth_limit: int = 0, history_total: int | None = None,
                 kinds: dict[str, _Kind] | None = None) -> None:
        self.added: dict[int, int] = dict(added or {})
        self.done: dict[int, int] = dict(done or {})
        self.depth_limit = depth_limit
        self.history_total = history_total
        #: kind (callback name) -> its counts.
        self.kinds: dict[str, _Kind] = dict(kinds or {})
        #: (kind, depth) -> (done, found) samples, oldest first; kind None: every kind.
        self._samples: dict[tuple[str | None, int], deque[tuple[int, int]]] = {}
        #: (callback, URL shape) -> the name of the shape's own kind (``"callback shape"``),
        #: for the shapes split out; and the shapes followed until they are.
        self._shapes: dict[tuple[str, str], str] = {}
        self._candidates: dict[tuple[str, str], _Candidate] = {}
        #: callback -> the names of its shapes' kinds.
        self._split_callbacks: dict[str, list[str]] = {}
        for name in self.kinds:  # restored: the shapes split out before
            callback, sep, shape = name.partition(" ")
            if sep:
                self._shapes[(callback, shape)] = name
                self._split_callbacks.setdefault(callback, []).append(name)

    def _kind(self, name: str) -> _Kind:
        kind = self.kinds.get(name)
        if kind is None:
            if len(self.kinds) >= MAX_KINDS:
                name = OTHER_KIND
                kind = self.kinds.get(name)
            if kind is None:
                kind = self.kinds[name] = _Kind()
        return kind

    def kind_of(self, kind: str, shape: str = "") -> str:
        """The name of the kind units of callback ``kind`` and URL shape ``shape`` count in:
        the shape's own (``"kind shape"``) once it is split out, else ``kind``."""
        return self._shapes.get((kind, shape), kind) if shape else kind

    def add(self, depth: int, kind: str = "", parent: str | None = None, n: int = 1,
            shape: str = "", parent_shape: str = "") -> None:
        """``n`` new units at ``depth``, of callback ``kind`` and URL shape ``shape``
        (:func:`url_shape`; "": not known), were found (by units of callback ``parent`` and
        shape ``parent_shape``, at ``depth - 1``; ``parent`` None: not known, e.g. start
        requests). A shape becomes a kind of its own once SHAPE_UNITS of its units were
        found; until then its units count in their callback's kind."""
        self.added[depth] = self.added.get(depth, 0) + n
        name, candidate = kind, None
        if shape:
            key = (kind, shape)
            split = self._shapes.get(key)
            if split is not None:
                name = split
            else:
                candidate = self._candidates.get(key)
                if candidate is None:
                    if len(self._candidates) >= MAX_CANDIDATES:
                        self._candidates.clear()
                    candidate = self._candidates[key] = _Candidate()
                candidate.units += n
                if (candidate.units >= SHAPE_UNITS and len(self._shapes) < MAX_SHAPE_KINDS
                        and len(self.kinds) < MAX_KINDS and kind in self.kinds):
                    name = self._split_out(kind, shape, candidate)
                    candidate = None
        counts = self._kind(name).added
        counts[depth] = counts.get(depth, 0) + n
        if parent is not None and depth > 0:
            parent_key = (parent, parent_shape)
            by = self._kind(self.kind_of(parent, parent_shape))
            by.found[depth - 1] = by.found.get(depth - 1, 0) + n
            by.children[name] = by.children.get(name, 0) + n
            finder = self._candidates.get(parent_key) if parent_shape else None
            if finder is not None:
                finder.found[depth - 1] = finder.found.get(depth - 1, 0) + n
                finder.children[name] = finder.children.get(name, 0) + n
            if candidate is not None:
                candidate.parents[parent_key] = candidate.parents.get(parent_key, 0) + n
        if candidate is not None:
            candidate.added[depth] = candidate.added.get(depth, 0) + n

    def _split_out(self, kind: str, shape: str, candidate: _Candidate) -> str:
        """Make ``shape``'s units (of callback ``kind``) a kind of their own: its counts move
        from ``kind``'s to it, and so do the units it found, and its units in the counts of
        the kinds that found them. Its name."""
        name = f"{kind} {shape}"
        self._shapes[(kind, shape)] = name
        self._split_callbacks.setdefault(kind, []).append(name)
        del self._candidates[(kind, shape)]
        own, rest = self._kind(name), self.kinds[kind]
        for attr in ("added", "done", "found"):
            _move(getattr(candidate, attr), getattr(rest, attr), getattr(own, attr))
        _move(candidate.children, rest.children, own.children)
        for (callback, parent_shape), n in candidate.parents.items():
            by = self.kinds.get(self.kind_of(callback, parent_shape))
            if by is not None:
                _move({kind: n}, by.children, by.children, to=name)
            finder = self._candidates.get((callback, parent_shape))
            if finder is not None:
                _move({kind: n}, finder.children, finder.children, to=name)
        for key in [k for k in self._samples if k[0] == kind]:  # its counts changed
            del self._samples[key]
        return name

    def finish(self, depth: int, kind: str = "", n: int = 1, shape: str = "") -> None:
        """``n`` units at ``depth``, of callback ``kind`` and URL shape ``shape``, are done.
        A unit counted in another kind of its callback than its shape gives now (done at
        another URL than it was found at, a redirect's; or found before a resume, or before
        the shapes followed were forgotten, and its shape split out since) is counted done
        where units of its callback are pending at that depth, its shape's kind first."""
        self.done[depth] = self.done.get(depth, 0) + n
        name = self.kind_of(kind, shape)
        left = n
        if self._shapes and (name != kind or kind in self._split_callbacks):
            for other in (name, kind, *self._split_callbacks.get(kind, ())):
                where = self.kinds.get(other)
                pending = 0 if where is None else (
                    where.added.get(depth, 0) - where.done.get(depth, 0))
                if pending > 0 and where is not None:
                    m = min(left, pending)
                    where.done[depth] = where.done.get(depth, 0) + m
                    left -= m
                    if not left:
                        break
        if left:
            counts = self._kind(name).done
            counts[depth] = counts.get(depth, 0) + left
        if shape and name == kind:
            candidate = self._candidates.get((kind, shape))
            if candidate is not None:
                candidate.done[depth] = candidate.done.get(depth, 0) + n

    def sample(self) -> None:
        """Note the counts now, for the recent ratios (by depth, and by kind and depth
        when there are kinds)."""
        for depth, done in self.done.items():
            _note(self._samples, (None, depth), done, self.added.get(depth + 1, 0))
        if len(self.kinds) > 1:
            for name, kind in self.kinds.items():
                for depth, done in kind.done.items():
                    _note(self._samples, (name, depth), done, kind.found.get(depth, 0))
                # At every depth: units of its own kind found (a chain's links; see own_ratio)
                _note(self._samples, (name, OWN), sum(kind.done.values()),
                      kind.children.get(name, 0))

    def _in_use(self) -> int:
        """How many kinds have units (a callback's kind may have none left once its units'
        shapes are split out)."""
        return sum(1 for kind in self.kinds.values() if kind.added or kind.done)

    def _attributed(self) -> bool:
        """True when the units found are attributed to the kinds that found them (the
        crawl says which callback yielded each request)."""
        return any(kind.found for kind in self.kinds.values())

    def ratio(self, depth: int, *, recent: bool, kind: str | None = None) -> float | None:
        """New units found at ``depth + 1`` per unit done at ``depth`` (by units of ``kind``;
        None: of every kind). None: none done."""
        if kind is None:
            done = self.done.get(depth, 0)
            found = self.added.get(depth + 1, 0)
        else:
            counts = self.kinds[kind]
            done = counts.done.get(depth, 0)
            found = counts.found.get(depth, 0)
        if not done:
            return None
        samples = self._samples.get((kind, depth))
        ratio = found / done
        if recent and samples:
            old_done, old_found = samples[0]
            if done - old_done >= RECENT_UNITS:
                ratio = max(0.0, (found - old_found) / (done - old_done))
            if SHORT_UNITS:
                for old_done, old_found in reversed(samples):
                    if done - old_done >= SHORT_UNITS:
                        ratio = max(ratio, (found - old_found) / (done - old_done))
                        break
        return ratio

    def own_ratio(self, kind: str) -> float | None:
        """Units of ``kind`` its units found per unit of it done, over its last
        ``RECENT_UNITS`` (or more) done at any depth; None until that many were sampled."""
        samples = self._samples.get((kind, OWN))
        if not samples:
            return None
        done, found = samples[-1]
        old_done, old_found = samples[0]
        if done - old_done < RECENT_UNITS:
            return None
        return max(0.0, (found - old_found) / (done - old_done))

    def pending(self, depth: int) -> int:
        return max(0, self.added.get(depth, 0) - self.done.get(depth, 0))

    def chains(self) -> dict[str, int]:
        """Kinds whose units keep bringing units of their own kind (a listing page the next
        listing page): kind -> the levels its chain has run so far. Only with more than one
        kind whose finds are attributed (with one kind, every growing crawl looks like one)."""
        if self._in_use() < 2 or not self._attributed():
            return {}
        chains = {}
        for name, kind in self.kinds.items():
            done = sum(kind.done.values())
            if done < CHAIN_UNITS or kind.children.get(name, 0) < CHAIN_RATIO * done:
                continue
            if _still_going(kind):
                chains[name] = max(kind.added) + 1 - min(kind.added)
        return chains

    def expected(self, *, recent: bool, chain_factor: float = 1.0,
                 unopened: bool = False) -> int:
        """Units still to be done: each pending unit and what it is expected to find. A
        chain (:meth:`chains`) is expected to run ``chain_factor`` times as many more levels
        as it has run so far. ``unopened`` (the high estimate, by depth): the pending units
        of a depth fewer of whose units are done than a unit of the depth above found (a
        page's links not all opened yet) may each find as many as those did."""
        depths = set(self.added) | set(self.done)
        if not depths:
            return 0
        deepest_seen = max((d for d in self.done if self.done[d]), default=-1)
        top = self.depth_limit if self.depth_limit else min(MAX_DEPTH, max(depths) + MAX_DEPTH // 2)
        by_kind = self._in_use() > 1 and self._attributed()
        if not by_kind:
            return self._expected_by_depth(recent, depths, deepest_seen, top, unopened)
        chains = self.chains()
        horizon = {name: max(self.kinds[name].added) + min(CHAIN_LEVELS, math.ceil(
            chain_factor * levels)) for name, levels in chains.items()}
        if not self.depth_limit:  # every level with units, and where the chains may go
            top = max(top, *depths, *horizon.values())
        kinds = self.kinds
        names = list(kinds)
        totals = {n: (sum(k.done.values()), sum(k.found.values()), sum(k.children.values()))
                  for n, k in kinds.items()}
        top_added = {name: max(kinds[name].added) for name in chains}
        width, most = _bounds(kinds, chains, horizon, top_added,
                              {name: self.own_ratio(name) for name in kinds})
        heads = {name: _heads(kinds[name]) for name in chains}
        deepest = {n: max((d for d, m in kinds[n].done.items() if m), default=-1) for n in names}
        below: dict[str, float] = dict.fromkeys(names, 0.0)  # E(d + 1, kind)
        remaining = 0.0
        for depth in range(top, -1, -1):
            here: dict[str, float] = {}
            for name in names:
                kind = kinds[name]
                done, found, children = totals[name]
                if self.depth_limit and depth >= self.depth_limit:
                    r = 0.0
                elif kind.done.get(depth):
                    r = self.ratio(depth, recent=recent, kind=name) or 0.0
                elif done >= (1 if name in chains else KIND_UNITS):
                    # none of its units done at this depth: what its units find
                    r = found / done
                    if name in chains:
                        if depth > horizon[name]:
                            r = 0.0
                    elif depth > deepest[name]:
                        r = min(r, 1.0) * UNSEEN_DECAY ** (depth - deepest[name])
                else:
                    r = 0.0 if depth <= deepest_seen else UNSEEN_DECAY ** (depth - deepest_seen)
                if not children:  # what it finds is not known yet: no further
                    here[name] = r
                    continue
                # Each unit finds r units, of the kinds its units found so far. A chain's
                # units of its own kind are not each unit's: see the levels below.
                e = own = 0.0
                for child, n in kind.children.items():
                    if child == name:
                        if name in chains:
                            continue
                        own = r * n / children * (1.0 + below.get(child, 0.0))
                    e += r * n / children * (1.0 + below.get(child, 0.0))
                if name in most:  # at most that many of its kind, each with the rest
                    other = e - own
                    e = min(e, most[name] * (1.0 + other) + other)
                here[name] = e
            below = here
            for name in names:
                pending = kinds[name].added.get(depth, 0) - kinds[name].done.get(depth, 0)
                if pending > 0:
                    remaining += pending * (1.0 + here[name])
                    if name in chains:  # chains of its kind of their own, if it runs several
                        remaining += pending * _levels_ahead(heads[name], depth, top_added[
                            name]) * (1.0 + here[name])
                if name in chains and top_added[name] < depth <= horizon[name]:
                    # A level the chain has still to run: as many units of its kind as its
                    # levels so far had on average (one for a chain of listing pages), each
                    # with what it finds of other kinds. Once per level, not once per
                    # pending unit: a kind whose hundreds of pending units each find one
                    # more (related products of related products, crawled depth first) runs
                    # one chain as wide as its levels, not hundreds of chains.
                    remaining += width[name] * (1.0 + here[name])
        return round(remaining)

    def _expected_by_depth(self, recent: bool, depths: set[int], deepest_seen: int,
                           top: int, unopened: bool = False) -> int:
        ratios: dict[int, float] = {}
        last = 0.0
        for depth in range(0, top + 1):
            r = self.ratio(depth, recent=recent) if depth <= deepest_seen else None
            if r is None:  # not reached yet: at most one unit per unit, fading
                r = min(last, 1.0) * UNSEEN_DECAY if depth > deepest_seen else 0.0
            if self.depth_limit and depth >= self.depth_limit:
                r = 0.0
            ratios[depth] = r
            last = r
        descendants = 0.0  # E(d), from the deepest level up
        remaining = 0.0
        for depth in range(top, -1, -1):
            below = descendants  # E(depth + 1)
            descendants = ratios[depth] * (1.0 + below)
            pending = self.pending(depth)
            each = descendants
            if unopened and pending and depth >= 1 and not (
                    self.depth_limit and depth >= self.depth_limit):
                above = self.ratio(depth - 1, recent=False) or 0.0
                if above > ratios[depth] and self.done.get(depth, 0) < above:
                    each = above * (1.0 + below)
            remaining += pending * (1.0 + each)
        for depth in depths:
            if depth > top:
                remaining += self.pending(depth)
        return round(remaining)

    def estimate(self, done: int, pending: int, lost: int) -> Estimate:
        """The estimate for a crawl with ``done``, ``pending`` and ``lost`` units now."""
        known = done + pending + lost
        if not pending:
            return Estimate(known, known, known, False, "known")
        bound = known * MAX_FACTOR
        model = min(bound, max(known, done + lost + self.expected(recent=True)))
        high = min(bound, max(model, done + lost + self.expected(
            recent=False, chain_factor=CHAIN_HIGH, unopened=True)))
        if self.history_total is not None and known <= self.history_total:
            total = max(known, self.history_total)
            return Estimate(total, known, max(high, total), False, "history")
        wide = (high - known) > WIDE * model
        median_high = None
        if self.chains():  # the ETA: the chains' median run, not the longer one
            median_high = min(high, max(model, done + lost + self.expected(
                recent=False, chain_factor=1.0, unopened=True)))
        return Estimate(model, known, high, wide, "model", median_high)

    # -- kept with the stage --------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The counts, as attached data (JSON): what :meth:`from_json` restores, with the
        samples of the recent ratios (so a resumed crawl's first estimates are as good)."""
        return {"added": _keyed(self.added), "done": _keyed(self.done),
                "kinds": {name: kind.to_json() for name, kind in self.kinds.items()},
                # the start of each recent window: all the ratios need of the samples
                "windows": [[name, depth, *self._starts(name, depth, samples)]
                            for (name, depth), samples in self._samples.items() if samples]}

    def _starts(self, name: str | None, depth: int,
                samples: deque[tuple[int, int]]) -> list[int]:
        """Where the recent windows of ``(name, depth)`` start: the oldest sample, and the
        newest one at least SHORT_UNITS units back, flat (done, found, done, found)."""
        done = (self.done if name is None else self.kinds[name].done).get(depth, 0)
        short = next((s for s in reversed(samples) if done - s[0] >= SHORT_UNITS), samples[0])
        return [*samples[0], *short] if short != samples[0] else [*samples[0]]

    @classmethod
    def from_json(cls, value: Any, *, depth_limit: int = 0,
                  history_total: int | None = None) -> DepthProfile:
        """A profile from :meth:`to_json`'s data (anything else: an empty one)."""
        value = value if isinstance(value, dict) else {}
        kinds = value.get("kinds")
        profile = cls(_int_counts(value.get("added")), _int_counts(value.get("done")),
                      depth_limit=depth_limit, history_total=history_total,
                      kinds={str(name): _Kind.from_json(k) for name, k in kinds.items()}
                      if isinstance(kinds, dict) else None)
        if not profile.kinds and (profile.added or profile.done):  # counts of a depth profile
            kind = profile.kinds[""] = _Kind()
            kind.added, kind.done = dict(profile.added), dict(profile.done)
        windows = value.get("windows")
        for entry in windows if isinstance(windows, list) else ():
            try:
                name, depth, *starts = entry
                key = (None if name is None else str(name), int(depth))
                points = [(int(starts[i]), int(starts[i + 1])) for i in (0, 2)[:len(starts) // 2]]
                if points:
                    profile._samples[key] = deque(points)
            except (TypeError, ValueError):
                continue
        return profile


def reconcile(profile: DepthProfile, pending: dict[tuple[int, str, str], int]) -> None:
    """Make the pending units of ``profile`` those of the stage: ``pending`` is
    ``(depth, callback, URL shape) -> how many`` units are pending (read from their
    records at a resume). The counts restored are those journaled last, up to a second
    before an interruption: a unit finished since is pending in them though done, and
    would be expected for ever to find as many as its kind does (a listing page: a
    whole chain again); it is counted done. A unit found since is not in them: it is
    counted found, by the kinds that find its kind among those with units finished
    since at the depth above (as their units have found it), else among all those that
    find its kind (its finders were found and finished since: levels of a chain run in
    that second are in no count, and :meth:`DepthProfile.chains` counts a chain's levels
    from its first to its deepest)."""
    real: dict[tuple[int, str], int] = {}
    for (depth, callback, shape), n in pending.items():
        key = (depth, profile.kind_of(callback, shape))
        real[key] = real.get(key, 0) + n
    finished: dict[tuple[int, str], int] = {}  # finished since, by depth and kind
    found: dict[tuple[int, str], int] = {}  # found since
    for name, kind in profile.kinds.items():
        for depth in set(kind.added) | set(kind.done):
            have = max(0, kind.added.get(depth, 0) - kind.done.get(depth, 0))
            want = real.pop((depth, name), 0)
            if have > want:
                finished[(depth, name)] = have - want
            elif want > have:
                found[(depth, name)] = want - have
    found.update(real)  # of a kind or depth the counts had none of
    for (depth, name), n in finished.items():
        kind = profile.kinds[name]
        kind.done[depth] = kind.done.get(depth, 0) + n
        profile.done[depth] = profile.done.get(depth, 0) + n
    for (depth, name), n in found.items():
        counts = profile._kind(name).added
        counts[depth] = counts.get(depth, 0) + n
        profile.added[depth] = profile.added.get(depth, 0) + n
        if not depth:  # a start request's: found by none
            continue
        finders = {by: profile.kinds[by].children.get(name, 0) for (d, by) in finished
                   if d == depth - 1 and profile.kinds[by].children.get(name, 0)}
        if not finders:  # found by units both found and finished since
            finders = {by: k.children[name] for by, k in profile.kinds.items()
                       if k.children.get(name, 0)}
        weight = sum(finders.values())
        left = n
        for i, (by, w) in enumerate(finders.items()):
            m = left if i == len(finders) - 1 else min(left, round(n * w / weight))
            if m <= 0:
                continue
            left -= m
            finder = profile.kinds[by]
            finder.found[depth - 1] = finder.found.get(depth - 1, 0) + m
            finder.children[name] = finder.children.get(name, 0) + m


class ShownTotal:
    """The total the progress shows, from one estimate to the next: the percent it gives
    falls by at most ``max_fall`` points a second, unless the units known (done, pending
    and lost) leave no choice (the total is never below them), and it stays below 99 %
    while there is work left and the model may find more.

    While the estimate is wide the total is between the model's and the high one
    (``lean``: 0 the model's, 1 the high one): the percent errs on the side of the crawl
    being bigger, not smaller.
    """

    __slots__ = ("at", "lean", "max_fall", "percent")

    def __init__(self, max_fall: float = MAX_FALL, lean: float = WIDE_LEAN) -> None:
        self.max_fall = max_fall
        self.lean = lean
        #: The percent last shown (None: none yet), and when (monotonic seconds).
        self.percent: float | None = None
        self.at: float | None = None

    def update(self, done: int, estimate: Estimate, now: float) -> Estimate:
        """The estimate to show at ``now`` (seconds) with ``done`` units processed (its
        total adjusted, see the class doc)."""
        last, at = self.percent, self.at
        self.at = now
        if estimate.source == "known" or estimate.total <= 0:
            self.percent = 100.0 * done / estimate.total if estimate.total > 0 else None
            return estimate
        total = eta = estimate.total
        if estimate.wide:
            total = max(total, round(total + self.lean * (estimate.high - total)))
            median_high = estimate.high if estimate.median_high is None else estimate.median_high
            eta = max(eta, round(eta + self.lean * (median_high - eta)))
        extra = total - eta  # the chains' longer run: in the percent, not in the ETA
        if last is not None and done > 0:
            floor = last - self.max_fall * max(0.0, now - at if at is not None else 0.0)
            if floor > 0 and 100.0 * done / total < floor:
                total = max(estimate.low, math.floor(100.0 * done / floor))
        if done and estimate.source == "model" and 100.0 * done / total >= ALMOST_DONE:
            # Nothing says no more will be found: not "99 %" until the stage is complete.
            total = max(total, math.floor(100.0 * done / ALMOST_DONE) + 1)
        self.percent = 100.0 * done / total
        eta_total = None
        if extra > 0:
            eta_total = max(estimate.low, min(total, estimate.total), total - extra)
        if total == estimate.total and eta_total is None:
            return estimate
        return Estimate(total, estimate.low, max(estimate.high, total), estimate.wide,
                        estimate.source, estimate.median_high,
                        eta_total if eta_total != total else None)


def _bounds(kinds: dict[str, _Kind], chains: dict[str, int], horizon: dict[str, int],
            top_added: dict[str, int], own: dict[str, float | None]
            ) -> tuple[dict[str, float], dict[str, float]]:
    """For :meth:`DepthProfile.expected`: each chain's units per level still to run, and the
    units of its own kind a pending unit of a kind deeper than a hierarchy may bring at most
    (``own``: each kind's :meth:`~DepthProfile.own_ratio`)."""
    done = {name: sum(kind.done.values()) for name, kind in kinds.items()}
    waiting = {name: sum(kind.added.values()) - done[name] for name, kind in kinds.items()}
    width = {name: max(1.0, done[name] / levels) for name, levels in chains.items()}
    for name in chains:
        # A chain whose units have lately found fewer than one of its kind each is dying
        # out: its pending units are expected to bring r / (1 - r) more each (related pages
        # once most of a site is known), if that is less than its levels to run.
        r, levels = own[name], horizon[name] - top_added[name]
        if r is not None and r < 1.0 and levels > 0:
            width[name] = min(width[name], waiting[name] * r / (1.0 - r) / levels)
    # A kind run over more levels than a site's hierarchy has (its depth is that of links
    # followed sideways, related pages of related pages), not a chain: the counts by depth
    # of the path it took, each level's ratio multiplied by the next, say nothing of its
    # pending units. At most r / (1 - r) each once its units lately found r < 1 each, and
    # until then as many again as are done, spread over its pending units.
    most = {}
    for name, kind in kinds.items():
        if name not in chains and kind.added and (
                max(kind.added) - min(kind.added) >= GRAPH_LEVELS):
            r = own[name]
            most[name] = (r / (1.0 - r) if r is not None and r < 1.0
                          else done[name] / max(1, waiting[name]))
    return width, most


def _note(store: dict[tuple[str | None, int], deque[tuple[int, int]]], key: tuple[str | None, int],
          done: int, found: int) -> None:
    samples = store.get(key)
    if samples is None:
        samples = store[key] = deque()
    if samples and samples[-1][0] == done:
        samples[-1] = (done, found)  # children found since, by units already counted
        return
    samples.append((done, found))
    span = max(RECENT_UNITS, done // 5)
    while len(samples) > 2 and done - samples[1][0] >= span:
        samples.popleft()


def _move(counts: dict[Any, int], source: dict[Any, int], target: dict[Any, int],
          to: Any = None) -> None:
    """Move ``counts`` (key -> n) from ``source`` to ``target`` (under the key ``to`` when
    given), never below 0 in ``source``."""
    for key, n in counts.items():
        m = min(n, source.get(key, 0))
        if m <= 0:
            continue
        if source[key] == m:
            del source[key]
        else:
            source[key] -= m
        dest = key if to is None else to
        target[dest] = target.get(dest, 0) + m


def _keyed(counts: dict[int, int]) -> dict[str, int]:
    return {str(d): n for d, n in counts.items()}


def _int_counts(value: Any) -> dict[int, int]:
    if not isinstance(value, dict):
        return {}
    counts = {}
    for depth, n in value.items():
        try:
            d = int(depth)
        except (TypeError, ValueError):
            continue
        if 0 <= d <= 10_000 and type(n) is int and n >= 0:
            counts[d] = n
    return counts


def _still_going(kind: _Kind) -> bool:
    """A kind bringing units of its own kind (see :meth:`DepthProfile.chains`) is a chain
    still going when its deepest units done have found units of their kind deeper (a level
    or more: the counts restored at a resume may miss the levels run in the second before
    the interruption, see :func:`reconcile`), or when, one chain per unit of its first level
    (see :func:`_heads`), one runs above that: a listing shorter than one run before it."""
    deepest = max((d for d, n in kind.done.items() if n), default=-1)
    first = _heads(kind)[0]
    return any(n for d, n in kind.added.items() if d > deepest) or (first >= 0 and any(
        n > kind.done.get(d, 0) for d, n in kind.added.items() if d > first))


def _heads(kind: _Kind) -> tuple[int, float]:
    """For a chain's kind: its first level, and the units of its kind each unit done there
    brought deeper, if every deeper level has at most about one unit per unit done at the
    first (a listing's next pages: one chain per first page); else ``(-1, 0.0)`` (a wide
    kind, related pages of related pages: one chain, counted once)."""
    levels = [d for d, n in kind.added.items() if n]
    if not levels:
        return -1, 0.0
    first = min(levels)
    started = kind.done.get(first, 0)
    deeper = [n for d, n in kind.added.items() if d > first and n]
    if not started or not deeper or max(deeper) > HEAD_WIDTH * started:
        return -1, 0.0
    return first, sum(deeper) / started


def _levels_ahead(heads: tuple[int, float], depth: int, top_added: int) -> float:
    """Units of a chain's kind each pending unit of it at ``depth`` brings, one chain per
    unit of its first level (``heads``: see :func:`_heads`): a first page waiting while
    another listing runs heads one as long as those run so far; a page of a listing running
    above where an earlier one ended (the levels below that are counted from there) goes
    on as long as those, or as long again as it has run. 0 for other chains."""
    first, run = heads
    if first < 0:
        return 0.0
    if depth == first:
        return run
    if depth < top_added:
        return max(run - (depth - first), float(depth - first))
    return 0.0


__all__ = ["DepthProfile", "Estimate", "ShownTotal", "reconcile", "url_shape"]
