"""tracker.map(): the common case in one call.

Runs ``await worker(item)`` for every item not finished before, ``concurrency`` at a
time, keyed by ``key(item)``. The first run records the items whose worker raised as
failed (done-with-failure, so they are skipped next time); the second run passes
``retry_failed=True`` to run exactly those again.
"""

from __future__ import annotations

import asyncio
import tempfile

from scrapy_checkpoint import AsyncCheckpointTracker

SKUS = [f"sku-{n:04d}" for n in range(300)]
flaky = {"sku-0007", "sku-0101", "sku-0250"}  # fail once, then work


async def enrich(sku: str) -> None:
    await asyncio.sleep(0.001)
    if sku in flaky:
        flaky.discard(sku)
        raise ConnectionError(f"{sku}: upstream timed out")


async def run(checkpoint_dir: str, retry_failed: bool) -> None:
    async with AsyncCheckpointTracker(checkpoint_dir, "enrich", progress_bar=False) as tracker:
        tracker.start(total_items=len(SKUS), retry_failed=retry_failed)
        result = await tracker.map(enrich, SKUS, concurrency=25, key=lambda sku: sku,
                                   on_error="record")
        print(result)
        state = tracker.state
        print(f"  processed={state.progress.processed_items} "
              f"failed={state.progress.failed_items} last error: {state.error_message}")


def main() -> None:
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        asyncio.run(run(checkpoint_dir, retry_failed=False))
        asyncio.run(run(checkpoint_dir, retry_failed=True))


if __name__ == "__main__":
    main()
