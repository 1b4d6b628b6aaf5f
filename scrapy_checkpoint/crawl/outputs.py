"""Exactly-once outputs: item bytes reach the file together with their request's done record.

An exporter writes an item's bytes while the unit (request) that produced it is
"current"; :class:`DurableOutput` keeps them aside per unit and appends them to
the file only when the unit is done. Before each journal commit the file is
flushed and its length recorded in the group, so the committed length only
ever covers items of done units. On resume the file is cut back to that length;
the units whose items were cut are not done, so they run again and write them
once more.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..checkpoint import EnhancedCheckpoint

logger = logging.getLogger("scrapy_checkpoint")

class UnitRouter:
    """Which unit's output is being written right now (None: not a tracked unit)."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: int | None = None


class DurableOutput:
    """A file written per unit; see the module docstring.

    With ``header``, the first write of this run is a header line (CSV): it is
    written at once, outside any request, or dropped with ``drop_header`` when the
    file already has it, or when the file already begins with that same line.
    """

    def __init__(self, path: str, router: UnitRouter, *, length: int,
                 header: bool = False, drop_header: bool = False) -> None:
        self.path = path
        self._router = router
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._file.truncate(length)
        self._file.seek(0, os.SEEK_END)  # truncate() does not move the position tell() reports
        self._pending: dict[int, list[bytes]] = {}
        self._header = header
        self._drop_header = drop_header
        self._closed_length: int | None = None
        self.length = length

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data``: kept with the current unit until it is released, or at once
        (no current unit, or the header line). Returns ``len(data)``."""
        if self._header:
            self._header = False
            if not self._drop_header and not self._starts_with(bytes(data)):
                self._file.write(data)
            return len(data)
        unit = self._router.current
        if unit is None:
            self._file.write(data)
        else:
            self._pending.setdefault(unit, []).append(bytes(data))
        return len(data)

    def _starts_with(self, header: bytes) -> bool:
        """True if the file already begins with ``header`` (appending to a file that has it,
        e.g. an earlier pass's CSV feed: the header is not written twice)."""
        if self.length < len(header) or not header:
            return False
        with open(self.path, "rb") as f:
            return f.read(len(header)) == header

    def release(self, unit: int) -> None:
        """The unit is done: append its bytes (they reach the OS at the next commit)."""
        chunks = self._pending.pop(unit, None)
        if chunks and self._closed_length is None:
            self._file.write(b"".join(chunks))

    def committed_length(self) -> int:
        """Flush to the OS and return the file's length (called before each commit)."""
        if self._closed_length is not None:
            return self._closed_length
        self._file.flush()
        return self._file.tell()

    def fileno(self) -> int | None:
        """The descriptor to fsync with the journal (None once closed: close fsyncs)."""
        return None if self._closed_length is not None else self._file.fileno()

    # The file-object protocol the exporters use.
    def flush(self) -> None:
        """Hand what was written to the OS."""
        if self._closed_length is None:
            self._file.flush()

    def close(self) -> None:
        """Flush, fsync and close; bytes of units never released are dropped (their requests run again)."""
        if self._closed_length is None:
            self._closed_length = self.committed_length()
            os.fsync(self._file.fileno())
            self._file.close()
            dropped = sum(len(c) for c in self._pending.values())
            if dropped:
                logger.debug("%s: %d byte(s) of unfinished requests not written", self.path, dropped)
            self._pending.clear()

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed_length is not None

    def writable(self) -> bool:
        """Always True (file-object protocol)."""
        return True

    def readable(self) -> bool:
        """Always False (file-object protocol)."""
        return False

    def seekable(self) -> bool:
        """Always False (file-object protocol)."""
        return False

    def tell(self) -> int:
        """The committed length in bytes (flushes first)."""
        return self.committed_length()


class OutputSet:
    """The durable outputs of one stage: opened at their committed length, cut back on
    resume, their lengths journaled with every group.

    ``cp`` is the open checkpoint; ``stats`` Scrapy's stats collector.
    ``claim_file(path, overwrite)`` is called when the stage writes a file for the first
    time and returns the ``overwrite`` to use (a shared stage refuses or appends there).
    """

    def __init__(self, cp: EnhancedCheckpoint, stats: Any, *,
                 claim_file: Callable[[str, bool], bool] | None = None) -> None:
        self.cp = cp
        self.stats = stats
        self.router = UnitRouter()
        self.claim_file = claim_file
        self._outputs: dict[str, DurableOutput] = {}
        self._recorded_lengths: dict[str, int] = {}

    def cut(self, recorded: dict[str, list[int]]) -> None:
        """Cut every output in ``recorded`` (absolute path -> [base, committed length], bytes)
        back to its committed length: the bytes after it belong to requests that run again
        (even if this run never reopens the file)."""
        for key, (_, length) in recorded.items():
            size = os.path.getsize(key) if os.path.exists(key) else 0
            if size > length:
                with open(key, "r+b") as f:
                    f.seek(length)
                    lines = f.read().count(b"\n")
                    f.truncate(length)
                logger.info("Output %s: removing %d line(s) written after the last commit; "
                            "their requests run again.", key, lines)
                self.stats.inc_value("checkpoint/output_lines_rolled_back", lines)
            elif size < length:
                logger.error("Output %s is %d bytes but %d were committed: items of finished "
                             "requests are missing (was the disk lost?). Writing on from its end.",
                             key, size, length)

    def open(self, path: str, *, overwrite: bool, has_header: bool) -> DurableOutput:
        """A durable output at ``path``, at its committed length (see :meth:`cut`).

        ``overwrite``: start the file empty the first time this stage writes it (``-O``).
        ``has_header``: the first write of each run is a header line (CSV), dropped when
        the file already has one. May raise ConfigError from ``claim_file``.
        """
        key = os.path.abspath(path)
        if key in self._outputs and not self._outputs[key].closed:
            return self._outputs[key]
        size = os.path.getsize(key) if os.path.exists(key) else 0
        recorded = self.cp.live.outputs.get(key)
        if recorded is None and self.claim_file is not None:
            overwrite = self.claim_file(key, overwrite)
        if recorded is None:  # first time this stage writes the file
            base = 0 if overwrite else size
            length = base
            self.cp.record_output(key, base, length)
            # On disk before any item is written to the file, whatever the durability mode:
            # a run that finds no record would take the killed run's items for the file's
            # earlier content and never cut them. (Later lengths need no wait: a length
            # lost with a buffer belongs to units whose done records were lost with it.)
            self.cp.save(force=True)
        else:
            base, length = recorded
            length = min(length, size)
        output = DurableOutput(key, self.router, length=length, header=has_header,
                               drop_header=has_header and length > base)
        self._outputs[key] = output
        self._recorded_lengths[key] = length
        return output

    def release(self, unit: int) -> None:
        """The unit is done: its bytes go to every output it wrote."""
        for output in self._outputs.values():
            output.release(unit)

    def changed_lengths(self) -> dict[str, list[int]]:
        """Outputs whose committed length changed since the last call: path -> [base, length]
        (flushes them to the OS first; called before each journal commit)."""
        changed = {}
        for key, output in self._outputs.items():
            length = output.committed_length()
            if length != self._recorded_lengths.get(key):
                self._recorded_lengths[key] = length
                changed[key] = [self.cp.live.outputs.get(key, [length, length])[0], length]
        return changed

    def fds(self) -> list[int]:
        """Descriptors of the open outputs, fsynced before the journal."""
        return [fd for output in self._outputs.values() if (fd := output.fileno()) is not None]
