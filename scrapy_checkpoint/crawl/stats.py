"""The checkpoint's figures in Scrapy's stats (``checkpoint/*``; docs/scrapy.md lists them)."""

from __future__ import annotations

from typing import Any

from ..checkpoint import EnhancedCheckpoint


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
