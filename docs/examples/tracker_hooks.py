"""Hooks and the on_success / on_failure overrides.

Hooks are plain or async callables given to the constructor (``on_start``,
``on_progress``, ``on_complete``, ``on_failure``) or registered later with
``tracker.checkpoint.on(event, fn)``. They receive the EnhancedCheckpoint (and the
error, for ``failure``). ``on_progress`` runs with the progress log line, every
``log_every`` processed items. A hook that raises is logged, never propagated.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from scrapy_checkpoint import AsyncCheckpointTracker, EnhancedCheckpoint

events: list[str] = []


def on_start(cp: EnhancedCheckpoint) -> None:
    events.append(f"start: {cp.stage} status={cp.status}")


def on_progress(cp: EnhancedCheckpoint) -> None:
    events.append(f"progress: {cp.metrics().processed} processed")


async def on_complete(cp: EnhancedCheckpoint) -> None:
    # An async hook runs as a task on the loop, later: it sees the state as it is then.
    await asyncio.sleep(0)  # e.g. post to a chat channel
    events.append(f"complete hook: {cp.status}")


def on_failure(cp: EnhancedCheckpoint, error: BaseException) -> None:
    events.append(f"failure hook: {error!r}")


class NotifyingTracker(AsyncCheckpointTracker[Any]):
    async def on_success(self) -> None:
        events.append(f"on_success: {self.state.progress.processed_items} items")

    async def on_failure(self, error: BaseException) -> None:
        events.append(f"on_failure: {type(error).__name__}")


async def main_async(checkpoint_dir: str) -> None:
    async with NotifyingTracker(checkpoint_dir, "notify", progress_bar=False, log_every=50,
                                on_start=on_start, on_progress=on_progress) as tracker:
        tracker.checkpoint.on("complete", on_complete)
        tracker.start(total_items=120)
        for i in range(120):
            tracker.update(processed=1, successful=1, index=i)

    try:
        async with NotifyingTracker(checkpoint_dir, "broken", progress_bar=False,
                                    on_failure=on_failure) as tracker:
            tracker.start(total_items=10)
            raise ValueError("bad row 3")
    except ValueError:
        pass


def main() -> None:
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        asyncio.run(main_async(checkpoint_dir))
    print("\n".join(events))
    assert events == [
        "start: notify status=running",
        "progress: 50 processed",
        "progress: 100 processed",
        "on_success: 120 items",
        "complete hook: completed",
        "failure hook: ValueError('bad row 3')",
        "on_failure: ValueError",
    ]


if __name__ == "__main__":
    main()
