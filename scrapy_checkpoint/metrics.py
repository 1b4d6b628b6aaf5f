"""Throughput over a recent window, ETA, and the progress line."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .clock import monotonic

if TYPE_CHECKING:
    from .live import LiveState
    from .state import CheckpointState


@dataclass(frozen=True)
class Metrics:
    """A point-in-time view of a stage's progress."""

    total: int | None
    processed: int
    successful: int
    failed: int
    skipped: int
    #: Items per second over the recent window (None until measurable).
    throughput: float | None
    elapsed_seconds: float
    #: The total is an estimate, still uncertain (a crawl whose frontier grows): ``~``.
    estimated: bool = False
    #: The size the ETA counts on when it is not ``total`` (a crawl whose chain of pages
    #: may go on: the percent counts on a longer run than the ETA, which takes the median).
    eta_total: int | None = None
    #: The stage is completed: nothing remains, whether a total was given or not (ETA 0 s).
    done: bool = False

    @property
    def percent(self) -> float | None:
        """Processed items as a percentage of the total (at most 100; None without one)."""
        if not self.total:
            return None
        return min(100.0, 100.0 * self.processed / self.total)

    @property
    def success_rate(self) -> float | None:
        """Successful items as a percentage of those finished (None before the first)."""
        finished = self.successful + self.failed
        return None if finished == 0 else 100.0 * self.successful / finished

    @property
    def remaining(self) -> int | None:
        """Items left to process (None without a total)."""
        return None if self.total is None else max(0, self.total - self.processed)

    @property
    def eta_seconds(self) -> float | None:
        """Seconds until the remaining items are done at the current throughput (None if
        unknown)."""
        remaining = self.remaining
        if self.done:
            return 0.0
        if remaining is None:
            return None
        if self.eta_total is not None and remaining:
            remaining = max(1, min(remaining, self.eta_total - self.processed))
        if remaining == 0:
            return 0.0
        if not self.throughput:
            return None
        return remaining / self.throughput

    def progress_line(self) -> str:
        """``Progress: 45.5% (5000/11000) | Success: 98.2% | Throughput: 42.3 items/sec | ETA: 2.4 min``"""
        pct = self.percent
        about = "~" if self.estimated else ""
        head = (f"Progress: {about}{format_percent(pct)} ({self.processed}/{about}{self.total})"
                if pct is not None else f"Progress: {self.processed} items")
        rate = self.success_rate
        success = "n/a" if rate is None else f"{rate:.1f}%"
        tput = "n/a" if self.throughput is None else f"{self.throughput:.1f} items/sec"
        return f"{head} | Success: {success} | Throughput: {tput} | ETA: {format_duration(self.eta_seconds)}"


def eta_total(estimate: Any) -> int | None:
    """The size the ETA counts on, from a crawl's estimate as committed (attached data
    ``"estimate"``: ``{"low", "high", "wide", "source"}`` and, while a chain's median run
    is shorter than the total shown, ``"eta_total"``); None: the total."""
    value = estimate.get("eta_total") if isinstance(estimate, dict) else None
    return value if type(value) is int and value >= 0 else None


def format_percent(value: float | None) -> str:
    """A percentage with one decimal (``n/a`` for None), ``99.9%`` at most until it is
    100: never ``100.0%`` by rounding (2999 of 3000)."""
    if value is None:
        return "n/a"
    return "99.9%" if 99.95 <= value < 100 else f"{value:.1f}%"


def format_duration(seconds: float | None) -> str:
    """``seconds`` for people: ``42 s``, ``2.4 min``, ``3.1 h``, ``5.0 days``; None is ``unknown``."""
    if seconds is None:
        return "unknown"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class RateWindow:
    """Units per second over the last ``window`` seconds of this process, or over the last
    ``min_units`` units when those took longer (a slow stage's rate is not one or two
    units), from samples of the processed count.

    The rate follows the work: the count at the window's start is interpolated between
    the samples around it, so three seconds after the rate changes a three-second window
    gives the new rate. It starts with the first unit finished in this process (a
    resume does not count its start-up, nor spread old work over the downtime): samples
    equal to the count at :meth:`begin` are not taken.
    """

    __slots__ = ("_base", "_min_units", "_samples", "_window", "last_sample")

    #: Seconds between two samples at the most often.
    EVERY = 0.25

    def __init__(self, window: float, min_units: int = 20) -> None:
        self._window = window
        self._min_units = min_units
        self._samples: deque[tuple[float, int]] = deque()
        self._base: int | None = None
        self.last_sample = 0.0

    def begin(self, processed: int) -> None:
        """A run starts with ``processed`` units done before it: no rate until one more."""
        self._samples.clear()
        self._base = processed
        self.last_sample = 0.0

    def add(self, now: float, processed: int) -> None:
        """Record the processed count at monotonic time ``now`` (seconds)."""
        self.last_sample = now
        samples = self._samples
        if not samples and processed == self._base:
            return  # nothing finished in this run yet
        samples.append((now, processed))
        cutoff = now - self._window
        # Keep the newest sample before the window (to interpolate from) and enough units.
        while (len(samples) > 2 and samples[1][0] <= cutoff
               and processed - samples[1][1] >= self._min_units):
            samples.popleft()

    def rate(self, now: float | None = None, processed: int | None = None) -> float | None:
        """Units per second up to ``(now, processed)`` (default: the newest sample) over the
        window (see the class doc); None before half a second of this run's work."""
        samples = self._samples
        if not samples:
            return None
        if now is None or processed is None:
            now, processed = samples[-1]
        t0, p0 = samples[0][0], float(samples[0][1])
        start = now - self._window
        if start > t0 and len(samples) > 1:
            # The count at the window's start, between the two samples around it.
            for (ta, pa), (tb, pb) in zip(samples, list(samples)[1:], strict=False):
                if ta <= start <= tb:
                    at = pa + (pb - pa) * (start - ta) / (tb - ta) if tb > ta else pb
                    if processed - at >= self._min_units:
                        t0, p0 = start, at
                    break
        dt = now - t0
        if dt < 0.5:
            return None
        return (processed - p0) / dt


class ProgressLog:
    """What a running stage reports about its progress, the way Scrapy's LogStats
    reports a crawl's: the throughput over the last ``throughput_window`` seconds of
    this process (and so the ETA), and a progress line every ``log_every`` processed
    items.

    :attr:`rate` is sampled by the checkpoint's committer (at most once a second). The
    checkpoint compares the processed count with :attr:`next_at` on its update path
    and calls :meth:`passed` when it is reached.
    """

    __slots__ = ("every", "lines", "next_at", "rate")

    def __init__(self, log_every: int, throughput_window: float) -> None:
        self.rate = RateWindow(throughput_window)
        #: Items between two progress lines (0: none).
        self.every = log_every
        #: The processed count at which the next line is due (0: never).
        self.next_at = 0
        #: False once a progress bar shows the line instead of the log.
        self.lines = True

    def begin(self, processed: int) -> None:
        """A run starts, ``processed`` items having been processed before."""
        self.rate.begin(processed)
        every = self.every
        self.next_at = (processed // every + 1) * every if every else 0

    def passed(self, processed: int) -> bool:
        """The processed count reached :attr:`next_at`: set the next one. True if the
        line is to be logged."""
        every = self.every
        self.next_at = (processed // every + 1) * every
        return self.lines

    def metrics(self, live: LiveState, total: int | None = None) -> Metrics:
        """``live``'s counters with the current throughput (items per second); ``total`` in
        place of the recorded one."""
        return live.metrics(self.rate.rate(monotonic(), live.processed), total)

    def state(self, live: LiveState, commit_latency_us: dict[str, int] | None) -> CheckpointState:
        """``live`` as users read it, with the throughput, the ETA and the commit latency."""
        m = self.metrics(live)
        state = live.to_state(throughput=m.throughput, eta_seconds=m.eta_seconds)
        state.commit_latency_us = commit_latency_us
        return state


def printable(text: str) -> str:
    """``text`` to print on one line of a terminal: each character that is not printable
    (a newline, an escape sequence's ESC, a NUL) written as its Python escape (``\\x1b``),
    so a recorded error message or file name cannot draw on the reader's terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)


__all__ = ["Metrics", "ProgressLog", "RateWindow", "eta_total", "format_duration",
           "format_percent", "monotonic", "printable"]
