"""Exactly-once outputs: item bytes reach the file together with their request's done record.

An exporter writes an item's bytes while the unit (request) that produced it is
"current"; the output keeps them aside per unit, one record per item, and appends
them to the file only when the unit is done. Before each journal commit the file
is flushed and its length recorded in the group, so the committed length only
ever covers items of done units. On resume the file is cut back to that length;
the units whose items were cut are not done, so they run again and write them
once more.

A feed whose file is a document (a JSON array, an XML root element) has a
:class:`Framing`: the output writes the opening before its first item, the
separator between items and the closing when the run ends, so the document is
valid whenever no crawl is writing it. The committed length stops before the
closing; a resumed run removes the closing and continues inside the document.
Batch feeds are :class:`~.batches.BatchedOutput`: files of N committed items each.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from w3lib.url import file_uri_to_path

from ..durability import write_error
from ..errors import ConfigError, OutputLostError
from ..journal.groups import DOC_BATCH, DOC_CLOSED, DOC_CLOSING, DOC_FEED, DOC_ITEMS, DOC_OPENING
from ..stores.file import is_checkpoint_file

if TYPE_CHECKING:
    from ..checkpoint import EnhancedCheckpoint

logger = logging.getLogger("scrapy_checkpoint")


class UnitRouter:
    """Which unit's output is being written right now (``current``; None: not a tracked unit),
    and which item (``item``: a number per exported item; None while an exporter writes its
    own opening or closing bytes, outside any item)."""

    __slots__ = ("current", "item")

    def __init__(self) -> None:
        self.current: int | None = None
        self.item: int | None = None


@dataclass(frozen=True)
class Framing:
    """What makes a feed file a document: the bytes before its first item (``opening``),
    between two items (``separator``) and after the last (``closing``). Line formats
    (jsonlines, csv, marshal, pickle) have none."""

    opening: bytes = b""
    separator: bytes = b""
    closing: bytes = b""

    @property
    def framed(self) -> bool:
        """True for a document format (JSON, XML): the exporter's own framing is replaced."""
        return bool(self.opening or self.separator or self.closing)

    def record(self) -> dict[str, Any]:
        """The framing as kept in the journal (latin-1 text: any bytes round-trip)."""
        return {DOC_OPENING: self.opening.decode("latin-1"),
                DOC_CLOSING: self.closing.decode("latin-1")}

    @classmethod
    def recorded(cls, document: dict[str, Any]) -> Framing:
        """The framing of a journaled document (its separator is not needed to close it)."""
        return cls(document.get(DOC_OPENING, "").encode("latin-1"), b"",
                   document.get(DOC_CLOSING, "").encode("latin-1"))


#: No framing: items are whole records one after another.
LINES = Framing()


class HeldRecords:
    """The file-object face an exporter writes to: each item's bytes are held with its unit
    until the unit is released (see the module docstring), then handed to :meth:`_append`.

    ``header``: the exporter's first write is a header line (CSV), handed to
    :meth:`_set_header`. ``framing``: a document format, whose exporter writes outside an
    item (its own opening and closing) are dropped: the output writes its own. ``hold_all``:
    bytes of no unit are held too (released with :meth:`release` ``(None)`` after the item),
    so each item stays one record.
    """

    def __init__(self, router: UnitRouter, *, header: bool, framing: Framing,
                 hold_all: bool) -> None:
        self._router = router
        self._header = header
        self.framing = framing
        self._hold_all = hold_all or framing.framed
        self._held: dict[int | None, list[bytearray]] = {}
        self._last_item: int | None = None
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Hold ``data`` with the current unit and item, or write it at once (no current unit,
        or the header line). Returns ``len(data)``."""
        if self._header:
            self._header = False
            self._set_header(bytes(data))
            return len(data)
        router = self._router
        item = router.item
        if item is None and self.framing.framed:
            return len(data)  # the exporter's own opening or closing: ours are written
        unit = router.current
        if unit is None and not self._hold_all:
            self._append([bytearray(data)])
            return len(data)
        records = self._held.get(unit)
        if records is None:
            self._held[unit] = [bytearray(data)]
        elif item is None or item != self._last_item:
            records.append(bytearray(data))
        else:
            records[-1] += data
        self._last_item = item
        return len(data)

    def release(self, unit: int | None) -> None:
        """The unit is done: append its records (they reach the OS at the next commit)."""
        records = self._held.pop(unit, None)
        if records and not self._finished:
            separator = self.framing.separator
            if separator:  # the exporter's own separator (before all but its first item)
                for record in records:
                    if record.startswith(separator):
                        del record[:len(separator)]
            self._append(records)

    @property
    def finished(self) -> bool:
        """True once closed: bytes released from then on are dropped."""
        return self._finished

    def _drop_held(self, path: str) -> None:
        dropped = sum(len(r) for records in self._held.values() for r in records)
        if dropped:
            logger.debug("%s: %d byte(s) of unfinished requests not written", path, dropped)
        self._held.clear()

    def _append(self, records: list[bytearray]) -> None:
        raise NotImplementedError

    def _set_header(self, header: bytes) -> None:
        raise NotImplementedError

    # The rest of the file-object protocol the exporters use.
    def writable(self) -> bool:
        """Always True (file-object protocol)."""
        return True

    def readable(self) -> bool:
        """Always False (file-object protocol)."""
        return False

    def seekable(self) -> bool:
        """Always False (file-object protocol)."""
        return False


class DurableOutput(HeldRecords):
    """One durable file; see the module docstring.

    It is opened at ``length`` (the committed length: anything after it is cut). With
    ``header``, the first write of this run is a header line (CSV): it is written at once,
    outside any request, or dropped when the file already has it (``drop_header``, or the
    file already begins with that same line). ``framing``: the document's framing;
    ``opened``: its opening is already in the file; ``items``: items already in it.
    ``base``: where the stage's bytes begin; ``document``: journal the document fields
    (see :meth:`record`), with ``extra`` (a batch file's feed and id).
    """

    def __init__(self, path: str, router: UnitRouter, *, length: int,
                 header: bool = False, drop_header: bool = False, framing: Framing = LINES,
                 opened: bool = False, items: int = 0, base: int = 0, document: bool = False,
                 extra: dict[str, Any] | None = None, hold_all: bool = False) -> None:
        super().__init__(router, header=header, framing=framing, hold_all=hold_all)
        self.path = path
        self._file: IO[bytes] = open(path, "ab")  # noqa: SIM115 - closed by close()
        self._file.truncate(length)  # a document's closing, if any, goes: it is reopened
        self._file.seek(0, os.SEEK_END)  # truncate() does not move the position tell() reports
        self._drop_header = drop_header
        self._closed_length: int | None = None
        self.length = length
        self.base = base
        self.items = items
        self._opened = opened
        self._document_closed = False
        self._document = document
        self._extra = extra or {}
        #: The write error met (a full disk): the crawl stops; nothing more is written, and
        #: flushing or closing the file afterwards raises nothing more.
        self._failed: OSError | None = None

    def _failure(self, exc: OSError) -> OSError:
        """``exc`` naming this file (a buffered write's error names none), kept as the
        failure."""
        if self._failed is None:
            self._failed = exc if exc.filename else OSError(exc.errno, exc.strerror, self.path)
        return self._failed

    def _set_header(self, header: bytes) -> None:
        if self._failed is not None:
            return
        try:
            if not self._drop_header and not self._starts_with(header):
                self._file.write(header)
        except OSError as exc:
            raise self._failure(exc) from exc
        self._opened = True

    def _starts_with(self, header: bytes) -> bool:
        """True if the file already begins with ``header`` (appending to a file that has it,
        e.g. an earlier pass's CSV feed: the header is not written twice)."""
        if self.length < len(header) or not header:
            return False
        with open(self.path, "rb") as f:
            return f.read(len(header)) == header

    def _append(self, records: list[bytearray]) -> None:
        self.append(records)

    def append(self, records: list[bytearray]) -> None:
        """Append items (one record each) to the document: its opening before the first,
        its separator between them."""
        if self._closed_length is not None or self._document_closed or self._failed is not None:
            return
        try:
            self._write(records)
        except OSError as exc:
            raise self._failure(exc) from exc

    def _write(self, records: list[bytearray]) -> None:
        f, framing = self._file, self.framing
        if not self._opened:
            f.write(framing.opening)
            self._opened = True
        separator = framing.separator
        if separator:
            for record in records:
                if self.items:
                    f.write(separator)
                f.write(record)
                self.items += 1
        else:
            f.write(b"".join(records))
            self.items += len(records)

    def close_document(self) -> None:
        """Write the closing (and the opening, if no item came): a valid document. Items
        released afterwards are not written."""
        if self._document_closed or self._closed_length is not None or self._failed is not None:
            return
        try:
            self._close_document()
        except OSError as exc:
            raise self._failure(exc) from exc

    def _close_document(self) -> None:
        self._file.flush()
        self.length = self._file.tell()
        if self.framing.framed:
            if not self._opened:
                self._file.write(self.framing.opening)
                self._opened = True
                self.length = self._file.tell()
            self._file.write(self.framing.closing)
            self._file.flush()
        self._document_closed = True

    def committed_length(self) -> int:
        """Flush to the OS and return the file's length before any closing (called before
        each commit)."""
        if self._closed_length is not None:
            return self._closed_length
        if self._failed is not None:
            raise self._failed
        try:
            self._file.flush()
        except OSError as exc:
            raise self._failure(exc) from exc
        self._check_place()
        if not self._document_closed:
            self.length = self._file.tell()
        return self.length

    def _check_place(self) -> None:
        """Raise OutputLostError if the file is no longer at its path (deleted, or moved,
        or its directory deleted, or another file put there) while the crawl writes it: what
        is written to it is in no file the next run can find, and no length recorded from
        now on would be true (a crawl must not end 'completed' with its feed gone)."""
        try:
            mine = os.fstat(self._file.fileno())
            there = os.stat(self.path)
            moved = mine.st_nlink == 0 or (mine.st_dev, mine.st_ino) != (there.st_dev, there.st_ino)
        except FileNotFoundError:
            moved = True
        if moved:
            message = (
                f"Output {self.path} was deleted or moved while the crawl wrote it: the items "
                f"written to it are no longer there, so the crawl stops (nothing more is "
                f"recorded, the file is not recreated). Put the file back where it was and run "
                f"the same command again to resume; without it, the stage cannot end complete: "
                f"start it over with -s CHECKPOINT_RESET=True, which writes every item again.")
            self._failed = OSError(errno.ENOENT, message, self.path)
            raise OutputLostError(message)

    def record(self) -> list[Any]:
        """The journal's entry for this file: ``[base, length]``, or with the document's
        fields (see :data:`~scrapy_checkpoint.journal.groups.OUTPUTS`)."""
        return self._entry(self.committed_length())

    def entry_now(self) -> list[Any]:
        """:meth:`record` as of now without flushing (the bytes written so far, buffered ones
        included)."""
        if self._closed_length is not None:
            return self._entry(self._closed_length)
        closed = self._failed is not None or self._file.closed or self._document_closed
        return self._entry(self.length if closed else self._file.tell())

    def _entry(self, length: int) -> list[Any]:
        if not self._document:
            return [self.base, length]
        document = {DOC_ITEMS: self.items, **self.framing.record(), **self._extra}
        if self._document_closed and self.framing.framed:
            document[DOC_CLOSED] = 1
        return [self.base, length, document]

    def fileno(self) -> int | None:
        """The descriptor to fsync with the journal (None once closed: close fsyncs)."""
        return None if self._closed_length is not None or self._file.closed else self._file.fileno()

    def flush(self) -> None:
        """Hand what was written to the OS."""
        if self._closed_length is None and self._failed is None:
            try:
                self._file.flush()
            except OSError as exc:  # kept: the next commit fails with it (said once there)
                self._failure(exc)

    def close(self) -> None:
        """Flush, fsync and close; bytes of units never released are dropped (their requests
        run again). After a write error (then or before), only close the file: no length is
        settled, so the next commit fails with that error (the crawl stops, saying it once)
        and the next run cuts the file back to its committed length."""
        if self._closed_length is None and self._failed is None:
            try:
                length = self.committed_length()
                os.fsync(self._file.fileno())
            except OSError as exc:
                self._failure(exc)
            else:
                self._closed_length = length
                self._finished = True
                self._file.close()
                self._drop_held(self.path)
                return
        if self._failed is not None and not self._file.closed:
            self._finished = True
            with contextlib.suppress(OSError):  # its flush fails again; the fd is closed
                self._file.close()
            self._drop_held(self.path)

    @property
    def closed(self) -> bool:
        """True once closed."""
        return self._closed_length is not None

    def tell(self) -> int:
        """The committed length in bytes (flushes first)."""
        return self.committed_length()


#: A ``%(name)s``-style parameter of a feed URI (with any printf flags, width or type).
_URI_PARAM = re.compile(r"%\((\w+)\)[-#0 +]*\d*(?:\.\d+)?[a-zA-Z]")


#: Stands for a parameter whose value changes while the crawl runs (``%(batch_id)d``,
#: ``%(time)s``, ``%(batch_time)s``) in a feed URI whose other parameters were given values.
_VARYING = "\x00varying\x00"
_VARYING_PARAMS = ("time", "batch_time", "batch_id")


def _with_spider_params(uri: str, options: Any, settings: Any, spider: Any) -> str | None:
    """``uri`` with its parameters given their values as Scrapy's feed exporter gives them
    (the spider's attributes, then ``uri_params`` / ``FEED_URI_PARAMS``), but those that vary
    within a crawl, which are left as :data:`_VARYING`; None if that cannot be done (a
    parameter with no value, a ``uri_params`` function that fails)."""
    from scrapy.extensions.feedexport import apply_uri_params
    from scrapy.utils.misc import load_object

    def varying(m: re.Match[str]) -> str:
        return _VARYING if m.group(1) in _VARYING_PARAMS else m.group(0)

    template = _URI_PARAM.sub(varying, uri)
    try:
        params = {k: getattr(spider, k) for k in dir(spider)}
        params.update(dict.fromkeys(_VARYING_PARAMS, _VARYING))
        function = (options.get("uri_params") if isinstance(options, dict) else None
                    ) or settings.get("FEED_URI_PARAMS")
        if function:
            params = load_object(function)(params, spider) or params
        resolved = apply_uri_params(template, params)
    except Exception:
        return None
    return None if _URI_PARAM.search(resolved) else resolved


def configured_outputs(settings: Any, spider_name: str, own_output: str | None,
                       spider: Any = None) -> Callable[[str], bool]:
    """Whether an absolute path is an output this run's configuration names: the
    ``CHECKPOINT_OUTPUT`` file, or a local file of a ``FEEDS`` URI. A URI's parameters
    take the values Scrapy gives them for ``spider`` (its attributes, ``%(outdir)s`` from
    ``-a outdir=...``, and what ``FEED_URI_PARAMS`` adds), but ``%(batch_id)d``,
    ``%(time)s`` and ``%(batch_time)s``, which match within one path component; without
    ``spider`` (or when that fails), ``%(name)s`` is the spider's name and any other
    parameter matches within one path component. Recorded outputs that match nothing are
    not touched (see :class:`~.outputs.OutputSet`)."""
    exact: set[str] = set()
    patterns: list[re.Pattern[str]] = []
    if own_output:
        exact.add(os.path.abspath(own_output))
    for uri, options in settings.getdict("FEEDS").items():
        text = str(uri)
        resolved = (_with_spider_params(text, options, settings, spider)
                    if spider is not None and _URI_PARAM.search(text) else None)
        if resolved is not None:
            if resolved.startswith("file:"):
                resolved = file_uri_to_path(resolved)
            elif "://" in resolved:
                continue
            resolved = os.path.abspath(resolved)
            if _VARYING not in resolved:
                exact.add(resolved)
            else:
                patterns.append(re.compile("[^/]*".join(
                    re.escape(piece) for piece in resolved.split(_VARYING))))
            continue
        if text.startswith("file:"):
            text = file_uri_to_path(text)
        elif "://" in text:
            continue  # not a local file: never a durable output
        template = os.path.abspath(text)
        if not _URI_PARAM.search(template):
            exact.add(template)
            continue
        pieces, end = [], 0
        for m in _URI_PARAM.finditer(template):
            pieces.append(re.escape(template[end:m.start()]))
            pieces.append(re.escape(spider_name) if m.group(1) == "name" else "[^/]*")
            end = m.end()
        pieces.append(re.escape(template[end:]))
        patterns.append(re.compile("".join(pieces)))

    def configured(path: str) -> bool:
        return path in exact or any(p.fullmatch(path) for p in patterns)

    return configured


def local_outputs(settings: Any, spider_name: str, own_output: str | None) -> list[str]:
    """The absolute paths of the local files this run's FEEDS and ``own_output`` name,
    ``%(name)s`` replaced by the spider's name (feeds with other parameters left out: they
    are known when their files are opened)."""
    paths = [os.path.abspath(own_output)] if own_output else []
    for uri in settings.getdict("FEEDS"):
        text = str(uri)
        if text.startswith("file:"):
            text = file_uri_to_path(text)
        elif "://" in text:
            continue
        text = text.replace("%(name)s", spider_name)
        if not _URI_PARAM.search(text):
            paths.append(os.path.abspath(text))
    return paths


def _bytes_at(path: str, offset: int, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(n)
    except OSError:
        return b""


def cut_to_committed(recorded: dict[str, list[Any]], key: str, stats: Any) -> None:
    """Cut output ``key`` back to the committed length its journal entry ``recorded[key]``
    holds (see :meth:`OutputSet.cut`); a closed document whose closing is not what follows
    is recorded open again in ``recorded``."""
    entry = recorded[key]
    length = entry[1]
    size = os.path.getsize(key) if os.path.exists(key) else 0
    document = entry[2] if len(entry) > 2 else None
    if document is not None and document.get(DOC_CLOSED):
        closing = Framing.recorded(document).closing
        if _bytes_at(key, length, len(closing)) == closing:
            length += len(closing)
        else:  # reopened by a run that was then killed: the document is open
            recorded[key] = [entry[0], entry[1], {k: v for k, v in document.items()
                                                  if k != DOC_CLOSED}]
    if size > length:
        if os.path.islink(key):  # cut in the file it points to: never through a link
            raise OutputLostError(
                f"Output {key} is a symbolic link (to {os.readlink(key)}): the bytes "
                f"after its committed length would be cut in the file it points to, "
                f"and a file outside the crawl's outputs is never cut. This file was not "
                f"cut. Put the feed file itself at that path (or give the feed the "
                f"path the link points to) and run the same command again.")
        with open(key, "r+b") as f:
            f.seek(length)
            lines = f.read().count(b"\n")
            f.truncate(length)
        logger.info("Output %s: removing %d line(s) written after the last commit; "
                    "their requests run again.", key, lines)
        stats.inc_value("checkpoint/output_lines_rolled_back", lines)
    elif size < length:
        logger.error("Output %s is %d bytes but %d were committed: items of finished "
                     "requests are missing (was the disk lost?). Writing on from its end.",
                     key, size, length)


class OutputSet:
    """The durable outputs of one stage: opened at their committed length, cut back on
    resume, their lengths journaled with every group.

    ``cp`` is the open checkpoint; ``stats`` Scrapy's stats collector.
    ``claim_file(path, overwrite)`` is called when the stage writes a file for the first
    time and returns the ``overwrite`` to use (a shared stage refuses or appends there).
    """

    def __init__(self, cp: EnhancedCheckpoint, stats: Any, *,
                 claim_file: Callable[[str, bool], bool] | None = None,
                 configured: Callable[[str], bool] | None = None,
                 warn_once: Callable[[str, str], None] | None = None) -> None:
        self.cp = cp
        self.stats = stats
        self.router = UnitRouter()
        self.claim_file = claim_file
        #: Whether a path the journal records is one this run's configuration names (None:
        #: any). A path read from the store is never cut, closed or written otherwise.
        self.configured = configured
        self._warn_once = warn_once
        self._outputs: dict[str, DurableOutput] = {}
        self._writers: list[HeldRecords] = []
        #: A batch feed is among the writers (see release); the entries before a release.
        self._batched = False
        self._before: dict[str, list[Any]] | None = None
        self._recorded: dict[str, list[Any]] = {}
        self._files: set[str] = set()
        #: Feeds of this run written as plain Scrapy writes them (not crash-safe): name -> why.
        self.unsafe: dict[str, str] = {}

    def cut(self, recorded: dict[str, list[Any]], *, configured_only: bool = True) -> None:
        """Cut every output in ``recorded`` (absolute path -> its journal entry, see
        :data:`~scrapy_checkpoint.journal.groups.OUTPUTS`) back to its committed length: the
        bytes after it belong to requests that run again (even if this run never reopens the
        file). A closed document keeps its closing when the closing is what follows.
        ``configured_only``: only outputs this run's configuration names (a dead worker's
        adopter passes False for the files that worker recorded as its own)."""
        for key in list(recorded):
            if configured_only and not self._may_touch(key):
                continue
            self._files.add(key)
            cut_to_committed(recorded, key, self.stats)

    def _may_touch(self, key: str) -> bool:
        """True if this run's configuration names ``key``; else say once that it is left
        alone (a journal entry, like anything read from the store, never names a file to
        cut or write by itself: the run's FEEDS and CHECKPOINT_OUTPUT do)."""
        if self.configured is None or self.configured(key):
            return True
        self.stats.inc_value("checkpoint/outputs_not_configured")
        if self._warn_once is not None:
            self._warn_once(f"not-configured:{key}", (
                f"The checkpoint records output {key}, which this run's FEEDS and "
                f"CHECKPOINT_OUTPUT do not name: it is left as it is. The items it holds of "
                f"requests that earlier runs finished are not scraped again, so this run's "
                f"outputs will not have them. Run with that output again (it is cut back to "
                f"what was committed and the crawl goes on in it), or set "
                f"CHECKPOINT_RESET = True to write every item to the new outputs."))
        return False

    def recorded(self, path: str) -> list[Any] | None:
        """The journal entry of ``path`` in this stage, if it has one (the stage is open)."""
        return self.cp.live.outputs.get(os.path.abspath(path))

    @property
    def files(self) -> frozenset[str]:
        """Absolute paths of the outputs this stage has written (also in earlier runs)."""
        return frozenset(self._files)

    def wrote(self, path: str) -> bool:
        """True if the stage has written ``path`` (also once the checkpoint is closed)."""
        return os.path.abspath(path) in self._files

    def open(self, path: str, *, overwrite: bool, has_header: bool,
             framing: Framing = LINES, document: bool = False,
             extra: dict[str, Any] | None = None) -> DurableOutput:
        """A durable output at ``path``, at its committed length (see :meth:`cut`).

        ``overwrite``: start the file empty the first time this stage writes it (``-O``).
        ``has_header``: the first write of each run is a header line (CSV), dropped when
        the file already has one. ``framing``: a document's framing; ``document``: journal
        its document fields, with ``extra``. May raise ConfigError from ``claim_file``.
        """
        key = os.path.abspath(path)
        if key in self._outputs and not self._outputs[key].closed:
            return self._outputs[key]
        if is_checkpoint_file(self.cp.store, key, self.cp.stage):
            raise ConfigError(
                f"Output {path} is a file of the checkpoint in {self.cp.store.location} (a "
                f"stage's state, backup or lock file, or in its data directory): items written "
                f"there would replace recorded progress, and the checkpoint's writes would "
                f"replace the items. Nothing was written to it. Give the feed (or "
                f"CHECKPOINT_OUTPUT) a path outside the checkpoint's files.")
        os.makedirs(os.path.dirname(key), exist_ok=True)  # as -o does (CHECKPOINT_OUTPUT=data/x.jl)
        output = self._open_file(key, overwrite=overwrite, has_header=has_header,
                                 framing=framing, document=document or framing.framed,
                                 extra=extra, hold_all=False)
        self._writers.append(output)
        return output

    def _open_file(self, key: str, *, overwrite: bool, has_header: bool, framing: Framing,
                   document: bool, extra: dict[str, Any] | None,
                   hold_all: bool) -> DurableOutput:
        size = os.path.getsize(key) if os.path.exists(key) else 0
        recorded = self.cp.live.outputs.get(key)
        self._files.add(key)
        if recorded is None and self.claim_file is not None:
            overwrite = self.claim_file(key, overwrite)
        items = 0
        if recorded is None:  # first time this stage writes the file
            base = 0 if overwrite else size
            if base and not hold_all:
                logger.warning(
                    "Output %s already holds %d byte(s) that stage %s did not write (an earlier "
                    "crawl's, or written under a checkpoint since deleted or reset): this crawl "
                    "appends after them, as -o does. If they are items of an earlier run of this "
                    "crawl, they will be there twice: move the file aside (or use -O) and run "
                    "again.",
                    key, base, self.cp.stage)
            length = base
            if document:
                fields = {DOC_ITEMS: 0, **framing.record(), **(extra or {})}
                self.cp.record_output(key, base, length, fields)
            else:
                self.cp.record_output(key, base, length)
            # On disk before any item is written to the file, whatever the durability mode:
            # a run that finds no record would take the killed run's items for the file's
            # earlier content and never cut them. (Later lengths need no wait: a length
            # lost with a buffer belongs to units whose done records were lost with it.)
            # Only the record's own group: the group being built is not committed here, as
            # it may be waiting for the commit gate (done records whose spider.state
            # changes are not journaled yet, callbacks running).
            self.cp.sync_journaled()
        else:
            base, length = recorded[0], recorded[1]
            length = min(length, size)
            if len(recorded) > 2:
                items = recorded[2].get(DOC_ITEMS, 0)
        output = DurableOutput(key, self.router, length=length, header=has_header,
                               drop_header=has_header and length > base, framing=framing,
                               opened=length > base, items=items, base=base,
                               document=document, extra=extra, hold_all=hold_all)
        self._outputs[key] = output
        self._recorded[key] = output.record()
        return output

    def add(self, writer: HeldRecords) -> None:
        """Release units into ``writer`` too (a :class:`~.batches.BatchedOutput`)."""
        self._writers.append(writer)
        self._batched = True

    def open_batch_file(self, path: str, *, overwrite: bool, framing: Framing,
                        extra: dict[str, Any]) -> DurableOutput:
        """One file of a batch feed (used by :class:`~.batches.BatchedOutput`)."""
        return self._open_file(os.path.abspath(path), overwrite=overwrite, has_header=False,
                               framing=framing, document=True, extra=extra, hold_all=True)

    def batch_files(self, feed: str) -> dict[int, tuple[str, list[Any]]]:
        """The files this stage wrote for the batch feed ``feed``: batch id -> (path, entry)."""
        found = {}
        for key, entry in self.cp.live.outputs.items():
            document = entry[2] if len(entry) > 2 else None
            if document is not None and document.get(DOC_FEED) == feed:
                found[int(document[DOC_BATCH])] = (key, entry)
        return found

    def release(self, unit: int | None) -> None:
        """The unit is done: its bytes go to every output it wrote. Raises
        CheckpointWriteError if one cannot take them (a full disk).

        A batch feed may start its next file here (its record is journaled in a group of its
        own, see :meth:`_open_file`); a commit that falls before the unit's done record
        records each output as it was before the unit's bytes (:attr:`_before`), so a crash
        then cuts them and the unit is redone, instead of keeping its items and doing it
        again."""
        if self._batched:
            self._before = {key: out.entry_now() for key, out in self._outputs.items()}
        try:
            for writer in self._writers:
                writer.release(unit)
        except OSError as exc:
            raise write_error(self.cp.stage, self.cp.store.location, exc,
                              buffered=self.cp.config.durability == "none") from exc
        finally:
            self._before = None

    def take_released(self) -> bool:
        """True while every output still writes what :meth:`release` gives it (none closed:
        a closed one drops the bytes of units not done)."""
        return not any(writer.finished for writer in self._writers)

    def close_documents(self) -> None:
        """End of the run: close every open document of the stage (its closing written), also
        those this run did not write to (their framing is in the journal)."""
        for output in list(self._outputs.values()):
            output.close_document()
        for key, entry in list(self.cp.live.outputs.items()):
            document = entry[2] if len(entry) > 2 else None
            if (key in self._outputs or document is None or document.get(DOC_CLOSED)
                    or not document.get(DOC_CLOSING) or not self._may_touch(key)):
                continue
            extra = {k: v for k, v in document.items() if k in (DOC_FEED, DOC_BATCH)}
            output = self._open_file(key, overwrite=False, has_header=False,
                                     framing=Framing.recorded(document), document=True,
                                     extra=extra, hold_all=True)
            output.close_document()
            output.close()

    def changed_lengths(self) -> dict[str, list[Any]]:
        """Outputs whose journal entry changed since the last call: path -> entry
        (flushes them to the OS first; called before each journal commit)."""
        changed = {}
        before = self._before or {}
        for key, output in self._outputs.items():
            entry = output.record()  # (flushed: also when the entry is the one before)
            entry = before.get(key, entry)
            if entry != self._recorded.get(key):
                self._recorded[key] = entry
                changed[key] = entry
        return changed

    def fds(self) -> list[int]:
        """Descriptors of the open outputs, fsynced before the journal."""
        return [fd for output in self._outputs.values() if (fd := output.fileno()) is not None]
