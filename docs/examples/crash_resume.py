"""kill -9 in the middle of a stage, run it again, and check what the guarantees promise.

A child process handles 300 items, appending each one to an output file (its side
effect) before it calls ``update()``. The parent kills it with SIGKILL part way, then
runs the same stage again. Afterwards:

* every item was handled at least once (the side effects: at-least-once);
* items handled twice are only those whose update was not yet committed or that were
  in flight at the kill (at most ``save_every`` updates plus the in-flight ones);
* the checkpoint's counters are exact: 300 processed, not 300 + the redone ones.

POSIX only (like the file store's lock).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from scrapy_checkpoint import AsyncCheckpointTracker, UnifiedCheckpointManager

TOTAL = 300


async def run_stage(checkpoint_dir: str, output: Path, delay: float) -> None:
    async with AsyncCheckpointTracker(checkpoint_dir, "stage3", progress_bar=False) as tracker:
        tracker.start(total_items=TOTAL)
        with output.open("a") as out:
            for i in range(TOTAL):
                if tracker.should_skip(i):
                    continue
                await asyncio.sleep(delay)
                out.write(f"{i}\n")  # the side effect...
                out.flush()
                tracker.update(processed=1, successful=1, index=i)  # ...then the record


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir, output = os.path.join(tmp, "checkpoints"), Path(tmp, "out.txt")
        child = subprocess.Popen([sys.executable, __file__, "--child", checkpoint_dir, str(output)])
        deadline = time.monotonic() + 30
        while not output.exists() or len(output.read_text().splitlines()) < 105:
            if child.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the child process did not get going")
            time.sleep(0.01)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()

        view = UnifiedCheckpointManager(checkpoint_dir).read("stage3")
        print(f"after kill -9: {view.display_status}, {view.state.progress.processed_items} "
              f"processed, {len(output.read_text().splitlines())} side effects")

        asyncio.run(run_stage(checkpoint_dir, output, delay=0))

        handled = Counter(int(line) for line in output.read_text().splitlines())
        state = UnifiedCheckpointManager(checkpoint_dir).read("stage3").state
        redone = sorted(i for i, n in handled.items() if n > 1)
        print(f"status {state.status}, processed {state.progress.processed_items}, "
              f"recoveries {state.recoveries}, redone items {redone}")
        assert set(handled) == set(range(TOTAL))  # at-least-once side effects
        assert state.progress.processed_items == TOTAL  # exactly-once counters
        assert len(redone) <= 10 + 1  # save_every (10) uncommitted updates + 1 in flight


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        asyncio.run(run_stage(sys.argv[2], Path(sys.argv[3]), delay=0.005))
    else:
        main()
