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
    ConfigError,
    CorruptCheckpointError,
    InputChangedError,
    InvalidTransitionError,
)
from .manager import StageView, UnifiedCheckpointManager, read_stage
from .metrics import Metrics
from .state import CheckpointState, Progress, Status
from .stores import FileStore
from .tracker import AsyncCheckpointTracker, MapResult

__version__ = "0.1.0"

__all__ = [
    "AsyncCheckpointTracker",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointLockedError",
    "CheckpointState",
    "ConfigError",
    "CorruptCheckpointError",
    "EnhancedCheckpoint",
    "FileStore",
    "InputChangedError",
    "InvalidTransitionError",
    "MapResult",
    "Metrics",
    "Progress",
    "StageView",
    "Status",
    "UnifiedCheckpointManager",
    "read_stage",
]
