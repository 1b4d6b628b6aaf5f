"""UnifiedCheckpointManager: report, export, reset, cleanup across stages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import CheckpointLockedError, Status, UnifiedCheckpointManager

from .test_checkpoint import _abandon


def _pipeline(location: str) -> UnifiedCheckpointManager:
    manager = UnifiedCheckpointManager(location, log_every=0)
    done = manager.get_checkpoint("stage1_discovery")
    done.start(total_items=4)
    for i in range(4):
        done.update(processed=1, successful=1, index=i)
    done.complete()
    done.close()
    failed = manager.get_checkpoint("stage2_parse")
    failed.start(total_items=10)
    failed.update(processed=2, successful=1, failed=1, index=0)
    failed.fail(RuntimeError("parser broke"))
    failed.close()
    crashed = manager.get_checkpoint("stage3_enrich")
    crashed.start(total_items=20)
    for i in range(5):
        crashed.update(processed=1, successful=1, index=i)
    _abandon(crashed)
    return manager


def test_report_shows_each_stage_then_the_pipeline(store_location: str) -> None:
    report = _pipeline(store_location).report()
    assert "stage1_discovery  [completed]" in report
    assert "Progress: 100.0% (4/4)" in report
    assert "stage2_parse  [failed]" in report
    assert "last error (1 in all): RuntimeError: parser broke" in report
    assert "stage3_enrich  [crashed]" in report
    assert "Progress: 25.0% (5/20)" in report
    assert report.splitlines()[-1] == (
        "Overall: 32.4% (11/34 of known work) | active 0 | completed 1 | failed 1 | "
        "paused 0 | crashed 1")


def test_export_writes_every_stage_as_json(store_location: str, tmp_path: Path) -> None:
    manager = _pipeline(store_location)
    out = tmp_path / "export.json"
    doc = manager.export(out)
    assert json.loads(out.read_text()) == doc
    assert doc["schema_version"] == 1
    by_stage = {s["stage"]: s for s in doc["stages"]}
    assert set(by_stage) == {"stage1_discovery", "stage2_parse", "stage3_enrich"}
    assert by_stage["stage3_enrich"]["display_status"] == "crashed"
    assert by_stage["stage3_enrich"]["status"] == "running"
    assert by_stage["stage2_parse"]["progress"]["failed_items"] == 1
    assert by_stage["stage1_discovery"]["owner_alive"] is False
    assert sum(by_stage["stage1_discovery"]["disk"].values()) > 0


def test_list_checkpoints_and_stages(store_location: str) -> None:
    manager = _pipeline(store_location)
    assert manager.stages() == ["stage1_discovery", "stage2_parse", "stage3_enrich"]
    statuses = [s.status for s in manager.list_checkpoints()]
    assert statuses == [Status.COMPLETED, Status.FAILED, Status.RUNNING]


def test_reset_refuses_a_stage_with_a_live_owner(persistent_location: str,
                                                 hold_stage: Any) -> None:
    manager = _pipeline(persistent_location)
    holder = hold_stage(persistent_location, "live")
    with pytest.raises(CheckpointLockedError, match=f"pid {holder.pid}"):
        manager.reset("live")
    assert sorted(manager.reset_all()) == ["stage1_discovery", "stage2_parse", "stage3_enrich"]
    assert manager.stages() == ["live"]
    holder.close()
    manager.reset("live")
    assert manager.stages() == []
    cp = manager.get_checkpoint("live")
    assert cp.start().progress.processed_items == 0
    cp.close()


def test_cleanup_removes_idle_stages_but_not_live_ones(persistent_location: str,
                                                       hold_stage: Any) -> None:
    manager = _pipeline(persistent_location)
    hold_stage(persistent_location, "live")
    assert manager.cleanup(older_than_days=1) == {}
    planned = manager.cleanup(older_than_days=0, dry_run=True)
    assert sorted(planned) == ["stage1_discovery", "stage2_parse", "stage3_enrich"]
    assert all(size > 0 for size in planned.values())
    assert len(manager.stages()) == 4, "a dry run changes nothing"
    assert manager.cleanup(older_than_days=0) == planned
    assert manager.stages() == ["live"]
