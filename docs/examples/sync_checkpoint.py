"""EnhancedCheckpoint used synchronously, with a with-statement (no asyncio).

Leaving the block with an exception marks the stage ``failed`` (Ctrl-C: ``paused``);
leaving it normally only closes it, so call ``complete()`` yourself when the work is
done. A stage closed while still running is left ``paused``.
"""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

from scrapy_checkpoint import EnhancedCheckpoint, UnifiedCheckpointManager


def process(checkpoint_dir: Path, input_file: Path, output_file: Path,
            fail_at: int | None = None) -> int:
    with input_file.open(newline="") as f:
        rows = list(csv.DictReader(f))
    written = 0
    with EnhancedCheckpoint(checkpoint_dir, "stage2_clean", save_every=50) as cp, \
            output_file.open("a") as out:
        cp.start(total_items=len(rows), input_file=input_file, output_file=output_file)
        for i, row in enumerate(rows):
            if cp.should_skip(i):
                continue
            if i == fail_at:
                raise ValueError(f"row {i} is malformed")
            out.write(row["name"].strip().title() + "\n")
            written += 1
            cp.update(processed=1, successful=1, last_item=row["name"].strip(), index=i)
            if i % 100 == 99:
                cp.tick()  # no event loop here: time-based commits only happen on calls
        cp.set_metadata(rows_written=cp.live.processed)
        cp.complete()
    return written


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        input_file = Path(tmp, "names.csv")
        input_file.write_text("name\n" + "".join(f"  person {n}\n" for n in range(500)))
        output_file = Path(tmp, "clean.txt")
        checkpoint_dir = Path(tmp, "checkpoints")

        try:
            process(checkpoint_dir, input_file, output_file, fail_at=200)
        except ValueError as exc:
            print("first run failed:", exc)
        print("second run wrote", process(checkpoint_dir, input_file, output_file))

        state = UnifiedCheckpointManager(checkpoint_dir).read("stage2_clean").state
        print(state.status, state.progress.processed_items, state.metadata, state.error_message)
        assert len(output_file.read_text().splitlines()) == 500


if __name__ == "__main__":
    main()
