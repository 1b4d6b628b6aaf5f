"""Read-only views of a stage, rebuilt from its store without taking its lock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .journal.keys import UnitKey, key_code
from .live import LiveState, journal_missing
from .metrics import Metrics, eta_total
from .state import ACTIVE_STATUSES, CheckpointState, Owner, Status
from .stores.base import Store

#: The names of a crawl's item counts among a stage's totals (``StageView.totals``): items
#: scraped, dropped (``DropItem``) and failed (``item_error``) over every run, and scraped
#: per item class (``item_type_count/<class name>``).
ITEMS_SCRAPED = "item_scraped_count"
ITEMS_DROPPED = "item_dropped_count"
ITEMS_FAILED = "item_error_count"
ITEM_TYPE = "item_type_count/"


def item_counts(totals: dict[str, int]) -> dict[str, Any]:
    """A crawl's item counts from a stage's totals: ``{"scraped": int, "dropped": int,
    "errors": int, "types": {class name: scraped items of that class}}``."""
    return {
        "scraped": totals.get(ITEMS_SCRAPED, 0),
        "dropped": totals.get(ITEMS_DROPPED, 0),
        "errors": totals.get(ITEMS_FAILED, 0),
        "types": {name[len(ITEM_TYPE):]: n for name, n in sorted(totals.items())
                  if name.startswith(ITEM_TYPE)},
    }


@dataclass
class StageView:
    """A read-only view of one stage, rebuilt from disk without taking its lock."""

    state: CheckpointState
    #: The owning process if it is alive (the stage is being worked on now).
    live_owner: Owner | None
    #: Damage found and what recovery will do about it.
    problems: list[str] = field(default_factory=list)
    disk: dict[str, int] = field(default_factory=dict)
    _live: LiveState | None = None

    @property
    def crashed(self) -> bool:
        """Left active by a process that is gone: the next start recovers it."""
        return self.state.status in ACTIVE_STATUSES and self.live_owner is None

    @property
    def display_status(self) -> str:
        """The status, or ``crashed`` for an active stage whose process is gone."""
        return "crashed" if self.crashed else self.state.status.value

    @property
    def in_flight(self) -> int:
        """Pending units that had started when the stage was last written (redone on resume)."""
        if self._live is None:
            return 0
        return sum(1 for c in self._live.started if c in self._live.pending)

    @property
    def outputs(self) -> dict[str, list[Any]]:
        """Durable outputs the stage recorded: absolute path -> [base, committed length] in bytes,
        with a third element for a feed document (see :data:`.journal.groups.OUTPUTS`)."""
        return dict(self._live.outputs) if self._live is not None else {}

    @property
    def user_state(self) -> Any:
        """The user's own state as last committed (a crawl's ``spider.state``; None: none)."""
        return self._live.user_state if self._live is not None else None

    @property
    def totals(self) -> dict[str, int]:
        """Totals over every run as last committed (a crawl's items, responses, errors)."""
        return dict(self._live.totals) if self._live is not None else {}

    @property
    def items(self) -> dict[str, Any]:
        """A crawl's items over every run as last committed (see :func:`item_counts`)."""
        return item_counts(self.totals)

    @property
    def attached(self) -> dict[str, Any]:
        """Data a front end keeps with the stage, by name (the crawl's cookie jars under
        ``"cookies"``), as last committed."""
        return dict(self._live.attached) if self._live is not None else {}

    @property
    def estimate(self) -> dict[str, Any] | None:
        """A crawl's estimate of its final size as last committed: the total is
        ``state.progress.total_items``; this gives its range, ``{"low", "high", "wide",
        "source"}`` (``low``: units found; ``source``: ``"model"``, ``"history"`` or
        ``"known"``). None for a stage whose total is given (a tracker's)."""
        value = self.attached.get("estimate")
        return dict(value) if isinstance(value, dict) else None

    def is_done(self, key: UnitKey) -> bool:
        """True if the unit ``key`` (index, str or bytes) is done in the stage as last committed."""
        return self._live is not None and key_code(key) in self._live.done

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the stage (the export schema, see docs/cli.md)."""
        m = self.metrics()
        entry = self.state.model_dump(mode="json")
        entry.update(
            display_status=self.display_status,
            owner_alive=self.live_owner is not None,
            percent=m.percent,
            success_rate=m.success_rate,
            eta_seconds=m.eta_seconds,
            in_flight_units=self.in_flight,
            estimate=self.estimate,
            totals=self.totals,
            items=self.items,
            problems=self.problems,
            disk=self.disk,
        )
        return entry

    def metrics(self) -> Metrics:
        """The counters as last written (throughput only while the owner is alive)."""
        p = self.state.progress
        start = p.start_time
        return Metrics(
            total=p.total_items, processed=p.processed_items, successful=p.successful_items,
            failed=p.failed_items, skipped=p.skipped_items,
            throughput=self.state.throughput if self.live_owner is not None else None,
            elapsed_seconds=(self.state.updated_at - start).total_seconds() if start else 0.0,
            estimated=bool((self.estimate or {}).get("wide")),
            eta_total=eta_total(self.estimate),
            done=self.state.status is Status.COMPLETED,
        )


def read_stage(store: Store, stage: str) -> StageView:
    """Rebuild a stage's exact state from its snapshot and journal, read-only.

    Safe while a process writes the stage. Raises :class:`CorruptCheckpointError`
    only when no consistent state can be rebuilt.
    """
    loaded = store.load(stage)
    file_state, problems = store.read_state(stage)
    if not loaded.exists and file_state is None and loaded.vanished is None:
        raise FileNotFoundError(f"No checkpoint for stage {stage!r} in {store.location}.")
    live = LiveState.from_loaded(stage, loaded)
    if loaded.snapshot is None and not loaded.payloads and file_state is not None:
        live = LiveState(file_state)
        problems = [*problems, journal_missing(store, stage, file_state)]
    state = live.to_state(throughput=file_state.throughput if file_state else None)
    if file_state is not None:  # measured by the writer, not journaled
        state.commit_latency_us = file_state.commit_latency_us
        state.commit_latency_histogram = file_state.commit_latency_histogram
    problems = problems + loaded.problems
    if loaded.dropped_bytes:
        problems.append(f"the next start drops {loaded.dropped_bytes} damaged byte(s) after the "
                        f"last good record (kept aside: *.corrupt files, or the Redis 'corrupt' "
                        f"list); those units are redone")
    return StageView(state=state, live_owner=store.live_owner(stage), problems=problems,
                     disk=store.disk_usage(stage), _live=live)


__all__ = ["ITEMS_DROPPED", "ITEMS_FAILED", "ITEMS_SCRAPED", "ITEM_TYPE", "StageView", "item_counts",
           "read_stage"]
