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
from typing import IO

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
    file already has it.
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
        if self._header:
            self._header = False
            if not self._drop_header:
                self._file.write(data)
            return len(data)
        unit = self._router.current
        if unit is None:
            self._file.write(data)
        else:
            self._pending.setdefault(unit, []).append(bytes(data))
        return len(data)

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
        if self._closed_length is None:
            self._file.flush()

    def close(self) -> None:
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
        return self._closed_length is not None

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self.committed_length()
