"""``/metrics``: every stage as Prometheus metrics, read from the store at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from ..clock import utcnow
from ..documents import Views
from ..state import Status
from ..view import StageView

PREFIX = "scrapy_checkpoint"
#: Every status a stage may show (``crashed``: left active by a process that is gone).
STATUSES = [s.value for s in Status] + ["crashed"]


class StageCollector(Collector):
    """A custom collector: ``read()`` returns every stage's view (one read of the store)
    each time Prometheus scrapes. Labels: ``stage`` and ``store`` (the store's location,
    passwords redacted). Names and units: docs/server.md."""

    def __init__(self, read: Callable[[], Views], store: str) -> None:
        self._read = read
        self._store = store

    def collect(self) -> Iterator[Metric]:
        """The metric families of every stage (see docs/server.md for the list)."""
        labels = ["stage", "store"]

        def gauge(name: str, doc: str, extra: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels + (extra or []))

        readable = gauge("stage_readable", "1 if the stage can be read, 0 if it is damaged")
        status = gauge("stage_status", "1 for the stage's current status, 0 for the others",
                       ["status"])
        processed = gauge("stage_processed_items", "Items processed (done) over every run")
        total = gauge("stage_total_items", "The stage's total items (absent when unknown)")
        failed = gauge("stage_failed_items", "Items that finished with a failure")
        done = gauge("stage_done_units", "Units recorded done in the journal")
        pending = gauge("stage_pending_units", "Units added and not done yet (a crawl's frontier)")
        items = gauge("stage_items", "A crawl's items over every run, by kind", ["kind"])
        throughput = gauge("stage_throughput_items_per_second",
                           "Throughput measured by the live owner (absent without one)")
        eta = gauge("stage_eta_seconds", "Seconds until done at the current throughput "
                                         "(absent when unknown)")
        since = gauge("stage_seconds_since_last_commit", "Seconds since the stage's last commit")
        alive = gauge("stage_owner_alive", "1 while a live process owns the stage")
        latency = gauge("stage_commit_latency_seconds", "Recent journal commit durations "
                                                        "measured by the writer, by quantile",
                        ["quantile"])
        durations = HistogramMetricFamily(
            f"{PREFIX}_stage_commit_duration_seconds", "Journal commits of the stage's writing "
            "process so far by duration (hooks, encoding and write; it starts again with each "
            "process)", labels=labels)
        now = utcnow()
        for stage, view in self._read():
            lv = [stage, self._store]
            if not isinstance(view, StageView):
                readable.add_metric(lv, 0)
                continue
            readable.add_metric(lv, 0 if view.problems else 1)
            s, m = view.state, view.metrics()
            shown = view.display_status
            for name in STATUSES:
                status.add_metric([*lv, name], 1 if name == shown else 0)
            processed.add_metric(lv, m.processed)
            if m.total is not None:
                total.add_metric(lv, m.total)
            failed.add_metric(lv, m.failed)
            done.add_metric(lv, s.done_units)
            pending.add_metric(lv, s.pending_units)
            counts = view.items
            for kind in ("scraped", "dropped", "errors"):
                items.add_metric([*lv, kind], counts[kind])
            if m.throughput is not None:
                throughput.add_metric(lv, m.throughput)
            if m.eta_seconds is not None:
                eta.add_metric(lv, m.eta_seconds)
            since.add_metric(lv, max(0.0, (now - s.updated_at).total_seconds()))
            alive.add_metric(lv, 1 if view.live_owner is not None else 0)
            for q, us in (s.commit_latency_us or {}).items():
                quantile = {"p50": "0.5", "p95": "0.95", "p99": "0.99"}.get(q)
                if quantile is not None:
                    latency.add_metric([*lv, quantile], us / 1e6)
            histogram = _histogram(s.commit_latency_histogram)
            if histogram is not None:
                durations.add_metric(lv, *histogram)
        yield from (readable, status, processed, total, failed, done, pending, items, throughput,
                    eta, since, alive, latency, durations)


def _histogram(recorded: dict[str, Any] | None) -> tuple[list[tuple[str, float]], float] | None:
    """A state's ``commit_latency_histogram`` as (cumulative buckets, sum) for
    ``HistogramMetricFamily.add_metric``; None when absent or not of that shape (a state
    written by another version is read, not trusted)."""
    if not isinstance(recorded, dict):
        return None
    bounds, counts = recorded.get("le"), recorded.get("counts")
    count, total = recorded.get("count"), recorded.get("sum_seconds")
    if (not isinstance(bounds, list) or not isinstance(counts, list)
            or len(bounds) != len(counts) or type(count) is not int
            or not isinstance(total, (int, float))):
        return None
    try:
        buckets = [(repr(float(le)), float(n)) for le, n in zip(bounds, counts, strict=True)]
    except (TypeError, ValueError):
        return None
    return [*buckets, ("+Inf", float(count))], float(total)


__all__ = ["PREFIX", "STATUSES", "StageCollector"]
