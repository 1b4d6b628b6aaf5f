"""A crawl's progress against an estimate of its final size (:mod:`scrapy_checkpoint.estimate`).

The frontier feeds a :class:`~scrapy_checkpoint.estimate.DepthProfile` with the depth
(``request.meta["depth"]``, set by Scrapy's DepthMiddleware) and the kind (the callback's
name and the URL's shape, :func:`unit_kind`) of each unit it adds and finishes, and the
kind of the unit whose callback yielded it; the counts, and where the recent ratios
start, are kept with the stage (attached data ``"depths"``, journaled at most every
``PROFILE_INTERVAL`` seconds and with the stage's last commit), so a resumed crawl
estimates as it did before it stopped and learns on from there. After a crash the
profile restored may lag the units by up to that interval (the units found and finished
in its last second are not in its counts): at the resume its pending units are made
those of the requests journaled (:meth:`CrawlProgress.resumed`), so that a unit done in
that second is not pending in it for ever; the ratios err by those few units, never the
units themselves. The estimate shown
(:class:`~scrapy_checkpoint.estimate.ShownTotal`: the percent falls back by at most a
couple of points a second) is the crawl's total (``t``, so ``show``, ``report`` and the
state file use it) and the line's and the stats'; its range is
kept as attached data ``"estimate"``, and a completed run leaves its size (``"history"``)
for the next run of the stage.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..checkpoint import EnhancedCheckpoint
from ..clock import monotonic
from ..estimate import DepthProfile, Estimate, ShownTotal, reconcile, url_shape
from ..state import Status
from . import values
from .requests import TAGGED

#: Attached data: :meth:`DepthProfile.to_json` (``{"added": {depth: n}, "done": {depth: n},
#: "kinds": {callback or "callback shape": counts}, "windows": [...]}``) over every run.
DEPTHS_ATTACHED = "depths"
#: Seconds between two runs of the model (it walks every depth and kind: about 50 us;
#: commits come every few milliseconds): in between, the last one with the counts of now.
MODEL_INTERVAL = 0.5
#: Seconds between two journalings of the depth profile (its JSON, with every depth and
#: kind, is the largest part of a group's header: about a tenth of a commit's cost when
#: written with every group of ten units).
PROFILE_INTERVAL = 1.0
#: Attached data: the estimate's range, ``{"low", "high", "wide", "source"}``.
ESTIMATE_ATTACHED = "estimate"
#: Attached data: ``{"total": n}``, the size of the stage's last completed run.
HISTORY_ATTACHED = "history"
#: Requests whose units' kinds :meth:`CrawlProgress.finder` keeps at most.
FINDERS = 256
#: The first item of the keys of :attr:`CrawlProgress._counts`.
_ADDED, _FINISHED = "added", "finished"


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
        live = cp.live
        attached = live.attached
        history = attached.get(HISTORY_ATTACHED)
        self._profile = DepthProfile.from_json(
            attached.get(DEPTHS_ATTACHED), depth_limit=max(0, depth_limit),
            history_total=_int(history.get("total")) if isinstance(history, dict) else None)
        self.shown = ShownTotal()
        total = live.info.progress.total_items
        if total and live.processed and live.pending:  # what was shown before a restart
            self.shown.percent = 100.0 * live.processed / total
        #: Units added and finished: counted, sampled (for the recent ratios), saved.
        self._events = self._sampled = self._saved = 0
        #: Units added and finished since the profile last took them, by what the profile
        #: counts them by: ``(ADDED, depth, kind, shape, parent, parent shape)`` and
        #: ``(FINISHED, depth, kind, shape)`` ->
        #: how many. A unit costs a dict increment; the profile takes them all before it is
        #: read, in the order each key first came (so its kinds come in the same order).
        self._counts: dict[tuple[Any, ...], int] = {}
        self._last: dict[str, Any] | None = None
        #: The model's last estimate and when it was made (monotonic seconds).
        self._model: Estimate | None = None
        self._model_at = 0.0
        #: The requests :meth:`finder` was asked about lately (at most FINDERS, until their
        #: unit is done), and their units' kinds.
        self._finders: dict[Any, tuple[str, str]] = {}
        #: When the profile was last journaled (monotonic seconds; -inf: at the next commit).
        self._saved_at = float("-inf")

    @property
    def profile(self) -> DepthProfile:
        """The depth profile, with every unit added and finished so far."""
        if self._counts:
            profile = self._profile
            for key, n in self._counts.items():
                if key[0] is _ADDED:
                    _, depth, kind, shape, parent, parent_shape = key
                    profile.add(depth, kind, parent, n, shape, parent_shape)
                else:
                    profile.finish(key[1], key[2], n, key[3])
            self._counts = {}
        return self._profile

    def add(self, depth: Any, kind: str = "", parent: str | tuple[str, str] | None = None,
            shape: str = "") -> None:
        """A new unit at ``depth`` (a request's ``meta.get("depth")``), of ``kind`` (its
        callback's name) and ``shape`` (its URL's, :func:`~scrapy_checkpoint.estimate.url_shape`;
        "": not known), was found by a unit of ``parent``: its callback's name, or
        ``(callback, shape)`` (:func:`unit_kind`); None: not known."""
        parent_kind, parent_shape = (parent, "") if not isinstance(parent, tuple) else parent
        key = (_ADDED, depth if type(depth) is int else 0, kind, shape, parent_kind, parent_shape)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        self._events += 1

    def finder(self, request: Any, *, done: bool = False) -> tuple[str, str]:
        """The kind of ``request``'s unit (:func:`unit_kind`) as the finder of the requests
        its callback yields (worked out once for all of them, and for its end: ``done``,
        its unit is done and its kind forgotten). The callbacks of several responses may
        yield requests in turn."""
        finders = self._finders
        kind = finders.pop(request, None) if done else finders.get(request)
        if kind is None:
            kind = unit_kind(request)
            if not done:
                if len(finders) >= FINDERS:  # (responses whose unit never ends here)
                    finders.clear()
                finders[request] = kind
        return kind

    def finish(self, depth: Any, kind: str = "", shape: str = "") -> None:
        """A unit at ``depth``, of ``kind`` and ``shape`` (as :meth:`add`'s), is done."""
        key = (_FINISHED, depth if type(depth) is int else 0, kind, shape)
        counts = self._counts
        counts[key] = counts.get(key, 0) + 1
        self._events += 1

    def estimate(self, now: float | None = None) -> Estimate:
        """The estimate shown now (``now``: monotonic seconds)."""
        live = self.cp.live
        now = monotonic() if now is None else now
        if self._sampled != self._events:
            self._sampled = self._events
            self.profile.sample()
        done, pending, lost = len(live.done), len(live.pending), live.lost_total
        model = self._model
        if (model is None or not pending or model.source == "known"
                or now - self._model_at >= MODEL_INTERVAL):
            model = self._model = self.profile.estimate(done, pending, lost)
            self._model_at = now
        else:  # the model of a moment ago: units found since were expected in it
            known = done + pending + lost
            model = Estimate(max(model.total, known), known, max(model.high, known), model.wide,
                             model.source, None if model.median_high is None
                             else max(model.median_high, known))
        return self.shown.update(live.processed, model, now)

    def commit(self, attached: dict[str, Any]) -> int:
        """Add to ``attached`` (the group's attached data) the profile and the estimate's
        range when they changed; return the estimate (the group's total)."""
        now = monotonic()
        estimate = self.estimate(now)
        if self._saved != self._events and now - self._saved_at >= PROFILE_INTERVAL:
            self._saved, self._saved_at = self._events, now
            attached[DEPTHS_ATTACHED] = self.profile.to_json()
        bounds: dict[str, Any] = {"low": estimate.low, "high": estimate.high,
                                  "wide": estimate.wide, "source": estimate.source}
        if estimate.eta_total is not None:  # a chain's median run: what the ETA counts on
            bounds["eta_total"] = estimate.eta_total
        if bounds != self._last:
            self._last = attached[ESTIMATE_ATTACHED] = bounds
        return estimate.total

    def lags(self) -> bool:
        """True when the profile's units done and pending are not the stage's (it was
        journaled before the last units came and went: see :meth:`resumed`)."""
        live, profile = self.cp.live, self.profile
        done = sum(profile.done.values())
        return (done != len(live.done)
                or sum(profile.added.values()) - done != len(live.pending))

    def resumed(self, payloads: Iterable[Any]) -> None:
        """The stage resumes with the pending units whose records (request payloads) are
        ``payloads``: the profile's pending units become theirs, by depth and kind
        (:func:`~scrapy_checkpoint.estimate.reconcile`: the profile journaled
        last may lag the units by up to ``PROFILE_INTERVAL``)."""
        pending: dict[tuple[int, str, str], int] = {}
        for payload in payloads:
            key = _payload_kind(payload)
            if key is not None:
                pending[key] = pending.get(key, 0) + 1
        reconcile(self.profile, pending)
        self._model = None
        self._events += 1  # journaled with the next commit
        self._saved_at = float("-inf")

    def closing(self, completed_total: int | None) -> None:
        """The crawl closes: the profile goes with the stage's last commit whatever the
        interval; ``completed_total``, when it completed, is the size for the next run."""
        self._saved_at = float("-inf")
        if completed_total is not None:
            self.cp.attach(HISTORY_ATTACHED, {"total": completed_total})


def unit_kind(request: Any) -> tuple[str, str]:
    """What a request's unit counts by in the estimate: its callback's name
    (:func:`callback_name`) and its URL's shape (:func:`~scrapy_checkpoint.estimate.url_shape`)."""
    return callback_name(request), url_shape(request.url)


def callback_name(request: Any) -> str:
    """The kind of a request's unit for the estimate: its callback's name (``parse`` for
    none, Scrapy's default)."""
    callback = request.callback
    if callback is None:
        return "parse"
    return getattr(callback, "__name__", None) or "?"


def _payload_kind(payload: Any) -> tuple[int, str, str] | None:
    """``(depth, callback, URL shape)`` of a unit from its request's payload (None: not
    a request's)."""
    if not isinstance(payload, dict) or not isinstance(payload.get("url"), str):
        return None
    meta = payload.get("meta")
    if meta and "meta" in (payload.get(TAGGED) or ()):
        try:
            meta = values.decode(meta)
        except Exception:  # unreadable: depth 0 (the resume reports it)
            meta = None
    depth = meta.get("depth", 0) if isinstance(meta, dict) else 0
    callback = payload.get("callback")
    return (depth if type(depth) is int else 0,
            callback if isinstance(callback, str) and callback else "parse",
            url_shape(payload["url"]))


def _int(value: Any) -> int | None:
    return value if type(value) is int and value >= 0 else None


__all__ = ["DEPTHS_ATTACHED", "ESTIMATE_ATTACHED", "HISTORY_ATTACHED", "CrawlProgress",
           "callback_name", "completed_size", "unit_kind"]
