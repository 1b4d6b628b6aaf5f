"""A crawl's progress against an estimate of its final size (:mod:`scrapy_checkpoint.estimate`).

The frontier feeds a :class:`~scrapy_checkpoint.estimate.DepthProfile` with the depth
(``request.meta["depth"]``, set by Scrapy's DepthMiddleware) of each unit it adds and
finishes; the counts are kept with the stage (attached data ``"depths"``, journaled with
the units they count), so a resumed crawl learns on from where it was. The estimate is
the crawl's total (``t``, so ``show``, ``report`` and the state file use it), its range
is kept as attached data ``"estimate"``, and a completed run leaves its size
(``"history"``) for the next run of the stage.
"""

from __future__ import annotations

from typing import Any

from ..checkpoint import EnhancedCheckpoint
from ..estimate import DepthProfile, Estimate
from ..state import Status

#: Attached data: ``{"added": {depth: n}, "done": {depth: n}}`` over every run.
DEPTHS_ATTACHED = "depths"
#: Attached data: the estimate's range, ``{"low", "high", "wide", "source"}``.
ESTIMATE_ATTACHED = "estimate"
#: Attached data: ``{"total": n}``, the size of the stage's last completed run.
HISTORY_ATTACHED = "history"


def completed_size(cp: EnhancedCheckpoint) -> dict[str, int] | None:
    """The size of ``cp``'s stage when it is completed (to keep across a restart)."""
    live = cp.live
    if live.info.status is not Status.COMPLETED:
        return None
    return {"total": len(live.done) + len(live.pending) + live.lost_total}


class CrawlProgress:
    """The stage's depth profile and estimate (see the module docstring)."""

    def __init__(self, cp: EnhancedCheckpoint, depth_limit: int) -> None:
        self.cp = cp
        attached = cp.live.attached
        depths = attached.get(DEPTHS_ATTACHED)
        history = attached.get(HISTORY_ATTACHED)
        self.profile = DepthProfile(
            _counts(depths, "added"), _counts(depths, "done"), depth_limit=max(0, depth_limit),
            history_total=_int(history.get("total")) if isinstance(history, dict) else None)
        self._changed = False
        self._last: dict[str, Any] | None = None

    def add(self, depth: Any) -> None:
        """A new unit at ``depth`` (a request's ``meta.get("depth")``) was found."""
        self.profile.add(depth if type(depth) is int else 0)
        self._changed = True

    def finish(self, depth: Any) -> None:
        """A unit at ``depth`` is done."""
        self.profile.finish(depth if type(depth) is int else 0)
        self._changed = True

    def estimate(self) -> Estimate:
        """The estimate now."""
        live = self.cp.live
        return self.profile.estimate(len(live.done), len(live.pending), live.lost_total)

    def commit(self, attached: dict[str, Any]) -> int:
        """Add to ``attached`` (the group's attached data) the depth counts and the
        estimate's range when they changed; return the estimate (the group's total)."""
        if self._changed:
            self._changed = False
            self.profile.sample()
            attached[DEPTHS_ATTACHED] = {
                "added": {str(d): n for d, n in self.profile.added.items()},
                "done": {str(d): n for d, n in self.profile.done.items()}}
        estimate = self.estimate()
        bounds = {"low": estimate.low, "high": estimate.high, "wide": estimate.wide,
                  "source": estimate.source}
        if bounds != self._last:
            self._last = attached[ESTIMATE_ATTACHED] = bounds
        return estimate.total

    def finished(self, total: int) -> None:
        """The crawl completed with ``total`` units: the size for the next run."""
        self.cp.attach(HISTORY_ATTACHED, {"total": total})


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


def _counts(depths: Any, key: str) -> dict[int, int]:
    if not isinstance(depths, dict) or not isinstance(depths.get(key), dict):
        return {}
    counts = {}
    for depth, n in depths[key].items():
        try:
            d = int(depth)
        except ValueError:
            continue
        if 0 <= d <= 10_000 and type(n) is int and n >= 0:
            counts[d] = n
    return counts


__all__ = ["DEPTHS_ATTACHED", "ESTIMATE_ATTACHED", "HISTORY_ATTACHED", "CrawlProgress",
           "completed_size"]
