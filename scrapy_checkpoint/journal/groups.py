"""Journal groups: one commit's worth of changes as one record (bytes only, no I/O).

A group is ``<u32 header length><JSON header><done codes><failed codes>``, then,
when it adds pending units (``r`` in the header), ``<codes><refs><lengths>
<priorities>`` of those units; codes and refs are packed little-endian uint64 (see
:mod:`.keys`), lengths uint32, priorities int32. The header is a JSON object under
the short keys below (short to keep records small); every key but ``d`` and ``f``
is optional. :meth:`scrapy_checkpoint.live.LiveState.apply` is what each one means
on replay.

A journal also holds *request records* (:func:`encode_request`): the bytes of what
redoes one pending unit (a crawl's request), written before the group that adds
the unit and found again by their ``ref`` (:mod:`.pending`). Each is a frame of its
own; the file store writes those of a group inside one *batch* frame
(:data:`BATCH_MARK` then the record frames, one checksum over them all), so replay
checks and skips a group's records in one step instead of one per request. Replay
skips them (:func:`decode_record` returns None); they are read one by one, when
needed, and each is checked again then (its own frame).
"""

from __future__ import annotations

import json
import struct
from array import array
from dataclasses import dataclass, field
from typing import Any

from ..state import CheckpointState, Owner, Status
from .arrays import from_le, le_bytes, load_json

# The header keys: constant = key      # what its value holds
DONE_COUNT = "d"         # number of done codes after the header (always present)
FAILED_COUNT = "f"       # number of failed codes after the done codes (always present)
INIT = "init"            # the stage (re)created: its initial CheckpointState as JSON; replay
#                          starts over from it, with nothing done
COUNTERS = "c"           # counter deltas [processed, successful, failed, skipped]
LAST_ITEM = "l"          # the last item processed (str or None) as of this group
LAST_INDEX = "i"         # the last index processed (int or None)
BATCH_ID = "b"           # the batch id (str or None)
COMMITTED_AT = "ts"      # when the group was committed: Unix time in seconds (float)
STATUS = "st"            # the new status (a Status value, e.g. "running")
RECOVERIES = "rec"       # times the stage was found crashed and recovered (int)
OWNER = "own"            # the process that owns the stage now (an Owner as JSON)
TOTAL = "t"              # total number of items (int)
INPUT_FILE = "in"        # [input file path, "sha256:<hex>" of its content]
OUTPUT_FILE = "out"      # the output file path the user named (str)
START_TIME = "start"     # when the stage first ran: Unix time in seconds
METADATA = "m"           # the stage's metadata, whole (JSON object)
ERROR = "e"              # the last error: [message, error count, Unix time in seconds]
RETRY_FAILED = "rf"      # codes of failed units released to run again (they become pending)
REFRESH_BEFORE = "rb"    # a new pass of a completed stage: units done before this Unix second
#                          are no longer done (fetched again when reached), and the durable
#                          outputs are opened afresh, as by a first run
ADDED = "a"              # new pending units: [[code, payload], ...] (payload: JSON, what is
#                          needed to redo the unit), as written before request records
ADDED_REFS = "r"         # number of new pending units in the binary section after the codes:
#                          their codes, refs (where their request record is), lengths (of
#                          what the record holds) and priorities (see .pending)
STARTED = "s"            # codes of pending units handed to a worker (in flight)
HANDED = "h"             # codes of pending units given to another process (a shared stage's
#                          worker): no longer pending here, and not done
OUTPUTS = "fo"           # durable output files: {path: [base length, committed length]} in
#                          bytes (written by the Scrapy integration's commit hook), with a
#                          third element for a feed document (JSON array, XML, batch file):
#                          {DOC_ITEMS: n, DOC_OPENING: str, DOC_CLOSING: str, DOC_CLOSED: 1,
#                          DOC_FEED: str, DOC_BATCH: int}; the committed length never
#                          counts the closing bytes, which follow it when DOC_CLOSED
DOC_ITEMS = "n"          # in an OUTPUTS document: items within the committed length
DOC_OPENING = "o"        # ... the bytes before its first item (as latin-1 text)
DOC_CLOSING = "c"        # ... the bytes after its last item (as latin-1 text)
DOC_CLOSED = "x"         # ... 1: the closing bytes follow the committed length
DOC_FEED = "f"           # ... the feed URI template of a batch file
DOC_BATCH = "k"          # ... its batch id
ATTACHED = "at"          # data a front end keeps with the stage: {name: JSON value}, each name
#                          replaced whole (the Scrapy integration's cookie jars: "cookies")
LOST = "x"               # units whose work was lost: {reason: count} deltas (summed)
DROPPED = "xd"           # codes of pending units dropped as lost: no longer pending, not done
USER_STATE = "us"        # the user's own state, whole, as of this group: a JSON value (a
#                          spider's ``state`` dict), changed only by units done here or before
STAGE_TOTALS = "sx"      # totals over every run of the stage, whole: {name: int} (a crawl's
#                          items, responses, errors of units done here or before)
SEGMENT_OF = "sg"        # the segment's name tag, alone in the first group of a journal segment:
#                          {"stage": stage name, "gen": generation}; replay checks it and
#                          applies nothing (segments written before it was kept lack it)

_STATUSES = frozenset(s.value for s in Status)
_GROUP_HEADER = struct.Struct("<I")
#: The first four bytes of a request record: a header length no group has (see MAX_PAYLOAD).
REQUEST_MARK = b"\xff\xff\xff\xff"
_REQUEST_HEAD = struct.Struct("<4sQ")  # mark, unit code
#: The first four bytes of a batch of request records (their frames follow).
BATCH_MARK = b"\xfe\xff\xff\xff"
#: Bytes a request record adds to what it holds (mark, code).
REQUEST_OVERHEAD = _REQUEST_HEAD.size
#: The largest counter (or counter delta) a group may hold: a signed 64-bit int.
MAX_COUNT = (1 << 63) - 1
#: The largest Unix time a group may hold (that of a done time: uint32 seconds).
MAX_SECONDS = (1 << 32) - 1
_CODE_END = 1 << 64


def _count(v: Any) -> bool:
    return type(v) is int and 0 <= v <= MAX_COUNT


def _counters(v: Any) -> bool:
    # Unrolled: it is checked in nearly every group, on the resume path.
    if type(v) is not list or len(v) != 4:
        return False
    a, b, c, d = v
    m = MAX_COUNT
    return (type(a) is int and type(b) is int and type(c) is int and type(d) is int
            and -m <= a <= m and -m <= b <= m and -m <= c <= m and -m <= d <= m)


def _seconds(v: Any) -> bool:
    return type(v) in (int, float) and 0 <= v <= MAX_SECONDS


def is_codes(v: Any) -> bool:
    """A list of unit codes (u64)."""
    return type(v) is list and all(type(c) is int and 0 <= c < _CODE_END for c in v)


def _str_or_none(v: Any) -> bool:
    return v is None or type(v) is str


def _delta(v: Any) -> bool:
    return type(v) is int and -MAX_COUNT <= v <= MAX_COUNT


def output_entry(n: Any) -> bool:
    """An output's entry: ``[base, length]`` (bytes), or ``[base, length, document]`` for a
    feed document or batch file (``document`` an object: see :data:`OUTPUTS`)."""
    return (type(n) is list and len(n) in (2, 3) and _count(n[0]) and _count(n[1])
            and (len(n) == 2 or type(n[2]) is dict))




def _counts_by_name(v: Any, check: Any = _count) -> bool:
    return type(v) is dict and all(check(n) for n in v.values())


def is_units(v: Any) -> bool:
    """A list of ``[code, payload]`` pairs (code u64, payload anything JSON)."""
    return type(v) is list and all(
        type(a) is list and len(a) == 2 and type(a[0]) is int and 0 <= a[0] < _CODE_END
        for a in v)


def is_state(v: Any) -> bool:
    """A CheckpointState as JSON."""
    try:
        CheckpointState.model_validate(v)
    except ValueError:
        return False
    return type(v) is dict


def _owner(v: Any) -> bool:
    try:
        Owner.model_validate(v)
    except ValueError:
        return False
    return type(v) is dict


#: What each header key may hold (besides DONE_COUNT and FAILED_COUNT): a group holding
#: anything else (a wrong type, a counter out of range, a key no writer writes) is refused
#: whole by :func:`decode_group`, so replay stops before it as before a torn record.
_CHECKS: dict[str, Any] = {
    INIT: is_state,
    COUNTERS: _counters,
    LAST_ITEM: _str_or_none,
    LAST_INDEX: lambda v: v is None or type(v) is int,
    BATCH_ID: _str_or_none,
    COMMITTED_AT: _seconds,
    STATUS: lambda v: type(v) is str and v in _STATUSES,
    RECOVERIES: _count,
    OWNER: _owner,
    TOTAL: lambda v: v is None or _count(v),
    INPUT_FILE: lambda v: type(v) is list and len(v) == 2 and all(_str_or_none(x) for x in v),
    OUTPUT_FILE: _str_or_none,
    START_TIME: lambda v: v is None or _seconds(v),
    METADATA: lambda v: type(v) is dict,
    ERROR: lambda v: (type(v) is list and len(v) == 3 and _str_or_none(v[0]) and _count(v[1])
                      and (v[2] is None or _seconds(v[2]))),
    RETRY_FAILED: is_codes,
    REFRESH_BEFORE: _seconds,
    ADDED: is_units,
    ADDED_REFS: _count,
    STARTED: is_codes,
    HANDED: is_codes,
    OUTPUTS: lambda v: type(v) is dict and all(output_entry(n) for n in v.values()),
    ATTACHED: lambda v: type(v) is dict,
    LOST: lambda v: _counts_by_name(v, _delta),  # a negative count takes units back
    DROPPED: is_codes,
    USER_STATE: lambda v: True,
    STAGE_TOTALS: _counts_by_name,
    SEGMENT_OF: lambda v: (type(v) is dict and len(v) == 2 and type(v.get("stage")) is str
                           and _count(v.get("gen"))),
}


def check_fields(fields: dict[str, Any]) -> None:
    """Raise ValueError naming the first header field (keys above) that is unknown or holds
    a value no writer writes."""
    checks = _CHECKS
    for key, value in fields.items():
        check = checks.get(key)
        if check is None:
            raise ValueError(f"unknown group field {key!r}")
        if not check(value):
            raise ValueError(f"group field {key!r} holds a bad value")


def _codes_bytes(codes: list[int]) -> bytes:
    return le_bytes(codes, "Q")


def _codes_from(data: memoryview) -> array[int]:
    # Kept as an array (8 bytes a code): replay may hold many groups at once.
    return from_le(data, "Q")


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
#: Bytes per added unit in a group's binary section: code, ref, length, priority.
_ADDED_ENTRY = 8 + 8 + 4 + 4


@dataclass
class Added:
    """Pending units a group adds, as parallel arrays (see :data:`ADDED_REFS`)."""

    codes: array[int] = field(default_factory=lambda: array("Q"))
    refs: array[int] = field(default_factory=lambda: array("Q"))
    lengths: array[int] = field(default_factory=lambda: array("I"))
    priorities: array[int] = field(default_factory=lambda: array("i"))

    def __len__(self) -> int:
        return len(self.codes)

    def append(self, code: int, ref: int, length: int, priority: int) -> None:
        self.codes.append(code)
        self.refs.append(ref)
        self.lengths.append(length)
        self.priorities.append(priority)

    def to_bytes(self) -> bytes:
        return b"".join((le_bytes(self.codes, "Q"), le_bytes(self.refs, "Q"),
                         le_bytes(self.lengths, "I"), le_bytes(self.priorities, "i")))

    @classmethod
    def from_bytes(cls, data: memoryview, n: int) -> Added:
        """Raise ValueError unless ``data`` holds ``n`` entries exactly."""
        if len(data) != _ADDED_ENTRY * n:
            raise ValueError("group's added units have the wrong length")
        a, b, c = 8 * n, 16 * n, 20 * n
        return cls(from_le(data[:a], "Q"), from_le(data[a:b], "Q"),
                   from_le(data[b:c], "I"), from_le(data[c:], "i"))


def encode_group(done: list[int], failed: list[int], fields: dict[str, Any],
                 added: Added | None = None) -> bytes:
    """One group: counters and other fields as JSON, unit codes as packed uint64.

    ``done`` holds the codes of units finished successfully, ``failed`` those
    finished with a failure (also done: they are skipped unless retried); ``added``
    the pending units the group adds (their request records are written before it).
    """
    header = dict(fields)
    header[DONE_COUNT] = len(done)
    header[FAILED_COUNT] = len(failed)
    if added:
        header[ADDED_REFS] = len(added)
    head = _ENCODER.encode(header).encode()
    parts = [_GROUP_HEADER.pack(len(head)), head, _codes_bytes(done), _codes_bytes(failed)]
    if added:
        parts.append(added.to_bytes())
    return b"".join(parts)


@dataclass
class Group:
    """One decoded group: the codes it finished and its other header fields."""

    #: Codes of units finished successfully.
    done: array[int]
    #: Codes of units finished with a failure (done too: skipped unless retried).
    failed: array[int]
    #: The header without ``d``, ``f`` and ``r`` (see the keys above).
    fields: dict[str, Any]
    #: The pending units it adds with their request records (None: none).
    added: Added | None = None

    def added_codes(self) -> list[int]:
        """Codes of the pending units the group adds, either way (records or payloads)."""
        codes = [code for code, _ in self.fields.get(ADDED, ())]
        if self.added is not None:
            codes.extend(self.added.codes)
        return codes


def decode_group(payload: bytes | memoryview) -> Group:
    """Inverse of :func:`encode_group`.

    Raises ValueError, and only ValueError, on a malformed payload: cut short (shorter
    than its header: a store's row or value altered), wrong lengths, a header that is
    not an object or lacks its counts, a field that is unknown or holds a bad value
    (:func:`check_fields`), so a group is applied whole or not at all, in every store.
    """
    try:
        return _decode_group(payload)
    except (KeyError, TypeError, struct.error) as exc:
        raise ValueError(f"malformed group ({type(exc).__name__}: {exc})") from None


def _decode_group(payload: bytes | memoryview) -> Group:
    (hlen,) = _GROUP_HEADER.unpack_from(payload, 0)
    start = _GROUP_HEADER.size
    fields = load_json(bytes(payload[start : start + hlen]))
    if not isinstance(fields, dict):
        raise ValueError("group header is not an object")
    n_done, n_failed = fields.pop(DONE_COUNT), fields.pop(FAILED_COUNT)
    if type(n_done) is not int or type(n_failed) is not int or n_done < 0 or n_failed < 0:
        raise ValueError("bad code counts")
    view = memoryview(payload)[start + hlen :]
    n_added = fields.pop(ADDED_REFS, 0)
    if type(n_added) is not int or n_added < 0:
        raise ValueError("bad added count")
    codes_end = 8 * (n_done + n_failed)
    if len(view) != codes_end + _ADDED_ENTRY * n_added:
        raise ValueError("group key section has the wrong length")
    check_fields(fields)
    added = Added.from_bytes(view[codes_end:], n_added) if n_added else None
    return Group(_codes_from(view[: 8 * n_done]), _codes_from(view[8 * n_done : codes_end]),
                 fields, added)


def encode_request(code: int, data: bytes) -> bytes:
    """A request record: what redoes pending unit ``code`` (``data``, e.g. a crawl's request
    as JSON), framed and appended to the journal like a group."""
    return _REQUEST_HEAD.pack(REQUEST_MARK, code) + data


def decode_request(payload: bytes | memoryview, code: int) -> bytes:
    """What request record ``payload`` holds; ValueError unless it is one, of unit ``code``."""
    if len(payload) < REQUEST_OVERHEAD:
        raise ValueError("request record cut short")
    mark, found = _REQUEST_HEAD.unpack_from(payload, 0)
    if mark != REQUEST_MARK:
        raise ValueError("not a request record")
    if found != code:
        raise ValueError(f"request record of unit {found}, not {code}")
    return bytes(payload[REQUEST_OVERHEAD:])


def decode_record(payload: bytes | memoryview) -> Group | None:
    """A journal record: its group (:func:`decode_group`), or None for a request record
    or a batch of them (skipped by replay). Raises as :func:`decode_group`."""
    if payload[:4] == REQUEST_MARK:
        if len(payload) < REQUEST_OVERHEAD:
            raise ValueError("request record cut short")
        return None
    if payload[:4] == BATCH_MARK:
        return None
    return decode_group(payload)


def segment_tag(stage: str, generation: int) -> bytes:
    """The first group of a journal segment: it names its stage and generation (see
    ``SEGMENT_OF``), so a segment copied from elsewhere is recognised on replay."""
    return encode_group([], [], {SEGMENT_OF: {"stage": stage, "gen": generation}})


class GroupBuilder:
    """The next group of a stage's journal, built change by change and encoded once.

    The checkpoint's update path appends codes to ``done`` and ``failed`` and adds to
    ``counts`` directly (plain attribute access: it runs once per unit); other changes
    come in as header fields through :meth:`add_fields`. :meth:`seal` encodes the
    group and leaves the builder empty for the next one.
    """

    __slots__ = ("added", "counts", "done", "failed", "fields", "handed", "started", "updates")

    def __init__(self) -> None:
        #: Codes of units finished successfully.
        self.done: list[int] = []
        #: Codes of units finished with a failure.
        self.failed: list[int] = []
        #: Header fields other than the ones below (status, total, metadata, ...).
        self.fields: dict[str, Any] = {}
        #: Counter deltas: processed, successful, failed, skipped.
        self.counts = [0, 0, 0, 0]
        #: Updates recorded (each writes the last item, index and batch id at commit).
        self.updates = 0
        #: New pending units, with their request records' refs (``r``).
        self.added = Added()
        #: Codes of pending units handed to a worker (``s``).
        self.started: list[int] = []
        #: Codes of pending units given to another process (``h``).
        self.handed: list[int] = []

    def is_empty(self) -> bool:
        """True if nothing was recorded since the last :meth:`seal`."""
        return not (self.updates or self.fields or self.done or self.failed or any(self.counts)
                    or self.added or self.started or self.handed)

    def add_fields(self, fields: dict[str, Any]) -> None:
        """Add header fields (keys above). Counter deltas (``c``, ``x``) are summed, dropped
        codes (``xd``) joined, attached data (``at``) and outputs (``fo``) merged by name;
        ``init`` drops what was recorded before it (see :meth:`clear`); any other key
        replaces an earlier value."""
        if INIT in fields:  # first: nothing recorded before it survives it, merged or not
            self.clear()
        if COUNTERS in fields:
            delta, counts = fields[COUNTERS], self.counts
            for i in range(4):
                counts[i] += delta[i]
            fields = {k: v for k, v in fields.items() if k != COUNTERS}
        if LOST in fields and LOST in self.fields:
            lost = dict(self.fields[LOST])
            for reason, n in fields[LOST].items():
                lost[reason] = lost.get(reason, 0) + n
            fields = {**fields, LOST: lost}
        if DROPPED in fields and DROPPED in self.fields:
            fields = {**fields, DROPPED: self.fields[DROPPED] + list(fields[DROPPED])}
        for key in (ATTACHED, OUTPUTS):  # by name, by path: each replaces its own entry
            if key in fields and key in self.fields:
                fields = {**fields, key: {**self.fields[key], **fields[key]}}
        self.fields.update(fields)

    def clear(self) -> None:
        """Drop what was recorded, the stage being (re)created. Hand-offs and the update
        count stay: those units belong to another process whatever this stage becomes,
        and the next commit still writes the last item."""
        self.done, self.failed, self.fields = [], [], {}
        self.counts = [0, 0, 0, 0]
        self.added, self.started = Added(), []

    def seal(self, position: tuple[str | None, int | None, str | None], committed_at: float) -> bytes:
        """Encode the group (see :func:`encode_group`) and start an empty one.

        ``position`` is ``(last item, last index, batch id)``, written if an update was
        recorded; ``committed_at`` is the commit's Unix time in seconds. The header keys
        come in a fixed order (the fields, then ``s h c l i b ts``), so the same
        changes always make the same bytes.
        """
        fields = self.fields
        added = self.added
        if added:
            self.added = Added()
        if self.started:
            fields[STARTED] = self.started
            self.started = []
        if self.handed:
            fields[HANDED] = self.handed
            self.handed = []
        counts = self.counts
        if any(counts):
            fields[COUNTERS] = counts
        if self.updates:
            fields[LAST_ITEM], fields[LAST_INDEX], fields[BATCH_ID] = position
        fields[COMMITTED_AT] = committed_at
        payload = encode_group(self.done, self.failed, fields, added)
        # Detached before the caller appends it: if the append fails, the group must
        # not be sent again with the next one.
        self.done, self.failed, self.fields = [], [], {}
        self.counts = [0, 0, 0, 0]
        self.updates = 0
        return payload
