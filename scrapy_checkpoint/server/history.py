"""The progress history of every stage, sampled by the server in memory."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..documents import Views
from ..view import StageView


@dataclass(frozen=True)
class Sample:
    """One stage at one moment: ``t`` Unix seconds, ``processed`` items, ``rate`` the items
    per second since the previous sample (None for the first, or after a reset),
    ``throughput`` as the live owner measured it (None without one)."""

    t: float
    processed: int
    rate: float | None
    throughput: float | None

    def to_dict(self) -> dict[str, Any]:
        """``{"t", "processed", "rate", "throughput"}``."""
        return {"t": self.t, "processed": self.processed, "rate": self.rate,
                "throughput": self.throughput}


class History:
    """The last ``size`` samples of each stage (a stage gone from the store is dropped).
    Memory: about 100 bytes per sample, so 720 samples of 50 stages take ~4 MB."""

    def __init__(self, size: int, clock: Callable[[], float] = time.time) -> None:
        self.size = size
        self._clock = clock
        self._samples: dict[str, deque[Sample]] = {}

    def record(self, views: Views) -> None:
        """Add a sample of every readable stage in ``views`` (one read of the store)."""
        now = self._clock()
        seen = set()
        for stage, view in views:
            if not isinstance(view, StageView):
                continue
            seen.add(stage)
            processed = view.state.progress.processed_items
            samples = self._samples.setdefault(stage, deque(maxlen=self.size))
            rate = None
            if samples:
                last = samples[-1]
                if processed >= last.processed and now > last.t:
                    rate = (processed - last.processed) / (now - last.t)
            throughput = view.state.throughput if view.live_owner is not None else None
            samples.append(Sample(now, processed, rate, throughput))
        for stage in set(self._samples) - seen:
            del self._samples[stage]

    def of(self, stage: str) -> list[dict[str, Any]]:
        """The samples of ``stage``, oldest first (``[]`` if none)."""
        return [s.to_dict() for s in self._samples.get(stage, ())]

    def all(self) -> dict[str, list[dict[str, Any]]]:
        """``{stage: samples}`` for every stage sampled."""
        return {stage: self.of(stage) for stage in sorted(self._samples)}


__all__ = ["History", "Sample"]
