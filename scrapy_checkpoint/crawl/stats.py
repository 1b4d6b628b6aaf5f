"""The checkpoint's figures in Scrapy's stats (``checkpoint/*``; docs/scrapy.md lists them)."""

from __future__ import annotations

from typing import Any

from ..checkpoint import EnhancedCheckpoint
from ..stores.base import Store
from ..stores.file import FileStore
from ..view import item_counts, read_stage
from .stage_totals import ITEM_STATS_PREFIX, STATS_PREFIX

#: The stats :func:`publish_recorded` sets from the checkpoint (it removes the run's first).
RECORDED_PREFIXES = ("checkpoint/done_total", "checkpoint/pending", "checkpoint/failed_total",
                     "checkpoint/lost", STATS_PREFIX, ITEM_STATS_PREFIX)


def publish(stats: Any, cp: EnhancedCheckpoint) -> None:
    """Set the stage-wide ``checkpoint/*`` stats of ``cp`` in Scrapy's ``stats`` collector:
    done and pending units, failed total, lost units (in all and by reason), journal bytes,
    commit latency p50/p95/p99 (µs)."""
    live = cp.live
    set_value = stats.set_value
    set_value("checkpoint/done_total", len(live.done))
    set_value("checkpoint/pending", len(live.pending))
    set_value("checkpoint/failed_total", live.failed)
    lost = live.info.lost
    if lost:
        set_value("checkpoint/lost", sum(lost.values()))
        for reason, n in lost.items():
            set_value(f"checkpoint/lost/{reason}", n)
    journal_bytes = cp.journal_bytes
    if journal_bytes is not None:
        set_value("checkpoint/journal_bytes", journal_bytes)
    for name, micros in (cp.commit_latency_us() or {}).items():
        set_value(f"checkpoint/commit_latency_{name}_us", micros)


def publish_recorded(stats: Any, store: Store, stage: str | None) -> None:
    """After a run stopped by a failed write: set the stage-wide ``checkpoint/*`` stats and
    the stage totals (``checkpoint/stage/*``, ``checkpoint/items/*``) to what the checkpoint
    records, its last commit that reached the store: the run's own figures went past it,
    and what they counted after that commit is done again by the next run. Nothing
    readable recorded (the directory deleted): those stats are removed, none is stale.
    A file store only (a Redis or PostgreSQL store may be what failed)."""
    if not isinstance(store, FileStore):  # a network store may be what failed: not waited on
        return
    try:
        view = read_stage(store, stage) if stage is not None else None
    except Exception:  # gone, damaged, a store unreachable: nothing recorded to report
        view = None
    values = stats.get_stats()
    for name in [n for n in values if n.startswith(RECORDED_PREFIXES)]:
        del values[name]
    if view is None:
        return
    state = view.state
    set_value = stats.set_value
    set_value("checkpoint/done_total", state.done_units)
    set_value("checkpoint/pending", state.pending_units)
    set_value("checkpoint/failed_total", state.progress.failed_items)
    if state.lost:
        set_value("checkpoint/lost", sum(state.lost.values()))
        for reason, n in state.lost.items():
            set_value(f"checkpoint/lost/{reason}", n)
    totals = view.totals
    for name, n in totals.items():
        set_value(STATS_PREFIX + name, n)
    items = item_counts(totals)
    for key in ("scraped", "dropped", "errors"):
        set_value(ITEM_STATS_PREFIX + key, items[key])
    for name, n in items["types"].items():
        set_value(f"{ITEM_STATS_PREFIX}type/{name}", n)
