"""The basic tracker loop: skip what an earlier run finished, record what this run finishes.

The first run stops with an error after 40 of 100 rows; the second run skips those
40 and finishes the rest. Run it with ``python docs/examples/tracker_basic.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path

from scrapy_checkpoint import AsyncCheckpointTracker


class Interrupted(Exception):
    """Stands in for whatever stops a real run."""


async def handle(row: dict[str, object]) -> None:
    await asyncio.sleep(0)  # real work: an HTTP call, a parse, a write...


async def run_stage(checkpoint_dir: Path, input_file: Path, stop_after: int | None) -> int:
    rows = [json.loads(line) for line in input_file.read_text().splitlines()]
    handled = 0
    async with AsyncCheckpointTracker(checkpoint_dir, "stage3") as tracker:
        tracker.start(total_items=len(rows), input_file=input_file)
        for i, row in enumerate(rows):
            if tracker.should_skip(i):
                continue
            if stop_after is not None and handled == stop_after:
                raise Interrupted(f"stopped after {handled} rows")
            await handle(row)
            handled += 1
            tracker.update(processed=1, successful=1, last_item=row["id"], index=i)
        tracker.print_progress()
    return handled


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir = Path(tmp, "checkpoints")
        input_file = Path(tmp, "rows.jsonl")
        input_file.write_text("".join(json.dumps({"id": f"row-{i}"}) + "\n" for i in range(100)))

        try:
            asyncio.run(run_stage(checkpoint_dir, input_file, stop_after=40))
        except Interrupted as exc:
            print(f"first run: {exc}")  # the stage is now "failed", its 40 rows recorded

        handled = asyncio.run(run_stage(checkpoint_dir, input_file, stop_after=None))
        print(f"second run handled {handled} rows")
        assert handled == 60

        state = json.loads(Path(checkpoint_dir, "stage3.json").read_text())
        print(state["status"], state["progress"]["processed_items"], state["last_processed_item"])
        assert (state["status"], state["progress"]["processed_items"]) == ("completed", 100)


if __name__ == "__main__":
    main()
