"""Crash safety of an asyncio stage, proven by killing real processes.

A stage is SIGKILLed at random moments many times, then run to the end. After
each kill the checkpoint is read from disk: the next run must not redo any
unit that it says is done, and may redo at most one uncommitted group. At the
end every item was processed and the counters are exact.
"""

from __future__ import annotations

import random
import signal
import subprocess
from pathlib import Path

import pytest

from scrapy_checkpoint import Status, read_stage
from scrapy_checkpoint.stores import open_store

from .conftest import PYTHON, SCRIPTS, python_env

N_ITEMS = 1500
CONCURRENCY = 16
SAVE_EVERY = 10  # the default: at most this many updates sit uncommitted at a kill


def _run(directory: str, log: Path, seed: int, durability: str,
         kill_after: int | None) -> tuple[int, bool]:
    """Run the job; SIGKILL it after ``kill_after`` completions. Returns (completions, finished)."""
    proc = subprocess.Popen(
        [PYTHON, str(SCRIPTS / "tracker_job.py"), str(directory), "stage3", str(N_ITEMS),
         str(log), str(CONCURRENCY), str(seed), durability],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=python_env(),
    )
    assert proc.stdout is not None
    seen, finished = 0, False
    for line in proc.stdout:
        if line.strip() == b"DONE":
            finished = True
            break
        seen += 1
        if kill_after is not None and seen >= kill_after:
            proc.send_signal(signal.SIGKILL)
            break
    proc.stdout.close()
    _, err = proc.communicate()
    if kill_after is None or finished:
        assert proc.returncode == 0, err.decode()
    return seen, finished


def _logged(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


@pytest.mark.slow
@pytest.mark.parametrize(("seed", "durability"), [(1, "fsync"), (2, "fsync"), (3, "fsync"),
                                                  (4, "flush")])
def test_kill_at_random_moments_loses_nothing_and_redoes_only_the_last_group(
    tmp_path: Path, persistent_location: str, seed: int, durability: str
) -> None:
    rng = random.Random(seed)
    directory = persistent_location
    store = open_store(persistent_location)
    done_before: set[int] = set()
    all_logged: list[int] = []
    kills = 0
    run = 0
    while kills < 5 or run < 6:
        run += 1
        log = tmp_path / f"run{run}.log"
        remaining = N_ITEMS - len(done_before)
        final = kills >= 5
        kill_after = None if final else rng.randint(1, max(1, remaining // 4))
        _, finished = _run(directory, log, seed, durability, kill_after)
        logged = _logged(log)
        all_logged += logged
        # Never redo a unit the checkpoint on disk said was done.
        redone = sorted(set(logged) & done_before)
        assert not redone, f"run {run} redid finished units {redone[:10]}"
        view = read_stage(store, "stage3")
        done_now = {i for i in range(N_ITEMS) if view.is_done(i)}
        assert done_before <= done_now, "a unit recorded done was lost"
        if finished:
            break
        kills += 1
        # Units worked on in this run but not recorded: at most the uncommitted group.
        lost_tail = set(logged) - done_now
        assert len(lost_tail) <= SAVE_EVERY, f"{len(lost_tail)} finished units were not recorded"
        assert view.state.status is Status.RUNNING
        done_before = done_now

    assert kills >= 5
    assert sorted(set(all_logged)) == list(range(N_ITEMS)), "an item was never processed"
    duplicates = len(all_logged) - N_ITEMS
    assert duplicates <= kills * SAVE_EVERY
    state = read_stage(store, "stage3").state
    assert state.status is Status.COMPLETED
    assert state.progress.processed_items == N_ITEMS
    assert state.progress.successful_items == N_ITEMS
    assert state.done_units == N_ITEMS
    assert state.recoveries == kills
