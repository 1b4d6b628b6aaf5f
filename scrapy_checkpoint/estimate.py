"""How big a crawl will be: an estimate of its final size while its frontier still grows.

A crawl knows the units it has found (done and pending), not those its pending units
will find. This module learns how the frontier grows, depth by depth: how many new
units a finished unit at depth ``d`` found at depth ``d + 1`` (recently: the ratio
falls as more of the site's links turn out to be known already), and from those ratios
how many units each pending unit will bring in, down to ``DEPTH_LIMIT``:

    E(d) = r(d) * (1 + E(d + 1)),   E(limit) = 0
    estimate = done + lost + sum over d of pending(d) * (1 + E(d))

A depth no finished unit has reached yet gets the ratio of the deepest one that has,
at most 1 and halved at each further level (a crawl has to end; a depth-first crawl,
Scrapy's default, reaches its deepest levels early). A completed earlier run of the same
stage is the best prior there is: while the units found stay below its total, that
total is the estimate.

The estimate comes with a range: ``low`` is what is known (done, lost and pending:
the crawl is at least that big), ``high`` uses the ratios over all finished units
(older ratios are higher on a site whose links repeat). Between them the estimate
is ``wide`` when they differ by more than a tenth (a ``~`` in the progress line).
Pure arithmetic: the crawl feeds the counts (:mod:`scrapy_checkpoint.crawl`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

#: Units done at a depth over which its recent ratio is measured (at least).
RECENT_UNITS = 50
#: Beyond the deepest depth with finished units, the ratio is halved per level.
UNSEEN_DECAY = 0.5
#: The deepest level the expectation looks at without a DEPTH_LIMIT.
MAX_DEPTH = 64
#: The estimate is wide when ``(high - low) / estimate`` is above this.
WIDE = 0.10
#: An estimate is at most this many times what is known: a site whose every level finds
#: more than it was (an endless one) is "far bigger than known", not a number of 40 digits.
MAX_FACTOR = 1000


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


class DepthProfile:
    """Units added and done per depth, and recent discovery ratios (see the module doc).

    ``added[d]``/``done[d]`` are cumulative over every run of the stage (the crawl keeps
    them with the stage totals); :meth:`sample` is called as units finish, to follow the
    recent ratio of each depth.
    """

    def __init__(self, added: dict[int, int] | None = None, done: dict[int, int] | None = None,
                 depth_limit: int = 0, history_total: int | None = None) -> None:
        self.added: dict[int, int] = dict(added or {})
        self.done: dict[int, int] = dict(done or {})
        self.depth_limit = depth_limit
        self.history_total = history_total
        #: depth -> (done at depth d, added at depth d + 1) samples, oldest first.
        self._samples: dict[int, deque[tuple[int, int]]] = {}

    def add(self, depth: int) -> None:
        """A new unit at ``depth`` was found."""
        self.added[depth] = self.added.get(depth, 0) + 1

    def finish(self, depth: int) -> None:
        """A unit at ``depth`` is done."""
        self.done[depth] = self.done.get(depth, 0) + 1

    def sample(self) -> None:
        """Note the counts now, for the recent ratios."""
        for depth, done in self.done.items():
            samples = self._samples.get(depth)
            if samples is None:
                samples = self._samples[depth] = deque()
            found = self.added.get(depth + 1, 0)
            if samples and samples[-1][0] == done:
                samples[-1] = (done, found)  # children found since, by units already counted
                continue
            samples.append((done, found))
            span = max(RECENT_UNITS, done // 5)
            while len(samples) > 2 and done - samples[1][0] >= span:
                samples.popleft()

    def ratio(self, depth: int, *, recent: bool) -> float | None:
        """New units found at ``depth + 1`` per unit done at ``depth`` (None: none done)."""
        done = self.done.get(depth, 0)
        if not done:
            return None
        found = self.added.get(depth + 1, 0)
        samples = self._samples.get(depth)
        if recent and samples and len(samples) > 1:
            old_done, old_found = samples[0]
            if done - old_done >= RECENT_UNITS:
                return max(0.0, (found - old_found) / (done - old_done))
        return found / done

    def pending(self, depth: int) -> int:
        return max(0, self.added.get(depth, 0) - self.done.get(depth, 0))

    def expected(self, *, recent: bool) -> int:
        """Units still to be done: each pending unit and what it is expected to find."""
        depths = set(self.added) | set(self.done)
        if not depths:
            return 0
        deepest_seen = max((d for d in self.done if self.done[d]), default=-1)
        top = self.depth_limit if self.depth_limit else min(MAX_DEPTH, max(depths) + MAX_DEPTH // 2)
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
            descendants = ratios[depth] * (1.0 + descendants)
            remaining += self.pending(depth) * (1.0 + descendants)
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
        high = min(bound, max(model, done + lost + self.expected(recent=False)))
        if self.history_total is not None and known <= self.history_total:
            total = max(known, self.history_total)
            return Estimate(total, known, max(high, total), False, "history")
        wide = (high - known) > WIDE * model
        return Estimate(model, known, high, wide, "model")


__all__ = ["DepthProfile", "Estimate"]
