"""Options: keyword arguments, a shared CheckpointConfig, and the error for a bad value."""

from __future__ import annotations

import asyncio
import tempfile

from scrapy_checkpoint import (
    AsyncCheckpointTracker,
    CheckpointConfig,
    ConfigError,
    EnhancedCheckpoint,
    FileStore,
    UnifiedCheckpointManager,
)


async def tracked(checkpoint_dir: str) -> None:
    # Options as keyword arguments; progress_bar and store belong to the tracker itself.
    async with AsyncCheckpointTracker(
        checkpoint_dir, "fast_stage",
        durability="flush", save_every=100, save_interval=2.0, log_every=0,
        progress_bar=False, store=FileStore(checkpoint_dir),
    ) as tracker:
        await tracker.map(asyncio.sleep, [0] * 250)
        print(tracker.checkpoint.config)


def main() -> None:
    with tempfile.TemporaryDirectory() as checkpoint_dir:
        asyncio.run(tracked(checkpoint_dir))

        # One config shared by several checkpoints; keyword arguments override it.
        base = CheckpointConfig(durability="fsync", sync_interval=0.2, keep_snapshots=3)
        with EnhancedCheckpoint(checkpoint_dir, "careful", config=base, save_every=1) as cp:
            print(cp.config.durability, cp.config.sync_interval, cp.config.save_every)
            cp.start(total_items=1)
            cp.update(processed=1, successful=1, index=0)
            cp.complete()

        # A manager passes its options to every checkpoint and tracker it makes.
        manager = UnifiedCheckpointManager(checkpoint_dir, ttl_hours=72, log_every=1000)
        print(manager.get_checkpoint("other", save_every=50).config.ttl_hours)

        # Bad values are refused with one ConfigError naming each option.
        try:
            CheckpointConfig.from_options(durability="always", save_every=0)
        except ConfigError as exc:
            print(exc)


if __name__ == "__main__":
    main()
