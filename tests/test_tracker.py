"""AsyncCheckpointTracker: the documented form, statuses on exit, map, concurrency."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import AsyncCheckpointTracker, Status, read_stage
from scrapy_checkpoint.stores import open_store
from scrapy_checkpoint.tracker import INTERRUPTED

from .conftest import PYTHON, python_env


def _status(location: str, stage: str = "stage3") -> Status:
    return read_stage(open_store(location), stage).state.status


def test_the_documented_form_runs_and_completes(store_location: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "rows.txt"
    source.write_text("\n".join(f"row{i}" for i in range(50)))
    rows = source.read_text().split()

    async def main() -> None:
        async with AsyncCheckpointTracker(store_location, "stage3") as tracker:
            tracker.start(total_items=len(rows), input_file=source)
            for i, row in enumerate(rows):
                if tracker.should_skip(i):
                    continue
                await asyncio.sleep(0)
                tracker.update(processed=1, successful=1, last_item=row, index=i)
            tracker.print_progress()

    asyncio.run(main())
    assert "[stage3] Progress: 100.0% (50/50) | Success: 100.0%" in capsys.readouterr().out
    state = read_stage(open_store(store_location), "stage3").state
    assert state.status is Status.COMPLETED
    assert state.last_processed_item == "row49"
    assert state.input_file == str(source)
    assert state.input_file_hash is not None
    assert state.input_file_hash.startswith("sha256:")


def test_an_exception_marks_the_stage_failed_and_is_reraised(store_location: str) -> None:
    seen: list[BaseException] = []

    class Tracker(AsyncCheckpointTracker[Any]):
        async def on_failure(self, error: BaseException) -> None:
            seen.append(error)

    async def main() -> None:
        async with Tracker(store_location, "stage3") as tracker:
            tracker.start(total_items=10)
            tracker.update(processed=1, successful=1, index=0)
            raise ValueError("bad row 1")

    with pytest.raises(ValueError, match="bad row 1"):
        asyncio.run(main())
    state = read_stage(open_store(store_location), "stage3").state
    assert state.status is Status.FAILED
    assert state.error_message == "ValueError: bad row 1"
    assert state.progress.processed_items == 1
    assert [type(e) for e in seen] == [ValueError]


def test_cancellation_marks_the_stage_paused(store_location: str) -> None:
    async def stage(started: asyncio.Event) -> None:
        async with AsyncCheckpointTracker(store_location, "stage3") as tracker:
            tracker.start(total_items=10)
            tracker.update(processed=1, successful=1, index=0)
            started.set()
            await asyncio.Event().wait()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.ensure_future(stage(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert _status(store_location) is Status.PAUSED


def test_keyboard_interrupt_marks_the_stage_paused(store_location: str) -> None:
    async def main() -> None:
        async with AsyncCheckpointTracker(store_location, "stage3") as tracker:
            tracker.start()
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        asyncio.run(main())
    assert _status(store_location) is Status.PAUSED


def test_on_success_runs_after_completion(store_location: str) -> None:
    statuses: list[Status] = []

    class Tracker(AsyncCheckpointTracker[Any]):
        async def on_success(self) -> None:
            statuses.append(self.status)

    async def main() -> None:
        async with Tracker(store_location, "stage3") as tracker:
            tracker.start(total_items=0)

    asyncio.run(main())
    assert statuses == [Status.COMPLETED]


def test_url_keys_are_skipped_on_the_next_run(store_location: str) -> None:
    urls = [f"https://example.com/p/{i}" for i in range(30)]
    handled: list[str] = []

    async def run(stop_after: int | None) -> None:
        async with AsyncCheckpointTracker(store_location, "urls") as tracker:
            tracker.start(total_items=len(urls))
            for url in urls:
                if tracker.should_skip(url):
                    continue
                if stop_after is not None and len(handled) == stop_after:
                    raise asyncio.CancelledError
                handled.append(url)
                tracker.update(processed=1, successful=1, last_item=url, key=url)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run(stop_after=12))
    asyncio.run(run(stop_after=None))
    assert handled == urls
    assert _status(store_location, "urls") is Status.COMPLETED


def test_out_of_order_completion_never_skips_an_unfinished_item(store_location: str) -> None:
    """Many tasks finish out of order; the run stops mid-way. The next run does
    exactly the unfinished ones: tracking the last index would skip some."""
    processed: list[int] = []

    async def run(stop_at: int | None) -> None:
        async with AsyncCheckpointTracker(store_location, "stage3") as tracker:
            tracker.start(total_items=200)
            slots = asyncio.Semaphore(20)
            stop = asyncio.Event()

            async def handle(i: int) -> None:
                async with slots:
                    for _ in range((i * 7919) % 13):  # uneven work: out-of-order completion
                        await asyncio.sleep(0)
                    if stop.is_set():
                        return
                    processed.append(i)
                    tracker.update(processed=1, successful=1, index=i)
                    if stop_at is not None and len(processed) >= stop_at:
                        stop.set()

            await asyncio.gather(*(handle(i) for i in range(200) if not tracker.should_skip(i)))
            if stop.is_set():
                raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(run(stop_at=90))
    first = list(processed)
    assert first != sorted(first), "the test needs out-of-order completion"
    asyncio.run(run(stop_at=None))
    assert sorted(processed) == list(range(200))
    state = read_stage(open_store(store_location), "stage3").state
    assert state.progress.processed_items == 200
    assert state.status is Status.COMPLETED


def test_map_does_the_bookkeeping(store_location: str) -> None:
    calls: list[int] = []

    async def worker(item: int) -> None:
        calls.append(item)
        if item == 13:
            raise RuntimeError("unlucky")

    async def main() -> Any:
        async with AsyncCheckpointTracker(store_location, "m") as tracker:
            return await tracker.map(worker, list(range(40)), concurrency=5)

    result = asyncio.run(main())
    assert (result.succeeded, result.failed, result.skipped) == (39, 1, 0)
    state = read_stage(open_store(store_location), "m").state
    assert (state.progress.processed_items, state.progress.failed_items) == (40, 1)
    assert state.error_message == "RuntimeError: unlucky"
    assert state.progress.total_items == 40
    calls.clear()
    result = asyncio.run(main())
    assert calls == []
    assert result.skipped == 40


def test_map_with_keys_and_raise_redoes_only_unfinished_items(store_location: str) -> None:
    calls: list[str] = []
    fail = {"c"}

    async def worker(item: str) -> None:
        await asyncio.sleep(0)
        if item in fail:
            raise RuntimeError(item)
        calls.append(item)

    async def main() -> None:
        async with AsyncCheckpointTracker(store_location, "k") as tracker:
            await tracker.map(worker, iter("abcdef"), concurrency=1, key=lambda s: f"id:{s}",
                              on_error="raise")

    with pytest.raises(RuntimeError, match="c"):
        asyncio.run(main())
    assert _status(store_location, "k") is Status.FAILED
    fail.clear()
    calls.clear()
    asyncio.run(main())
    assert calls == ["c", "d", "e", "f"]
    assert _status(store_location, "k") is Status.COMPLETED


def test_progress_bar_on_a_terminal_does_not_disturb_the_run(store_location: str) -> None:
    async def noop(item: int) -> None:
        await asyncio.sleep(0)

    async def main() -> None:
        async with AsyncCheckpointTracker(store_location, "bar", progress_bar=True) as tracker:
            await tracker.map(noop, range(300))

    asyncio.run(main())
    assert read_stage(open_store(store_location), "bar").state.progress.processed_items == 300


def test_importing_the_tracker_imports_neither_scrapy_nor_twisted() -> None:
    code = ("import sys, scrapy_checkpoint.tracker, scrapy_checkpoint; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('scrapy', 'twisted')]; "
            "print(bad)")
    out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=python_env(),
                         check=True).stdout
    assert out.strip() == "[]"


_PIPED_JOB = """
import asyncio, sys
from scrapy_checkpoint import AsyncCheckpointTracker

async def work(i):
    await asyncio.sleep(0)
    if i % 10 == 3:
        raise ValueError(f"row {i} is bad")

async def main():
    async with AsyncCheckpointTracker(sys.argv[1], "enrich") as tracker:
        await tracker.map(work, range(300), concurrency=5)

asyncio.run(main())
"""


def test_piped_with_no_logging_configured_progress_and_failures_are_shown(
    tmp_path: Path,
) -> None:
    """A script that configures no logging, its output piped: the stage's start, its failed
    items (one line each, then a count) and its end reach stderr, as a CLI tool's would."""
    job = tmp_path / "job.py"
    job.write_text(_PIPED_JOB)
    env = {k: v for k, v in python_env().items() if k not in ("CHECKPOINT_DIR", "CHECKPOINT_BACKEND")}
    run = subprocess.run([PYTHON, str(job), "data/cp"], capture_output=True, cwd=tmp_path,
                         text=True, env=env, timeout=900, check=False)
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert "[scrapy_checkpoint] INFO: [enrich] Incomplete" not in err
    failed = [line for line in err.splitlines() if "] Item " in line and " failed: " in line]
    assert len(failed) == 20  # LOGGED_FAILURES of the 30 failures
    assert "[enrich] Item 3 failed: ValueError: row 3 is bad" in failed[0]
    assert "Further failures are counted, not logged; `scrapy-checkpoint --dir data/cp show " \
        "enrich` has the count" in err
    assert "[enrich] Completed with 30 failed unit(s): tried, and not done. " \
        "`scrapy-checkpoint --dir data/cp requeue enrich --failed` makes them pending again " \
        "for the next run. Progress: 100.0% (300/300)" in err
    assert "Traceback" not in err
    # The commands the lines advise work as printed, run where the job ran (the stage is not
    # in the CLI's default ./checkpoints): before, they said "No checkpoint for stage".
    for advised, says in (("show", "failed 30"), ("requeue", "Requeued 30 failed unit(s)")):
        command = next(part for part in err.split("`")
                       if part.startswith("scrapy-checkpoint ") and f" {advised} " in part)
        cli = subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", *command.split()[1:]],
                             capture_output=True, text=True, cwd=tmp_path, env=env,
                             timeout=900, check=False)
        assert cli.returncode == 0, cli.stderr
        assert says in cli.stdout


_INTERRUPTED_JOB = """
import asyncio, signal, sys
from scrapy_checkpoint import AsyncCheckpointTracker

# Ctrl-C as at a terminal: a test run in the background (make test &) starts its children
# with SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
signal.signal(signal.SIGINT, signal.default_int_handler)

async def main():
    async with AsyncCheckpointTracker(sys.argv[1], "enrich") as tracker:
        tracker.start(total_items=100)
        for i in range(10):
            tracker.update(processed=1, successful=1, index=i)
        print("ten done", flush=True)
        await asyncio.Event().wait()   # until Ctrl-C

asyncio.run(main())
"""


def test_ctrl_c_pauses_the_stage_and_says_so_without_a_traceback(tmp_path: Path) -> None:
    job = tmp_path / "job.py"
    job.write_text(_INTERRUPTED_JOB)
    proc = subprocess.Popen([PYTHON, str(job), str(tmp_path / "cp")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=python_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ten done\n"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()  # its pipes closed here, not by a later test's collection
    assert proc.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert "[enrich] Paused; run again to resume. Progress: 10.0% (10/100)" in err
    assert err.rstrip().endswith(INTERRUPTED)
    assert _status(str(tmp_path / "cp"), "enrich") is Status.PAUSED


_CHANGED_INPUT_JOB = """
import asyncio, sys
from scrapy_checkpoint import AsyncCheckpointTracker

async def main(directory, rows):
    async with AsyncCheckpointTracker(directory, "enrich", progress_bar=False) as tracker:
        tracker.start(total_items=3, input_file=rows)
        for i in range(3):
            tracker.update(processed=1, successful=1, index=i)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_a_checkpoint_error_at_start_ends_the_program_with_its_message_not_a_traceback(
    tmp_path: Path,
) -> None:
    """A stage refused at start (here its input file changed; also a stage locked, damaged,
    or lost with its Redis) ends an uncaught program with one line, the error's class and
    its message (what happened, what to do), not a traceback through the program and the
    package; the exit status stays 1."""
    job = tmp_path / "job.py"
    job.write_text(_CHANGED_INPUT_JOB)
    rows = tmp_path / "rows.txt"
    rows.write_text("a\nb\nc\n")
    args = [PYTHON, str(job), str(tmp_path / "cp"), str(rows)]
    first = subprocess.run(args, capture_output=True, text=True, env=python_env(), timeout=900,
                           check=False)
    assert first.returncode == 0, first.stderr
    rows.write_text("c\nb\na\n")
    again = subprocess.run(args, capture_output=True, text=True, env=python_env(), timeout=900,
                           check=False)
    assert again.returncode == 1
    assert "Traceback" not in again.stderr, again.stderr
    assert again.stderr.rstrip().splitlines()[-1].startswith("InputChangedError: Input file")
