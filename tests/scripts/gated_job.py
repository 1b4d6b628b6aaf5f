"""A stage that processes N items, prints "ready", and finishes only when stdin says so.

usage: gated_job.py CHECKPOINT_DIR STAGE N
"""

from __future__ import annotations

import asyncio
import sys

from scrapy_checkpoint import AsyncCheckpointTracker


async def main() -> None:
    directory, stage, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    async with AsyncCheckpointTracker(directory, stage, progress_bar=False, log_every=0,
                                      state_interval=0.1) as tracker:
        tracker.start(total_items=n + 1)
        for i in range(n):
            tracker.update(processed=1, successful=1, index=i)
        await tracker.save(force=True)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        tracker.update(processed=1, successful=1, index=n)


asyncio.run(main())
