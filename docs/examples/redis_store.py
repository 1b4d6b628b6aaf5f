"""A stage kept in Redis: killed with SIGKILL mid-run, resumed, inspected, reset.

Uses $REDIS_URL (default redis://127.0.0.1:6379/0) with a key prefix of its own
(docs-example-<random>) and deletes its keys at the end. Without a reachable
Redis it says so and exits 0 (exit 1 under CI=true). Needs the redis extra:
pip install 'scrapy-checkpoint[redis]'. See docs/redis.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import uuid

import redis

from scrapy_checkpoint import AsyncCheckpointTracker, UnifiedCheckpointManager

TOTAL = 200
BASE_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
CHILD = sys.argv[1:2] == ["child"]
PREFIX = sys.argv[2] if CHILD else f"docs-example-{uuid.uuid4().hex[:8]}"
URL = f"{BASE_URL}{'&' if '?' in BASE_URL else '?'}prefix={PREFIX}"


async def run_stage(kill_at: int | None) -> None:
    # The URL can be given as backend=..., or in place of the checkpoint directory.
    async with AsyncCheckpointTracker(backend=URL, stage="stage3", progress_bar=False,
                                      log_every=0) as tracker:
        tracker.start(total_items=TOTAL)
        for i in range(TOTAL):
            if tracker.should_skip(i):  # finished by an earlier run
                continue
            await asyncio.sleep(0.002)
            tracker.update(processed=1, successful=1, last_item=f"row-{i}", index=i)
            if i == kill_at:
                tracker.checkpoint.save()  # commit what is done, then die like kill -9
                os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    client = redis.Redis.from_url(BASE_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        print(f"No Redis at {BASE_URL} ({exc}); set REDIS_URL to run this example.")
        sys.exit(1 if os.environ.get("CI") == "true" else 0)
    try:
        if CHILD:
            asyncio.run(run_stage(kill_at=119))
            return
        # 1. A process works on the stage and is killed with SIGKILL at item 120.
        subprocess.run([sys.executable, __file__, "child", PREFIX], check=False)
        keys = sorted(k.decode().removeprefix(PREFIX + ":") for k in client.scan_iter(f"{PREFIX}:*"))
        print("keys after the kill:", keys)
        print("meta:", {k.decode(): int(v) for k, v in client.hgetall(f"{PREFIX}:stage3:meta").items()})

        # 2. The same stage again: the dead owner was on this host, so its lease is taken
        #    over at once, and the run resumes after the 120 committed items.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        asyncio.run(run_stage(kill_at=None))
        manager = UnifiedCheckpointManager(URL)
        view = manager.read("stage3")
        print("after the resume:", view.display_status, view.state.progress.processed_items,
              "processed,", view.state.done_units, "units done,", view.state.recoveries, "recovery")
        assert view.state.progress.processed_items == TOTAL
        print("state key expires in", client.ttl(f"{PREFIX}:stage3:state"), "s (completed: 1 h)")

        # 3. Reset deletes the stage's keys (under its lease).
        manager.reset("stage3")
        print("stages after reset:", manager.stages())
    finally:
        if not CHILD:
            for key in client.scan_iter(f"{PREFIX}:*"):
                client.delete(key)
        client.close()


if __name__ == "__main__":
    main()
