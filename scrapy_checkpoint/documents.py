"""The JSON documents of the read-only front ends: ``list``, ``show`` and ``report --json``
of the CLI and the status server's API serve the same documents, built here from the
read-only views (no lock taken, nothing written). Schema: docs/cli.md, "JSON output"."""

from __future__ import annotations

from typing import Any

from .checkpoint import file_hash
from .errors import CorruptCheckpointError
from .manager import EXPORT_SCHEMA_VERSION, UnifiedCheckpointManager
from .shared import Worker
from .view import StageView

SCHEMA_VERSION = EXPORT_SCHEMA_VERSION

#: A stage and its view, or the error that kept it from being read.
Views = list[tuple[str, "StageView | Exception"]]


def read_views(manager: UnifiedCheckpointManager) -> Views:
    """Every stage of the manager's store, sorted by name, with its view or the exception
    (CorruptCheckpointError, FileNotFoundError, ValueError) that kept it from being read."""
    out: Views = []
    for stage in manager.stages():
        try:
            out.append((stage, manager.read(stage)))
        except (CorruptCheckpointError, FileNotFoundError, ValueError) as exc:
            out.append((stage, exc))
    return out


def damaged(views: Views) -> bool:
    """True if a stage cannot be read or was read with damage (the CLI's exit 3)."""
    return any(not isinstance(v, StageView) or v.problems for _, v in views)


def workers_document(workers: list[Worker]) -> list[dict[str, Any]]:
    """The workers of a shared stage as JSON objects (``Worker`` fields; times in Unix s)."""
    return [w.model_dump(mode="json") for w in workers]


def entries(views: Views) -> list[dict[str, Any]]:
    """One stage entry per stage (:meth:`StageView.to_dict`), ``{"stage", "error"}`` for a
    stage that cannot be read."""
    return [v.to_dict() if isinstance(v, StageView) else {"stage": s, "error": str(v)}
            for s, v in views]


def list_document(manager: UnifiedCheckpointManager, views: Views,
                  shared: dict[str, list[Worker]]) -> dict[str, Any]:
    """``list --json``: ``{"schema_version", "checkpoint_dir", "stages": [entry],
    "shared": {stage: [worker]}}``."""
    return {"schema_version": SCHEMA_VERSION, "checkpoint_dir": str(manager.directory),
            "stages": entries(views),
            "shared": {stage: workers_document(workers) for stage, workers in shared.items()}}


def shared_stage_document(manager: UnifiedCheckpointManager, stage: str,
                          workers: list[Worker]) -> dict[str, Any]:
    """``show --json`` of a shared stage: ``{"stage", "shared": True, "status", "done",
    "pending", "lost", "unreadable", "workers"}`` (see
    :meth:`UnifiedCheckpointManager.shared_summary`)."""
    summary = manager.shared_summary(stage, workers)
    return {"stage": stage, "shared": True, **summary, "workers": workers_document(workers)}


def input_file_matches(view: StageView) -> bool | None:
    """Whether the stage's input file still has the recorded content hash (None: no input
    file or no hash recorded; False also when it cannot be read)."""
    s = view.state
    if not (s.input_file and s.input_file_hash):
        return None
    try:
        return file_hash(s.input_file) == s.input_file_hash
    except OSError:
        return False


def stage_document(view: StageView) -> dict[str, Any]:
    """``show STAGE --json``: the stage entry plus ``input_file_matches``."""
    entry = view.to_dict()
    entry["input_file_matches"] = input_file_matches(view)
    return entry


def report_document(manager: UnifiedCheckpointManager, views: Views) -> dict[str, Any]:
    """``report --json``: ``{"schema_version", "checkpoint_dir", "stages": [entry],
    "overall": {"percent", "processed", "total", "active", "completed", "failed", "paused",
    "crashed", "incomplete", "damaged": [stage]}}``; ``percent`` is None without a known
    total."""
    stage_entries = [v.to_dict() for _, v in views if isinstance(v, StageView)]
    known = [e for e in stage_entries if e["progress"]["total_items"]]
    total = sum(e["progress"]["total_items"] for e in known)
    done = sum(min(e["progress"]["processed_items"], e["progress"]["total_items"]) for e in known)
    statuses = [e["display_status"] for e in stage_entries]
    return {"schema_version": SCHEMA_VERSION, "checkpoint_dir": str(manager.directory),
            "stages": stage_entries, "overall": {
                "percent": 100.0 * done / total if total else None, "processed": done,
                "total": total,
                "active": sum(st in ("running", "recovering", "initialized") for st in statuses),
                "completed": statuses.count("completed"), "failed": statuses.count("failed"),
                "paused": statuses.count("paused"), "crashed": statuses.count("crashed"),
                "incomplete": statuses.count("incomplete"),
                "damaged": [s for s, v in views if not isinstance(v, StageView) or v.problems]}}


__all__ = ["SCHEMA_VERSION", "Views", "damaged", "entries", "input_file_matches",
           "list_document", "read_views", "report_document", "shared_stage_document",
           "stage_document", "workers_document"]
