"""The one clock: wall time for records users read, monotonic time for rates."""

from __future__ import annotations

import time
from datetime import datetime, timezone

monotonic = time.monotonic


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(timezone.utc)


walltime = time.time
