"""A killable asyncio stage for the crash tests.

Processes items 0..N-1 with many tasks finishing out of order. For each item it
appends ``<index>\n`` to the run's log (O_APPEND, one write) after the work and
just before ``tracker.update``; it also prints the index on stdout so the test
can kill it after a chosen number of completions.

usage: tracker_job.py CHECKPOINT_DIR STAGE N LOG_PATH CONCURRENCY SEED DURABILITY
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from scrapy_checkpoint import AsyncCheckpointTracker


async def main() -> None:
    directory, stage, n, log_path, concurrency, seed, durability = sys.argv[1:8]
    rng = random.Random(int(seed) * 7919 + os.getpid())
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    slots = asyncio.Semaphore(int(concurrency))

    async with AsyncCheckpointTracker(directory, stage, durability=durability,
                                      progress_bar=False, log_every=0) as tracker:
        tracker.start(total_items=int(n))

        async def handle(i: int) -> None:
            async with slots:
                await asyncio.sleep(rng.random() * 0.002)
                os.write(log_fd, f"{i}\n".encode())
                tracker.update(processed=1, successful=1, last_item=f"item-{i}", index=i)
                os.write(1, f"{i}\n".encode())

        await asyncio.gather(*(handle(i) for i in range(int(n)) if not tracker.should_skip(i)))
    os.write(1, b"DONE\n")


if __name__ == "__main__":
    asyncio.run(main())
