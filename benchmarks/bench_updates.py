"""Benchmark: throughput of ``EnhancedCheckpoint.update()`` in one process.

What is measured
    Updates per second of a loop that marks one unit done by index per update,
    as a stage does: ``cp.update(processed=1, successful=1, index=i)`` for
    ``i in range(N)``, with ``log_every=0`` so logging is not measured and every
    other option at its default (a group is committed to the journal every
    ``save_every=10`` updates). It is run in each durability mode: ``fsync``
    (the default), ``flush`` and ``none``. ``start()`` happens before the clock
    starts (its disk work is drained first); ``close()`` (last commit, snapshot,
    state file, fsync) is timed on its own after the loop's queued disk work is
    drained.

The naive baseline
    A hand-written checkpoint: counters plus the list of processed indexes in a
    dict, and every 10 updates the whole state is rewritten as JSON to a temp
    file that ``os.replace`` moves over the old one (no fsync, which flatters
    it). Each save costs more than the last, so the total is quadratic: it runs
    fewer updates (20,000 instead of 200,000), which flatters it again.

fsync accounting
    ``os.fsync`` is wrapped in this process to count its calls from every thread
    (the checkpoint fsyncs on a background thread), during the loop and during
    ``close()``. Groups are counted by reading the journal back after the loop.
    A timed loop lasts less than ``sync_interval`` (1 s), so one more run of the
    default mode keeps updating for 5 s to show the periodic fsync.

How
    Each measurement runs in a fresh temporary directory (``--dir`` picks where;
    it should be on the disk you care about, not a tmpfs). The configurations
    are interleaved within each round; the table shows the median of
    ``--rounds`` rounds, the min..max spread, ratios to the naive baseline and
    to the default mode, and updates per CPU-second (the loop's process CPU
    time, which other load on the machine disturbs less than wall time).

    ``--profile`` also runs the default mode once under cProfile and prints its
    top costs (profiling slows it down: read the shares, not the times).

    python benchmarks/bench_updates.py [--rounds 5] [--quick] [--profile] [--dir DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import median, print_header, spread, table

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.journal.frames import scan_segment

MODES = ("fsync", "flush", "none")
DEFAULT_MODE = "fsync"
SAVE_EVERY = 10  # the default save_every, used by the naive baseline too
GOAL_UPDATES_PER_S = 200_000
STAGE = "bench"


@dataclass
class Sample:
    """One measured run of one configuration."""

    updates: int
    seconds: float
    close_seconds: float
    #: CPU time of the loop (all threads): less sensitive than wall time to other load.
    cpu_seconds: float = 0.0
    fsyncs_loop: int = 0
    fsyncs_close: int = 0
    groups: int | None = None

    @property
    def rate(self) -> float:
        return self.updates / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.updates / self.cpu_seconds


class FsyncCounter:
    """While installed, counts ``os.fsync`` calls made by any thread of this process."""

    def __init__(self) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._real = os.fsync

    def _counting_fsync(self, fd: Any) -> None:
        with self._lock:
            self.count += 1
        self._real(fd)

    def __enter__(self) -> FsyncCounter:
        os.fsync = self._counting_fsync
        return self

    def __exit__(self, *exc: object) -> None:
        os.fsync = self._real


def journal_groups(checkpoint_dir: str) -> int:
    """Number of group records in every journal segment of the stage."""
    segments = sorted((Path(checkpoint_dir) / STAGE).glob("journal-*.log"))
    return sum(len(scan_segment(p.read_bytes()).payloads) for p in segments)


def run_ours(mode: str, n: int, parent: str) -> Sample:
    """Time ``n`` updates of a fresh stage in durability ``mode``, then ``close()``."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp, FsyncCounter() as fsyncs:
        cp = EnhancedCheckpoint(tmp, STAGE, durability=mode, log_every=0)
        cp.start()
        cp.drain_io()
        groups_before = journal_groups(tmp)
        fsyncs.count = 0
        update = cp.update
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            update(processed=1, successful=1, index=i)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        cp.drain_io()  # fsyncs the loop queued count for the loop, not for close()
        fsyncs_loop = fsyncs.count
        # In "none" mode groups wait in a process buffer, so the file does not show them.
        groups = journal_groups(tmp) - groups_before if mode != "none" else None
        t0 = time.perf_counter()
        cp.close()
        close_seconds = time.perf_counter() - t0
        return Sample(n, seconds, close_seconds, cpu, fsyncs_loop, fsyncs.count - fsyncs_loop,
                      groups)


def sustained_fsync(seconds: float, parent: str) -> Sample:
    """Default mode for ``seconds`` of updates: long enough for the periodic fsync to show."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp, FsyncCounter() as fsyncs:
        cp = EnhancedCheckpoint(tmp, STAGE, durability=DEFAULT_MODE, log_every=0)
        cp.start()
        cp.drain_io()
        groups_before = journal_groups(tmp)
        fsyncs.count = 0
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for i in range(n, n + 10_000):
                cp.update(processed=1, successful=1, index=i)
            n += 10_000
        elapsed = time.perf_counter() - t0
        cp.drain_io()
        sample = Sample(n, elapsed, 0.0, 0.0, fsyncs.count, 0, journal_groups(tmp) - groups_before)
        cp.close()
        return sample


def profile_default(n: int, parent: str) -> None:
    """One default-mode run under cProfile: where the time of an update goes."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        cp = EnhancedCheckpoint(tmp, STAGE, durability=DEFAULT_MODE, log_every=0)
        cp.start()
        cp.drain_io()
        profiler = cProfile.Profile()
        profiler.enable()
        for i in range(n):
            cp.update(processed=1, successful=1, index=i)
        profiler.disable()
        cp.close()
    print(f"\n## cProfile of {n:,} updates, durability={DEFAULT_MODE} (profiling slows it)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)


def naive_save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)


def run_naive(n: int, parent: str) -> Sample:
    """Time ``n`` updates of the rewrite-the-whole-JSON approach, saving every 10."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        path = Path(tmp) / "state.json"
        state: dict[str, Any] = {"processed": 0, "successful": 0, "failed": 0, "skipped": 0,
                                 "last_index": None, "processed_indexes": []}
        done: list[int] = state["processed_indexes"]
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            state["processed"] += 1
            state["successful"] += 1
            state["last_index"] = i
            done.append(i)
            if (i + 1) % SAVE_EVERY == 0:
                naive_save(path, state)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        naive_save(path, state)  # the final save, its counterpart of close()
        return Sample(n, seconds, time.perf_counter() - t0, cpu)


def measure(rounds: int, n: int, n_naive: int, parent: str) -> dict[str, list[Sample]]:
    """Run every configuration once per round, interleaved, so drift hits all alike."""
    runs: dict[str, Callable[[], Sample]] = {
        f"ours, durability={m}": (lambda m=m: run_ours(m, n, parent)) for m in MODES}
    runs["naive JSON rewrite"] = lambda: run_naive(n_naive, parent)
    samples: dict[str, list[Sample]] = {name: [] for name in runs}
    for r in range(rounds):
        for name, run in runs.items():
            samples[name].append(run())
        print(f"round {r + 1}/{rounds} done", flush=True)
    print()
    return samples


def fsync_cell(samples: list[Sample]) -> str:
    """fsync calls per update, over the loops of all rounds."""
    total = sum(s.fsyncs_loop for s in samples)
    return f"{total / sum(s.updates for s in samples):.1e}" if total else "0"


def report(samples: dict[str, list[Sample]]) -> float:
    """Print the table; return the median updates/s of the default mode."""
    rates = {name: median([s.rate for s in ss]) for name, ss in samples.items()}
    naive = rates["naive JSON rewrite"]
    default = rates[f"ours, durability={DEFAULT_MODE}"]
    headers = ["configuration", "updates", "median upd/s", "min..max upd/s", "x naive",
               "x default", "upd/CPU-s", "close() ms", "fsync/update", "groups/round"]
    rows = []
    for name, ss in samples.items():
        groups = ss[0].groups
        rows.append([
            name, f"{ss[0].updates:,}", f"{rates[name]:,.0f}", spread([s.rate for s in ss]),
            f"{rates[name] / naive:.1f}", f"{rates[name] / default:.2f}",
            f"{median([s.cpu_rate for s in ss]):,.0f}",
            f"{median([s.close_seconds for s in ss]) * 1000:.1f}",
            "-" if name.startswith("naive") else fsync_cell(ss),
            "-" if groups is None else f"{groups:,}",
        ])
    print(table(headers, rows))
    return default


def report_fsyncs(samples: list[Sample], sustained: Sample) -> None:
    """How the fsyncs of the default mode relate to updates and groups."""
    loop = sum(s.fsyncs_loop for s in samples)
    updates = sum(s.updates for s in samples)
    print(f"\nfsync mode: {loop} fsync(s) in the timed loops ({updates:,} updates, "
          f"{sum(s.seconds for s in samples):.2f} s); close() does "
          f"{median([s.fsyncs_close for s in samples]):.0f} more (median).")
    run, fsyncs, groups = sustained, max(sustained.fsyncs_loop, 1), sustained.groups or 0
    print(f"fsync mode, {run.seconds:.1f} s of sustained updates: {run.fsyncs_loop} fsync(s) "
          f"for {run.updates:,} updates in {groups:,} groups, i.e. one per "
          f"{run.updates / fsyncs:,.0f} updates or {groups / fsyncs:,.0f} groups "
          f"({run.rate:,.0f} updates/s).")
    print("The journal is fsynced at most once per sync_interval (1 s), on the I/O thread, "
          "however many groups were committed;\nthe other fsyncs are snapshots (a segment "
          "passed compact_min_bytes) and state-file writes.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration (5)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20,000 updates (naive: 2,000)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one default-mode run and print its top costs")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the temporary checkpoint directories go")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    n, n_naive = (20_000, 2_000) if args.quick else (200_000, 20_000)
    print_header("EnhancedCheckpoint.update() throughput, one process", args.dir)
    print(f"ours: {n:,} updates per run; naive baseline: {n_naive:,} updates per run (it is "
          f"quadratic in N, so it gets fewer; at {n:,} it would be slower still).")
    print(f"update: cp.update(processed=1, successful=1, index=i); save_every={SAVE_EVERY}, "
          f"log_every=0; median of {args.rounds} rounds.\n")
    samples = measure(args.rounds, n, n_naive, args.dir)
    default = report(samples)
    sustained = sustained_fsync(1.5 if args.quick else 5.0, args.dir)
    report_fsyncs(samples[f"ours, durability={DEFAULT_MODE}"], sustained)
    verdict = "met" if default >= GOAL_UPDATES_PER_S else "NOT met"
    print(f"\ngoal >= {GOAL_UPDATES_PER_S:,} updates/s in the default mode: {verdict} "
          f"(median {default:,.0f}/s, {default / GOAL_UPDATES_PER_S:.1%} of the goal)")
    if args.profile:
        profile_default(n, args.dir)


if __name__ == "__main__":
    main()
