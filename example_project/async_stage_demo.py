"""Demo: an asyncio stage killed with SIGKILL midway, run again, finishing exactly.

    make demo          (or: python example_project/async_stage_demo.py)

The stage "enrich" handles 2,000 items, 20 at a time, through
AsyncCheckpointTracker.map. The demo starts it, kills it with SIGKILL when
about 40% is done, shows the checkpoint as a crashed stage, runs the very same
command again, and checks the result: every item handled, none of the items
recorded as finished handled twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = HERE / ".demo"
CHECKPOINTS = WORK / "checkpoints"
OUTPUT = WORK / "enriched.txt"
N_ITEMS = 2000


async def stage() -> None:
    """The user's stage: what `python async_stage_demo.py --stage` runs."""
    from scrapy_checkpoint import AsyncCheckpointTracker

    logging.basicConfig(level=logging.INFO, format="    %(message)s", stream=sys.stdout)
    out = os.open(OUTPUT, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    async def enrich(item: int) -> None:
        await asyncio.sleep(random.uniform(0.005, 0.03))  # an API call, say
        os.write(out, f"{item}\n".encode())

    async with AsyncCheckpointTracker(CHECKPOINTS, "enrich", progress_bar=False,
                                      log_every=100) as tracker:
        result = await tracker.map(enrich, range(N_ITEMS), concurrency=20)
        print(f"    this run: {result.succeeded} handled, {result.skipped} skipped as already done",
              flush=True)


def run_stage(kill_at: int | None) -> None:
    cmd = [sys.executable, __file__, "--stage"]
    print(f"$ {' '.join(Path(c).name if i < 2 else c for i, c in enumerate(cmd))}", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        print(line, end="", flush=True)
        handled = len(OUTPUT.read_text().split()) if OUTPUT.exists() else 0
        if kill_at is not None and handled >= kill_at:
            proc.send_signal(signal.SIGKILL)
            print(f"    *** kill -9 {proc.pid} after {handled} items ***", flush=True)
            break
    proc.stdout.close()
    proc.wait()


def main() -> None:
    from scrapy_checkpoint import UnifiedCheckpointManager

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    manager = UnifiedCheckpointManager(CHECKPOINTS)

    print("1. Run the stage and kill it with SIGKILL at about 40%.\n")
    run_stage(kill_at=int(N_ITEMS * 0.4))
    print("\n2. The checkpoint after the kill:\n")
    print(manager.report())
    before = {i for i in range(N_ITEMS) if manager.read("enrich").is_done(i)}

    print("\n3. Run the same command again.\n")
    run_stage(kill_at=None)
    print("\n4. The checkpoint now:\n")
    print(manager.report())

    lines = [int(x) for x in OUTPUT.read_text().split()]
    missing = set(range(N_ITEMS)) - set(lines)
    repeats = len(lines) - len(set(lines))
    print(f"\nItems handled: {len(set(lines))}/{N_ITEMS}, missing: {len(missing)}; "
          f"handled twice: {repeats} (in flight or not yet committed at the kill; "
          f"{len(before)} recorded done before it were not redone).")
    state = manager.read("enrich").state
    ok = not missing and state.status.value == "completed" and repeats <= 20 + 10
    print("Demo OK" if ok else "Demo FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if sys.argv[1:] == ["--stage"]:
        asyncio.run(stage())
    else:
        main()
