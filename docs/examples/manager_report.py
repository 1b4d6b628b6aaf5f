"""UnifiedCheckpointManager: every stage of a pipeline in one directory.

Builds four stages (completed, failed, paused, and one whose process was killed),
then reads them back: report(), read(), list_checkpoints(), export(), cleanup() and
reset_all().
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from scrapy_checkpoint import UnifiedCheckpointManager


async def build(manager: UnifiedCheckpointManager) -> None:
    async with manager.tracker("stage1_discover", progress_bar=False) as tracker:
        tracker.start(total_items=1200)
        for i in range(1200):
            tracker.update(processed=1, successful=1, index=i)

    try:
        async with manager.tracker("stage2_fetch", progress_bar=False) as tracker:
            tracker.start(total_items=1200)
            for i in range(700):
                ok = i % 50 != 7
                tracker.update(processed=1, successful=int(ok), failed=int(not ok), index=i)
            raise TimeoutError("proxy pool exhausted")
    except TimeoutError:
        pass

    async with manager.tracker("stage4_export", progress_bar=False) as tracker:
        tracker.start(total_items=400)
        tracker.update(processed=150, successful=150)
        raise asyncio.CancelledError  # like Ctrl-C: the stage is left paused


def crash_a_stage(checkpoint_dir: str) -> None:
    """A process that is killed with SIGKILL in the middle of stage3_parse."""
    code = (
        "import os, signal\n"
        "from scrapy_checkpoint import EnhancedCheckpoint\n"
        f"cp = EnhancedCheckpoint({checkpoint_dir!r}, 'stage3_parse')\n"
        "cp.start(total_items=650)\n"
        "for i in range(300):\n"
        "    cp.update(processed=1, successful=1, index=i)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir = os.path.join(tmp, "checkpoints")
        manager = UnifiedCheckpointManager(checkpoint_dir)
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(build(manager))
        crash_a_stage(checkpoint_dir)

        print(manager.report())
        print()

        print("stages:", manager.stages())
        view = manager.read("stage3_parse")  # read-only, exact (replays the journal)
        print("stage3_parse:", view.display_status, view.state.done_units, "units done,",
              "unit 299 done:", view.is_done(299), "unit 300 done:", view.is_done(300))
        for state in manager.list_checkpoints():
            print(f"  {state.stage:16} {state.status.value:10} {state.progress.processed_items}")

        # Keep the export outside the checkpoint directory (see docs/tracker.md).
        doc = manager.export(os.path.join(tmp, "export.json"))
        entry = doc["stages"][0]
        print("export entry keys:", sorted(entry))
        print(json.dumps({k: entry[k] for k in ("stage", "status", "display_status",
                                                "owner_alive", "disk")}))

        print("cleanup (dry run, older than 0 days):", manager.cleanup(0, dry_run=True))
        print("cleanup (default ttl_hours=24):", manager.cleanup())
        print("reset_all:", manager.reset_all())
        assert manager.stages() == []
        assert Path(tmp, "export.json").exists()


if __name__ == "__main__":
    main()
