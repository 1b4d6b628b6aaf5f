"""The CLI, run as a real subprocess on checkpoints made by real runs."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
from pathlib import Path
from typing import Any

import pytest
from rich.cells import cell_len

from scrapy_checkpoint import AsyncCheckpointTracker, EnhancedCheckpoint

from .conftest import PYTHON, SCRIPTS, StageHolder, python_env
from .crawl import PROJECT


def cli(directory: Path, *args: str, stdin: Any = subprocess.DEVNULL,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli("--dir", str(directory), *args, stdin=stdin, env=env)


def run_cli(*args: str, stdin: Any = subprocess.DEVNULL,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", *args],
                          capture_output=True, text=True, stdin=stdin, timeout=900, check=False,
                          env={**python_env(), "COLUMNS": "80", **(env or {})})


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def on_terminal(*args: str, columns: int, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI with stdout on a pseudo-terminal of the given width; its exit code and
    its output without escape codes."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 200, columns, 0, 0))
    proc = subprocess.Popen([PYTHON, "-m", "scrapy_checkpoint.cli", *args],
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=subprocess.PIPE,
                            env={**python_env(), "TERM": "xterm", **(env or {})})
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 600)  # (a guard against a hang)
            assert ready, "the command wrote nothing for 600 s"
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode is not None
    assert b"Traceback" not in stderr, stderr.decode()
    return proc.returncode, ANSI.sub("", b"".join(chunks).decode())


def screen_lines(output: str) -> list[str]:
    return re.split(r"\r\n|\r|\n", output)


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
    "error_message": (str, type(None)), "recoveries": int, "totals": dict,
    "items": dict,
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


def test_recorded_text_is_printed_as_text_never_as_markup_or_escape_codes(
        tmp_path: Path) -> None:
    """An error message or file name holding '[/]' (a path in brackets) made show fail
    with rich's MarkupError traceback; '[bold]' styled the text; ESC sequences and line
    breaks in them drew on the reader's terminal (show and report). Each is printed as
    written, with its control characters escaped."""
    error = "cannot open [/data/in.csv] \x1b[2J\r\nFAKE LINE"
    with pytest.raises(RuntimeError):
        asyncio.run(_stage(tmp_path, "s", 2, RuntimeError(error)))
    from scrapy_checkpoint import EnhancedCheckpoint

    cp = EnhancedCheckpoint(tmp_path, "t", log_every=0)
    cp.start(total_items=1, output_file="/tmp/[bold]out[/bold].txt")
    cp.complete()
    cp.close()
    shown = cli(tmp_path, "show", "s")
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 0
    assert "\x1b" not in shown.stdout
    assert "FAKE LINE" not in shown.stdout.replace("\\r\\nFAKE LINE", "")
    assert "cannot open [/data/in.csv] \\x1b[2J\\r\\nFAKE LINE" in shown.stdout.replace(
        "\n" + " " * 19, "")  # rows wrapped at 80 columns joined
    report = cli(tmp_path, "report")
    assert "\x1b" not in report.stdout
    assert "\\x1b[2J\\r\\nFAKE LINE" in report.stdout
    code, out = on_terminal("--dir", str(tmp_path), "show", "t", columns=120)
    assert code == 0
    assert "/tmp/[bold]out[/bold].txt" in out


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
                             env={**python_env(), "COLUMNS": "60"})
    assert watch.stdout is not None
    first = watch.stdout.readline()
    assert "gated [running]" in first
    job.stdin.write("go\n")
    job.stdin.close()
    assert job.wait(timeout=600) == 0
    rest = watch.stdout.read()
    assert watch.wait(timeout=600) == 0
    lines = (first + rest).splitlines()
    assert all(len(line) <= 60 for line in lines), lines
    frames = [line for line in lines if line.startswith("gated [")]
    assert "gated [completed] Progress: 100.0% (51/51)" in frames[-1]
    assert lines[-1].startswith("  ")  # the rest of the last frame, indented
    job.stdout.close()
    watch.stdout.close()


def test_scrapy_checkpoint_command_reads_the_project_settings(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    asyncio.run(_stage(d, "site", 5))
    result = subprocess.run([PYTHON, "-m", "scrapy", "checkpoint", "-s", f"CHECKPOINT_DIR={d}",
                             "list"], cwd=PROJECT, capture_output=True, text=True,
                            env=python_env(), timeout=900, check=False)
    assert result.returncode == 0, result.stderr
    assert "site" in result.stdout
    assert "completed" in result.stdout


READ_ONLY = (["list"], ["list", "--json"], ["report"], ["report", "--json"],
             ["show", "stage2_parse"], ["show", "stage2_parse", "--json"],
             ["watch", "stage1_discovery"], ["watch"], ["export", "-o", "-"],
             ["cleanup", "--days", "0", "--dry-run"])


def test_dir_and_backend_may_follow_the_command(pipeline: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    for args in READ_ONLY:
        before = run_cli("--dir", str(pipeline), *args)
        assert before.returncode == 0, (args, before.stderr)
        after = run_cli(*args, "--dir", str(pipeline))
        assert (after.returncode, after.stdout) == (0, before.stdout), (args, after.stderr)
        # Given in both places, the one after the command wins, whichever it is.
        both = run_cli("--dir", str(empty), *args, "--dir", str(pipeline))
        assert (both.returncode, both.stdout) == (0, before.stdout), (args, both.stderr)
        other = run_cli("--dir", str(pipeline), *args, f"--dir={empty}")
        assert "stage1_discovery" not in other.stdout, args
    assert "No checkpoints in" in run_cli("--dir", str(pipeline), "list", "--dir",
                                          str(empty)).stdout

    reset = run_cli("--dir", str(empty), "reset", "stage1_discovery", "--dir", str(pipeline),
                    "--force")
    assert reset.returncode == 0, reset.stderr
    assert "stage1_discovery" not in cli(pipeline, "list").stdout

    unreachable = "redis://127.0.0.1:1/0"
    redis = run_cli("--backend", "file", "list", "--dir", str(pipeline), "--backend", unreachable)
    assert redis.returncode == 1
    assert f"Cannot reach Redis at {unreachable}" in redis.stderr
    files = run_cli("--backend", unreachable, "list", "--backend", "file", "--dir", str(pipeline))
    assert files.returncode == 0, files.stderr
    assert "stage2_parse" in files.stdout
    bad = run_cli("list", "--backend", "redis", "--dir", str(pipeline))
    assert bad.returncode == 2
    assert "--backend 'redis': use 'file', a redis:// or postgresql:// URL or memory://." in bad.stderr

    helped = run_cli("show", "--help")
    assert helped.returncode == 0
    assert "--dir PATH" in helped.stdout
    assert "--backend file|URL" in helped.stdout


def test_scrapy_command_takes_dir_and_backend_after_the_command(tmp_path: Path) -> None:
    d = tmp_path / "checkpoints"
    asyncio.run(_stage(d, "site", 5))
    unreachable = "redis://127.0.0.1:1/0"

    def scrapy(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "scrapy", "checkpoint", "-s",
                               f"CHECKPOINT_BACKEND={unreachable}", *args], cwd=PROJECT,
                              capture_output=True, text=True, env=python_env(), timeout=900,
                              check=False)

    project = scrapy("list", f"--dir={d}")
    assert project.returncode == 1  # the project's backend is used...
    assert f"Cannot reach Redis at {unreachable}" in project.stderr
    for args in (["list", "--backend=file", f"--dir={d}"], ["list", "--backend", "file", "--dir", str(d)],
                 ["show", "site", "--dir", str(d), "--backend=file"]):
        mine = scrapy(*args)  # ...unless the command line says otherwise after the command
        assert mine.returncode == 0, (args, mine.stderr)
        assert "completed" in mine.stdout, args


def _padded(output: str) -> list[str]:
    return [line for line in output.splitlines() if line != line.rstrip()]


def test_no_output_line_ends_in_a_space(pipeline: Path) -> None:
    for args in (["list"], ["report"], ["show", "stage2_parse"], ["show", "stage4_export"],
                 ["watch"], ["watch", "stage3_enrich"]):
        piped = cli(pipeline, *args)
        assert piped.returncode == 0, (args, piped.stderr)
        assert piped.stdout.strip(), args
        assert _padded(piped.stdout) == [], args
        code, shown = on_terminal("--dir", str(pipeline), *args, columns=100)
        assert code == 0, args
        assert "stage" in shown, args
        assert [line for line in screen_lines(shown) if line != line.rstrip()] == [], args
    # The table's header and rows are there, just not padded.
    code, shown = on_terminal("--dir", str(pipeline), "list", columns=100)
    rows = [line.split() for line in screen_lines(shown)]
    assert ["STAGE", "STATUS", "PROGRESS", "SUCCESS", "UPDATED", "(UTC)"] in rows
    assert any(row[:3] == ["stage3_enrich", "paused", "10/100"] for row in rows)


def test_watch_fits_columns_when_piped(pipeline: Path) -> None:
    with pytest.raises(RuntimeError):  # an error message of wide characters, two cells each
        asyncio.run(_stage(pipeline, "stage5_wide", 3, RuntimeError("解析器出错了" * 8), total=9))
    report = cli(pipeline, "report").stdout
    assert max(len(line) for line in report.splitlines()) > 50
    out = cli(pipeline, "watch", env={"COLUMNS": "50"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert all(cell_len(line) <= 50 for line in lines), lines
    assert sum("解析器" in line for line in lines) > 1
    assert "".join(out.stdout.split()) == "".join(report.split())  # only wrapped
    assert any(line.startswith("Overall: ") for line in lines)
    one = cli(pipeline, "watch", "stage2_parse", env={"COLUMNS": "50"}).stdout.splitlines()
    assert len(one) > 1
    assert all(len(line) <= 50 for line in one), one
    assert one[0].startswith("stage2_parse [failed] Progress: 50.0% (20/40)")
    assert all(line.startswith("  ") for line in one[1:])


def test_watch_on_a_terminal_uses_the_terminal_width(pipeline: Path) -> None:
    # A stale COLUMNS does not narrow it: the terminal's own width counts.
    code, wide = on_terminal("--dir", str(pipeline), "watch", columns=150, env={"COLUMNS": "60"})
    assert code == 0
    lines = screen_lines(wide)
    assert all(len(line) <= 150 for line in lines), lines
    assert any(line.startswith("  processed 50, successful 50") and line.endswith(" UTC")
               for line in lines), lines
    code, narrow = on_terminal("--dir", str(pipeline), "watch", columns=50)
    assert code == 0
    lines = screen_lines(narrow)
    assert all(len(line) <= 50 for line in lines), lines
    assert any(line.startswith("Overall: ") for line in lines)
    code, bar = on_terminal("--dir", str(pipeline), "watch", "stage2_parse", columns=40)
    assert code == 0
    lines = screen_lines(bar)
    assert all(len(line) <= 40 for line in lines), lines
    assert any(line.startswith("stage2_parse [failed]") for line in lines)


def test_piped_without_columns_a_table_keeps_its_cells_whole(tmp_path: Path) -> None:
    """``list | cat`` (no $COLUMNS) prints each stage's whole name and figures, for a script
    to read back; rich cut the table to 80 columns ('a_rather_long_…', 'PRO…')."""
    name = "a_rather_long_stage_name_for_the_product_listing_pages_of_the_shop"
    cp = EnhancedCheckpoint(tmp_path, name, log_every=0)
    cp.start(total_items=3)
    cp.update(processed=1, successful=1, index=0)
    cp.pause()
    cp.close()
    env = {k: v for k, v in python_env().items() if k != "COLUMNS"}
    out = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(tmp_path), "list"],
                         capture_output=True, text=True, stdin=subprocess.DEVNULL, env=env,
                         timeout=900, check=False)
    assert out.returncode == 0, out.stderr
    header, row = out.stdout.splitlines()[:2]
    assert header.split() == ["STAGE", "STATUS", "PROGRESS", "SUCCESS", "UPDATED", "(UTC)"]
    assert row.split()[:4] == [name, "paused", "1/3", "(33.3%)"]


def test_list_of_a_crawl_with_an_estimated_total_keeps_every_column_in_80_columns(
    tmp_path: Path,
) -> None:
    """A crawl's PROGRESS cell once carried the estimate's explanation ("..., of an estimated
    total (model; 190 found so far, at most about 841)"): at 80 columns, piped or on a
    terminal, that one cell took the row and STAGE, STATUS and SUCCESS were cut to nothing
    ('i…', 'cra…' at 120 columns). ``list`` shows the figures; ``show`` explains them."""
    cp = EnhancedCheckpoint(tmp_path, "items", log_every=0)
    cp.start()
    cp.attach("estimate", {"low": 190, "high": 841, "wide": True, "source": "model"})
    cp.set_total(631)
    for i in range(130):
        cp.update(processed=1, successful=1, index=i)
    cp.pause()
    cp.close()
    piped = cli(tmp_path, "list")
    assert piped.returncode == 0, piped.stderr
    code, screen = on_terminal("--dir", str(tmp_path), "list", columns=80)
    assert code == 0
    for output in (piped.stdout, screen):
        row = next(line for line in screen_lines(output) if "items" in line)
        assert row.split()[:5] == ["items", "paused", "130/~631", "(~20.6%)", "100.0%"], output
    shown = cli(tmp_path, "show", "items")
    assert "130/~631 (~20.6%), of an estimated total (model; 190 found so far, at most about " \
        "841)" in " ".join(shown.stdout.split())


def test_the_report_s_overall_line_marks_an_uncertain_estimate(tmp_path: Path) -> None:
    """The stage's line said '~20.6% (130/~631)' and the pipeline's, under it, '20.6%
    (130/631 of known work)', exact-looking."""
    cp = EnhancedCheckpoint(tmp_path, "items", log_every=0)
    cp.start()
    cp.attach("estimate", {"low": 190, "high": 841, "wide": True, "source": "model"})
    cp.set_total(631)
    for i in range(130):
        cp.update(processed=1, successful=1, index=i)
    cp.pause()
    cp.close()
    report = cli(tmp_path, "report").stdout
    assert "Progress: ~20.6% (130/~631)" in report
    assert "Overall: ~20.6% (130/~631 of known work)" in report


def test_watch_measures_the_throughput_before_the_owner_writes_it(tmp_path: Path) -> None:
    """The owner writes its throughput with the state file, every CHECKPOINT_STATE_INTERVAL
    (5 s): 'watch' said 'Throughput: n/a | ETA: unknown' for a job's first 5 s, so for a
    short job all along. It now measures the rate itself from the commits it sees."""
    d = tmp_path / "checkpoints"
    job = subprocess.Popen([PYTHON, str(SCRIPTS / "two_step_job.py"), str(d), "steps", "20"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           env=python_env())
    assert job.stdout is not None
    assert job.stdin is not None
    assert job.stdout.readline().strip() == "one"
    watch = subprocess.Popen([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(d), "watch",
                              "steps", "--interval", "0.1"], stdout=subprocess.PIPE, text=True,
                             env={**python_env(), "COLUMNS": "200"})
    assert watch.stdout is not None
    first = watch.stdout.readline()
    assert "steps [running] Progress: 33.3% (20/60)" in first
    assert "Throughput: n/a | ETA: unknown" in first  # one commit seen: no rate yet
    job.stdin.write("go\n")
    job.stdin.flush()
    assert job.stdout.readline().strip() == "two"
    line = watch.stdout.readline()
    while "(40/60)" not in line:
        assert line, "watch ended before it saw the second commit"
        line = watch.stdout.readline()
    assert re.search(r"Throughput: [0-9.]+ items/sec \| ETA: (?!unknown)", line), line
    job.stdin.write("end\n")
    job.stdin.close()
    assert job.wait(timeout=600) == 0
    watch.stdout.read()
    assert watch.wait(timeout=600) == 0
    job.stdout.close()
    watch.stdout.close()
