"""Concurrent work keyed by URL: asyncio.gather with a semaphore, skipping by key.

Fetches finish out of order, so the checkpoint records each finished URL in its
done-set instead of a "last index". The first run is cancelled part way (like a
Ctrl-C), which leaves the stage ``paused``; the second run fetches only the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import tempfile

from scrapy_checkpoint import AsyncCheckpointTracker

URLS = [f"https://example.com/product/{n}" for n in range(200)]


async def fetch(url: str) -> str:
    await asyncio.sleep(random.uniform(0.001, 0.01))  # a real run would do an HTTP GET
    return f"<html>{url}</html>"


async def crawl(checkpoint_dir: str, fetched: list[str], stop_after: int | None) -> None:
    this_run = asyncio.current_task()
    semaphore = asyncio.Semaphore(20)
    async with AsyncCheckpointTracker(checkpoint_dir, "product_pages") as tracker:
        tracker.start(total_items=len(URLS))

        async def one(url: str) -> None:
            if tracker.should_skip(url):  # finished by an earlier run
                return
            async with semaphore:
                try:
                    await fetch(url)
                except OSError as exc:
                    tracker.record_error(exc)
                    tracker.update(processed=1, failed=1, last_item=url, key=url)
                else:
                    fetched.append(url)
                    tracker.update(processed=1, successful=1, last_item=url, key=url)
                if len(fetched) == stop_after and this_run is not None:
                    this_run.cancel()  # what Ctrl-C does to asyncio.run()'s task

        await asyncio.gather(*(one(url) for url in URLS))


def main() -> None:
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        first: list[str] = []
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(crawl(checkpoint_dir, first, stop_after=50))
        second: list[str] = []
        asyncio.run(crawl(checkpoint_dir, second, stop_after=None))
        print(f"first run fetched {len(first)}, second run fetched {len(second)}")
        # A clean stop (cancel, Ctrl-C) commits every update: nothing finished is redone.
        assert sorted(first + second) == sorted(URLS)


if __name__ == "__main__":
    main()
