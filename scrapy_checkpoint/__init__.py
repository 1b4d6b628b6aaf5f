"""scrapy-checkpoint: crash-safe, resumable Scrapy crawls and asyncio stages.

Kill it any way, run the same command again: it continues where it stopped,
with nothing lost and nothing finished redone.
"""

from __future__ import annotations

from .checkpoint import EnhancedCheckpoint
from .config import CheckpointConfig
from .errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointLostError,
    CheckpointWriteError,
    ConfigError,
    CorruptCheckpointError,
    InputChangedError,
    InvalidTransitionError,
    LeaseLostError,
    OutputLostError,
    UnknownItemError,
    UnreadableCheckpointError,
    UnrestorableRequestsError,
    WorkerDiskFullError,
)
from .manager import UnifiedCheckpointManager
from .metrics import Metrics
from .state import CheckpointState, Progress, Status
from .stores import FileStore
from .tracker import AsyncCheckpointTracker, MapResult
from .view import StageView, read_stage

__version__ = "0.1.0"

# The Scrapy pieces import Scrapy: load them only when asked for, so asyncio
# stages can use the package without it.
_SCRAPY_PIECES = {
    "Addon": "crawl.addon",
    "CheckpointExtension": "crawl.extension",
    "CheckpointMiddleware": "crawl.middleware",
    "CheckpointFeedStorage": "crawl.feeds",
    "CheckpointFeedExporter": "crawl.feeds",
    "CheckpointItemPipeline": "crawl.pipeline",
    "CheckpointScheduler": "crawl.scheduler",
    "CheckpointSettings": "crawl.settings",
    "IGNORE_META": "crawl.frontier",
    "SETUP_META": "crawl.setup_requests",
    "item_id": "crawl.item_ids",
}


def __getattr__(name: str) -> object:
    module = _SCRAPY_PIECES.get(name)
    if module is None:
        raise AttributeError(f"module 'scrapy_checkpoint' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"scrapy_checkpoint.{module}"), name)


__all__ = [
    "IGNORE_META",
    "SETUP_META",
    "Addon",
    "AsyncCheckpointTracker",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointExtension",
    "CheckpointFeedExporter",
    "CheckpointFeedStorage",
    "CheckpointItemPipeline",
    "CheckpointLockedError",
    "CheckpointLostError",
    "CheckpointMiddleware",
    "CheckpointScheduler",
    "CheckpointSettings",
    "CheckpointState",
    "CheckpointWriteError",
    "ConfigError",
    "CorruptCheckpointError",
    "EnhancedCheckpoint",
    "FileStore",
    "InputChangedError",
    "InvalidTransitionError",
    "LeaseLostError",
    "MapResult",
    "Metrics",
    "OutputLostError",
    "Progress",
    "StageView",
    "Status",
    "UnifiedCheckpointManager",
    "UnknownItemError",
    "UnreadableCheckpointError",
    "UnrestorableRequestsError",
    "WorkerDiskFullError",
    "item_id",
    "read_stage",
]
