"""The CLI, run as a real subprocess on checkpoints made by real runs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import AsyncCheckpointTracker

from .conftest import PYTHON, SCRIPTS, StageHolder, python_env
from .crawl import PROJECT


def cli(directory: Path, *args: str, stdin: Any = subprocess.DEVNULL,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(directory), *args],
                          capture_output=True, text=True, stdin=stdin, timeout=120, check=False,
                          env={**python_env(), "COLUMNS": "80", **(env or {})})


async def _stage(directory: Path, stage: str, n: int, error: BaseException | None = None,
                 total: int | None = None) -> None:
    async with AsyncCheckpointTracker(directory, stage, progress_bar=False, log_every=0) as t:
        t.start(total_items=total or n)
        for i in range(n):
            t.update(processed=1, successful=1, last_item=f"row-{i}", index=i)
        if error is not None:
            raise error


def _crashed(directory: Path, stage: str) -> None:
    """A tracker job SIGKILLed mid-run."""
    proc = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "tracker_job.py"), str(directory), stage, "3000",
         str(directory.parent / "crashed.log"), "8", "1", "fsync"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=python_env())
    assert proc.stdout is not None
    for n, _ in enumerate(proc.stdout):
        if n >= 200:
            break
    proc.send_signal(signal.SIGKILL)
    proc.stdout.close()
    proc.wait()


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    """Stages in every state: completed, failed, paused, crashed."""
    d = tmp_path / "checkpoints"
    asyncio.run(_stage(d, "stage1_discovery", 50))
    with pytest.raises(RuntimeError):
        asyncio.run(_stage(d, "stage2_parse", 20, RuntimeError("parser broke"), total=40))
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(_stage(d, "stage3_enrich", 10, KeyboardInterrupt(), total=100))
    _crashed(d, "stage4_export")
    return d


def test_list_shows_every_stage_in_80_columns(pipeline: Path) -> None:
    result = cli(pipeline, "list")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["STAGE", "STATUS", "PROGRESS", "SUCCESS", "UPDATED", "(UTC)"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["stage1_discovery"][1:4] == ["completed", "50/50", "(100.0%)"]
    assert rows["stage2_parse"][1:4] == ["failed", "20/40", "(50.0%)"]
    assert rows["stage3_enrich"][1:4] == ["paused", "10/100", "(10.0%)"]
    assert rows["stage4_export"][1] == "crashed"
    assert all(len(line.rstrip()) <= 80 for line in lines)
    assert "\x1b[" not in result.stdout, "no colour codes when piped"


SCHEMA: dict[str, type | tuple[type, ...]] = {
    "stage": str, "status": str, "display_status": str, "owner_alive": bool,
    "progress": dict, "percent": (float, type(None)), "success_rate": (float, type(None)),
    "eta_seconds": (float, type(None)), "done_units": int, "pending_units": int,
    "in_flight_units": int, "problems": list, "disk": dict, "updated_at": str,
    "error_message": (str, type(None)), "recoveries": int,
}


def _check_entry(entry: dict[str, Any]) -> None:
    for key, kind in SCHEMA.items():
        assert isinstance(entry[key], kind), (key, entry.get(key))


def test_json_output_follows_the_documented_schema(pipeline: Path, tmp_path: Path) -> None:
    listed = json.loads(cli(pipeline, "list", "--json").stdout)
    assert listed["schema_version"] == 1
    assert [e["stage"] for e in listed["stages"]] == [
        "stage1_discovery", "stage2_parse", "stage3_enrich", "stage4_export"]
    for entry in listed["stages"]:
        _check_entry(entry)
    shown = json.loads(cli(pipeline, "show", "stage2_parse", "--json").stdout)
    _check_entry(shown)
    assert shown["error_message"] == "RuntimeError: parser broke"
    reported = json.loads(cli(pipeline, "report", "--json").stdout)
    assert reported["overall"]["completed"] == 1
    assert reported["overall"]["crashed"] == 1
    out = tmp_path / "export.json"
    assert cli(pipeline, "export", "--output", str(out)).returncode == 0
    exported = json.loads(out.read_text())
    assert exported["schema_version"] == 1
    assert len(exported["stages"]) == 4


def test_show_tells_the_resume_point_owner_and_error(pipeline: Path) -> None:
    out = cli(pipeline, "show", "stage2_parse").stdout
    assert "failed" in out
    assert "20/40 (50.0%)" in out
    assert "last item 'row-19', index 19" in out
    assert "RuntimeError: parser broke (1 in all" in out
    assert "(gone)" in out
    crashed = cli(pipeline, "show", "stage4_export").stdout
    assert "crashed (its process is gone; the next run recovers it)" in crashed


def test_show_of_a_live_stage_names_its_owner_alive(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    holder = StageHolder(d, "live")
    try:
        out = cli(d, "show", "live").stdout
        assert f"pid {holder.pid}" in out
        assert "(alive)" in out
        assert "running" in out
    finally:
        holder.close()


def test_exit_codes_for_missing_and_damaged_stages(pipeline: Path) -> None:
    missing = cli(pipeline, "show", "nope")
    assert missing.returncode == 1
    assert "No checkpoint for stage 'nope'" in missing.stderr
    journal = sorted((pipeline / "stage4_export").glob("journal-*.log"))[-1]
    journal.write_bytes(journal.read_bytes()[:-3])  # a torn tail
    damaged = cli(pipeline, "show", "stage4_export")
    assert damaged.returncode == 3
    assert "Damage" in damaged.stdout
    assert "dropped" in damaged.stdout
    assert "Traceback" not in damaged.stderr
    assert cli(pipeline, "bogus").returncode == 2
    assert cli(pipeline, "show").returncode == 2


def test_read_only_commands_change_nothing(pipeline: Path) -> None:
    before = {p: p.read_bytes() for p in pipeline.rglob("*") if p.is_file()}
    for args in (["list"], ["report"], ["show", "stage4_export"], ["list", "--json"],
                 ["cleanup", "--days", "0", "--dry-run"], ["watch", "stage1_discovery"]):
        assert cli(pipeline, *args).returncode == 0, args
    after = {p: p.read_bytes() for p in pipeline.rglob("*") if p.is_file()}
    assert after == before


def test_report_ends_with_the_pipeline_line(pipeline: Path) -> None:
    out = cli(pipeline, "report").stdout
    assert "stage2_parse  [failed]" in out
    assert out.strip().splitlines()[-1].startswith("Overall: ")
    assert "completed 1 | failed 1 | paused 1 | crashed 1" in out


def test_reset_asks_on_a_terminal_and_refuses_a_live_stage(pipeline: Path) -> None:
    master, slave = os.openpty()
    try:
        os.write(master, b"n\n")
        declined = cli(pipeline, "reset", "stage1_discovery", stdin=slave)
    finally:
        os.close(slave)
        os.close(master)
    assert declined.returncode == 1
    assert "stage1_discovery" in cli(pipeline, "list").stdout

    holder = StageHolder(pipeline, "live")
    try:
        refused = cli(pipeline, "reset", "live")
        assert refused.returncode == 1
        assert f"in use by pid {holder.pid}" in refused.stderr
        assert "live" in cli(pipeline, "list").stdout
    finally:
        holder.close()
    done = cli(pipeline, "reset", "stage1_discovery", "--force")
    assert done.returncode == 0
    assert "stage1_discovery" not in cli(pipeline, "list").stdout
    assert cli(pipeline, "reset", "all", "--force").returncode == 0
    assert cli(pipeline, "list").returncode == 1


def test_cleanup_dry_run_then_cleanup(pipeline: Path) -> None:
    assert cli(pipeline, "cleanup", "--days", "1").returncode == 1  # nothing that old
    planned = cli(pipeline, "cleanup", "--days", "0", "--dry-run")
    assert "Would remove stage1_discovery" in planned.stdout
    assert len(cli(pipeline, "list", "--json").stdout) > 100
    removed = cli(pipeline, "cleanup", "--days", "0")
    assert removed.returncode == 0
    assert "Removed 4 stage(s)" in removed.stdout
    assert json.loads(cli(pipeline, "list", "--json").stdout)["stages"] == []


def test_watch_follows_a_running_stage_until_it_completes(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    job = subprocess.Popen([PYTHON, str(SCRIPTS / "gated_job.py"), str(d), "gated", "50"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=python_env())
    assert job.stdout is not None
    assert job.stdin is not None
    assert job.stdout.readline().strip() == "ready"
    watch = subprocess.Popen([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(d), "watch",
                              "gated", "--interval", "0.1"], stdout=subprocess.PIPE, text=True,
                             env=python_env())
    assert watch.stdout is not None
    first = watch.stdout.readline()
    assert "gated [running]" in first
    job.stdin.write("go\n")
    job.stdin.close()
    assert job.wait(timeout=60) == 0
    rest = watch.stdout.read()
    assert watch.wait(timeout=60) == 0
    assert "gated [completed] Progress: 100.0% (51/51)" in rest.strip().splitlines()[-1]
    job.stdout.close()
    watch.stdout.close()


def test_scrapy_checkpoint_command_reads_the_project_settings(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    asyncio.run(_stage(d, "site", 5))
    result = subprocess.run([PYTHON, "-m", "scrapy", "checkpoint", "-s", f"CHECKPOINT_DIR={d}",
                             "list"], cwd=PROJECT, capture_output=True, text=True,
                            env=python_env(), timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "site" in result.stdout
    assert "completed" in result.stdout
