"""Benchmark: how long a stage with 1,000,000 done keys takes to resume, and its memory.

What is measured
    The time of ``EnhancedCheckpoint(dir, stage).open()`` followed by ``start()``
    in a fresh process, for a stage whose 1,000,000 units are done, and the
    memory that takes: the tracemalloc peak and the ``ru_maxrss`` growth over
    the interpreter's baseline after its imports, both per key. Goals: < 2 s
    and < 64 bytes per key.

The stages (each built once per key kind, in a subprocess)
    keys: integer indexes (``index=i``) or URL strings
    (``key="https://example.com/page/<i>"``, stored as 64-bit hashes).

    closed, snapshot:      the build calls ``close()``, which snapshots every key.
    killed, journal only:  the build (``compact_min_bytes`` set out of reach, so
                           nothing is compacted) prints that its updates are done,
                           calls ``cp.save(force=True)``, prints that, and is
                           killed with SIGKILL: every key is replayed from the
                           journal. The crash case, at its worst.
    killed, defaults:      the same crash with default options: the newest
                           snapshot plus the journal segment written after it.

How
    Each round copies the built stage to a fresh directory and reopens it in a
    fresh interpreter twice: once timed (and ``ru_maxrss`` read), once under
    tracemalloc (which slows allocation, so it is not timed). The parent never
    imports the library, and stays small: a child's ``ru_maxrss`` starts at its
    parent's high-water mark. Files are in the page cache (just copied): this is
    a warm-cache resume. Medians of ``--rounds`` rounds.

    ``--profile`` also reopens each stage once under cProfile and prints its top
    costs.

    python benchmarks/bench_resume.py [--rounds 3] [--quick] [--profile] [--dir DIR]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import median, print_header, spread, table, wait_to_be_killed

STAGE = "resume"
KEY_KINDS = ("int", "url")
LAYOUTS = ("closed, snapshot", "killed, journal only", "killed, defaults")
GOAL_SECONDS = 2.0
GOAL_BYTES_PER_KEY = 64
NEVER_COMPACT = 1 << 50


@dataclass
class Case:
    kind: str
    layout: str
    template: Path
    snapshot_bytes: int
    journal_bytes: int


# -- the child processes (they import the library; the parent does not) ----------------


def unit(kind: str, i: int) -> dict[str, Any]:
    if kind == "int":
        return {"index": i}
    return {"key": f"https://example.com/page/{i}"}


def build_worker(directory: str, kind: str, layout: str, n: int) -> None:
    """Build the stage; for a killed layout, announce each step and wait for SIGKILL."""
    from scrapy_checkpoint import EnhancedCheckpoint

    options: dict[str, Any] = {"log_every": 0}
    if layout == "killed, journal only":
        options["compact_min_bytes"] = NEVER_COMPACT
    cp = EnhancedCheckpoint(directory, STAGE, **options)
    cp.start(total_items=n)
    for i in range(n):
        cp.update(processed=1, successful=1, **unit(kind, i))
    if layout == "closed, snapshot":
        cp.close()
        return
    wait_to_be_killed(cp)  # the parent kills us now


def memory_kib() -> tuple[int, int]:
    """(ru_maxrss, VmHWM) in KiB: the second is this process's own high-water mark."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        status = Path("/proc/self/status").read_text()
        hwm = int(status.split("VmHWM:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        hwm = maxrss
    return maxrss, hwm


def reopen_worker(directory: str, mode: str) -> None:
    """Reopen the stage and print the figures as JSON (``mode``: ``time``, ``trace``) or
    the top costs (``profile``); exit without closing it."""
    import cProfile
    import pstats
    import tracemalloc

    from scrapy_checkpoint import EnhancedCheckpoint

    gc.collect()
    rss0, hwm0 = memory_kib()
    profiler = cProfile.Profile()
    if mode == "trace":
        tracemalloc.start()
    elif mode == "profile":
        profiler.enable()
    t0, c0 = time.perf_counter(), time.process_time()
    cp = EnhancedCheckpoint(directory, STAGE, log_every=0)
    cp.open()
    t1 = time.perf_counter()
    cp.start()
    t2, c2 = time.perf_counter(), time.process_time()
    if mode == "profile":
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)
        sys.stdout.flush()
        os._exit(0)
    result: dict[str, Any] = {"open_s": t1 - t0, "start_s": t2 - t1, "total_s": t2 - t0,
                              "cpu_s": c2 - c0}
    if mode == "trace":
        result["traced_current"], result["traced_peak"] = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    rss1, _ = memory_kib()
    result.update(keys=len(cp.live.done), maxrss_delta=(rss1 - rss0) * 1024,
                  maxrss_inherited=rss0 > hwm0 + 1024)
    print(json.dumps(result), flush=True)
    os._exit(0)  # no close(): it would snapshot, which is not part of resuming


# -- the parent -------------------------------------------------------------------------


def worker_command(*args: str) -> list[str]:
    return [sys.executable, __file__, "--worker", *args]


def build(kind: str, layout: str, n: int, directory: Path) -> None:
    command = worker_command("build", str(directory), kind, layout, str(n))
    if layout == "closed, snapshot":
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
        return
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True,
                          stderr=subprocess.DEVNULL) as proc:
        assert proc.stdout is not None
        said = [proc.stdout.readline().strip() for _ in range(2)]
        if said != ["updates done", "saved"]:
            proc.kill()
            raise RuntimeError(f"build of {kind}/{layout} said {said!r}")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def stage_bytes(directory: Path) -> tuple[int, int]:
    """Bytes of the newest snapshot, and of the journal segments replayed after it."""
    files = {p.name: p.stat().st_size for p in (directory / STAGE).iterdir()}
    snaps = sorted(name for name in files if name.startswith("snapshot-") and name.endswith(".bin"))
    newest = snaps[-1].removeprefix("snapshot-").removesuffix(".bin") if snaps else "00000000"
    journal = sum(size for name, size in files.items() if name.startswith("journal-")
                  and name.endswith(".log") and name[8:16] >= newest)
    return (files[snaps[-1]] if snaps else 0), journal


def reopen(case: Case, parent: Path, mode: str) -> str:
    """Copy the built stage to a fresh directory and reopen it in a fresh interpreter."""
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        target = Path(tmp) / "checkpoints"
        shutil.copytree(case.template, target)
        return subprocess.run(worker_command("reopen", str(target), mode),
                              check=True, capture_output=True, text=True).stdout


def reopen_figures(case: Case, parent: Path, mode: str) -> dict[str, Any]:
    return dict(json.loads(reopen(case, parent, mode).strip().splitlines()[-1]))


def measure_case(case: Case, n: int, rounds: int, parent: Path) -> dict[str, float]:
    timed, traced = [], []
    for _ in range(rounds):
        timed.append(reopen_figures(case, parent, "time"))
        traced.append(reopen_figures(case, parent, "trace"))
    for result in timed + traced:
        if result["keys"] != n:
            raise RuntimeError(f"{case.kind}/{case.layout}: reopened {result['keys']} keys, not {n}")
        if result["maxrss_inherited"]:
            print(f"warning: {case.kind}/{case.layout}: ru_maxrss baseline inherited from the "
                  "parent; the maxrss figure is too low", file=sys.stderr)
    total = [r["total_s"] for r in timed]
    return {
        "total": median(total), "spread": spread(total, ".2f"),
        "open": median([r["open_s"] for r in timed]),
        "start": median([r["start_s"] for r in timed]),
        "cpu": median([r["cpu_s"] for r in timed]),
        "peak": median([r["traced_peak"] for r in traced]) / n,
        "retained": median([r["traced_current"] for r in traced]) / n,
        "maxrss": median([r["maxrss_delta"] for r in timed]) / n,
    }


def report(figures: list[tuple[Case, dict[str, float]]]) -> None:
    headers = ["keys", "stored as", "snapshot MB", "journal MB", "reopen s", "min..max s",
               "open s", "start s", "CPU s", "peak B/key", "retained B/key", "maxrss B/key",
               f"< {GOAL_SECONDS:.0f} s", f"< {GOAL_BYTES_PER_KEY} B/key"]
    rows = []
    for case, f in figures:
        fast = f["total"] < GOAL_SECONDS
        small = f["peak"] < GOAL_BYTES_PER_KEY and f["maxrss"] < GOAL_BYTES_PER_KEY
        rows.append([
            case.kind, case.layout, f"{case.snapshot_bytes / 1e6:.1f}",
            f"{case.journal_bytes / 1e6:.1f}", f"{f['total']:.2f}", f["spread"],
            f"{f['open']:.2f}", f"{f['start']:.3f}", f"{f['cpu']:.2f}", f"{f['peak']:.1f}",
            f"{f['retained']:.1f}", f"{f['maxrss']:.1f}", "yes" if fast else "NO",
            "yes" if small else "NO",
        ])
    print(table(headers, rows, left=2))
    print(f"\ngoals: reopen < {GOAL_SECONDS:.0f} s, and < {GOAL_BYTES_PER_KEY} bytes/key by "
          "both the tracemalloc peak and the ru_maxrss growth.")
    print("reopen: wall time of open()+start(); CPU: its process CPU time (less disturbed by "
          "other load); peak: tracemalloc peak during open()+start();\nretained: still "
          "allocated after start(); maxrss: ru_maxrss growth over the baseline after imports.")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="reopens per stage (3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 keys")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the temporary checkpoint directories go")
    parser.add_argument("--profile", action="store_true",
                        help="also reopen each stage once under cProfile and print its top costs")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    return parser.parse_args()


def run_worker(args: list[str]) -> None:
    if args[0] == "build":
        build_worker(args[1], args[2], args[3], int(args[4]))
    else:
        reopen_worker(args[1], args[2])


def run_case(kind: str, layout: str, n: int, args: argparse.Namespace,
             work: Path) -> tuple[Case, dict[str, float]]:
    """Build one stage, reopen it ``--rounds`` times (and once profiled with ``--profile``)."""
    template = work / f"{kind}-{layout.replace(', ', '-').replace(' ', '_')}"
    t0 = time.perf_counter()
    build(kind, layout, n, template)
    case = Case(kind, layout, template, *stage_bytes(template))
    print(f"built {kind} / {layout} in {time.perf_counter() - t0:.1f} s; reopening...",
          flush=True)
    figures = measure_case(case, n, args.rounds, Path(args.dir))
    if args.profile:
        print(f"\n## cProfile of the reopen: {kind} / {layout}")
        print(reopen(case, Path(args.dir), "profile").strip(), "\n", flush=True)
    return case, figures


def main() -> None:
    args = parse_args()
    if args.worker:
        run_worker(args.worker)
        return
    n = 20_000 if args.quick else 1_000_000
    print_header("Resume of a stage with many done keys", args.dir)
    print(f"{n:,} done keys per stage; median of {args.rounds} reopens, each in a fresh "
          "interpreter on a fresh copy of the stage.\n")
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        figures = [run_case(kind, layout, n, args, Path(work))
                   for kind in KEY_KINDS for layout in LAYOUTS]
    print()
    report(figures)


if __name__ == "__main__":
    main()
