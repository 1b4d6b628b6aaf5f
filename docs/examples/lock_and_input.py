"""The two errors a second start can meet: the stage is in use, or its input changed.

* CheckpointLockedError: one writer per stage. The lock is an OS ``flock``: it is
  released when the holder closes the stage or its process dies, however it dies.
* InputChangedError: ``start(input_file=...)`` hashes the file (SHA-256 of its
  content) and refuses to resume with different content. Start over with
  ``start(..., reset=True)`` or ``UnifiedCheckpointManager(dir).reset(stage)``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from scrapy_checkpoint import (
    CheckpointLockedError,
    EnhancedCheckpoint,
    InputChangedError,
    UnifiedCheckpointManager,
)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint_dir, rows = Path(tmp, "checkpoints"), Path(tmp, "rows.txt")
        rows.write_text("a\nb\nc\n")

        with EnhancedCheckpoint(checkpoint_dir, "stage1") as first:
            first.start(total_items=3, input_file=rows)
            first.update(processed=1, successful=1, index=0)
            try:
                EnhancedCheckpoint(checkpoint_dir, "stage1").start()
            except CheckpointLockedError as exc:
                print("second writer:", exc)
                print("owner:", exc.pid, exc.host, exc.since)
        # The first writer closed: the stage is paused and free again.

        rows.write_text("a\nb\nc\nd\n")
        with EnhancedCheckpoint(checkpoint_dir, "stage1") as cp:
            try:
                cp.start(total_items=4, input_file=rows)
            except InputChangedError as exc:
                print("changed input:", exc)

        with EnhancedCheckpoint(checkpoint_dir, "stage1") as cp:
            state = cp.start(total_items=4, input_file=rows, reset=True)  # start over
            print("after reset:", state.status, state.progress.processed_items, "processed")
            cp.complete()

        UnifiedCheckpointManager(checkpoint_dir).reset("stage1")  # the other way to start over
        assert UnifiedCheckpointManager(checkpoint_dir).stages() == []


if __name__ == "__main__":
    main()
