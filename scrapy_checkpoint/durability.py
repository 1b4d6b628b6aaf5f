"""When committed work becomes durable: one cadence for the tracker and the crawl.

Group commits, fsyncs, state-file writes and compactions are all due by time
or size; whoever drives a checkpoint (the asyncio tracker, the Scrapy
extension) calls :meth:`~scrapy_checkpoint.checkpoint.EnhancedCheckpoint.tick`
every :func:`timer_period` seconds so none of them waits longer than its
interval when updates stop arriving.
"""

from __future__ import annotations

from .config import CheckpointConfig

#: The timer never runs more often than this (seconds): a tick is cheap, not free.
MIN_TIMER_PERIOD = 0.05


def timer_period(config: CheckpointConfig) -> float:
    """Seconds between two ticks of a checkpoint's timer.

    Half the shortest of ``save_interval``, ``sync_interval`` and 1 s, and at least
    :data:`MIN_TIMER_PERIOD`: a commit or fsync that falls due waits at most half
    its interval more (1.0 s intervals, the defaults, give 0.5 s).
    """
    return max(MIN_TIMER_PERIOD, min(config.save_interval, config.sync_interval, 1.0) / 2)
