"""A stage of 2 * N items whose state file is written only at its start and end: it does N
items, commits them, prints "one", waits for a line on stdin, does N more, commits, prints
"two", and finishes at the next line.

usage: two_step_job.py CHECKPOINT_DIR STAGE N
"""

from __future__ import annotations

import asyncio
import sys

from scrapy_checkpoint import AsyncCheckpointTracker


async def main() -> None:
    directory, stage, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async with AsyncCheckpointTracker(directory, stage, progress_bar=False, log_every=0,
                                      state_interval=3600) as tracker:
        tracker.start(total_items=3 * n)
        for step in ("one", "two"):
            base = n if step == "two" else 0
            for i in range(base, base + n):
                tracker.update(processed=1, successful=1, index=i)
            await tracker.save()  # committed to the journal; the state file is not rewritten
            print(step, flush=True)
            await asyncio.to_thread(sys.stdin.readline)
        for i in range(2 * n, 3 * n):
            tracker.update(processed=1, successful=1, index=i)


asyncio.run(main())
