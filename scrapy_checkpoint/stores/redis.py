"""The Redis store: the same journal, snapshots and state as the file store, in Redis.

Keys for stage ``s`` under the prefix ``p`` (default ``scrapy_checkpoint``)::

    p:stages            SET of stage names
    p:s:lock            the owner's token; expires after the lease unless renewed
    p:s:owner           JSON of the owner (pid, host, start time)
    p:s:journal         LIST of group records, oldest first
    p:s:requests        HASH: ref -> request record (what redoes a pending unit, see
                        journal.pending), written in the script call that appends the
                        group adding the unit, deleted a snapshot after it is done
    p:s:meta            HASH: base (records trimmed into the snapshot so far),
                        seq (last group appended), rq (last request ref), version
                        (state writes)
    p:s:snapshot        the newest snapshot (same bytes as a file snapshot)
    p:s:snapshot:prev   the one before it
    p:s:state           JSON of the human-readable state
    p:s:corrupt         LIST of records set aside as unreadable

A group is appended by a Lua script that checks the caller still holds the
lock and that the group's sequence number is new, so a retry after a dropped
connection can never apply a group twice. A snapshot replaces the records it
covers in one script. Blobs over 100 KB are stored zstandard-compressed. The
scripts are the ``lua/*.lua`` files next to this module; each says what its keys
and arguments are.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import socket
import struct
import threading
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from pydantic import ValidationError

from ..clock import utcnow
from ..errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointLostError,
    CheckpointWriteError,
    ConfigError,
    CorruptCheckpointError,
    lease_lost,
    redact,
)
from ..journal.arrays import load_json
from ..journal.doneset import DoneSet
from ..journal.groups import (
    HANDED,
    INIT,
    REQUEST_OVERHEAD,
    decode_group,
    decode_request,
    encode_request,
)
from ..journal.snapshot import decode_snapshot
from ..state import CheckpointState, Owner, Status, pid_alive
from .base import Loaded, check_stage_name, is_stage_name

logger = logging.getLogger("scrapy_checkpoint")

DEFAULT_PREFIX = "scrapy_checkpoint"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESS_OVER = 100_000

#: Seconds a stage's keys live after its last state write, by status.
DEFAULT_TTLS = {"active": 48 * 3600, "completed": 3600, "failed": 7 * 24 * 3600}

@cache
def _token_holder(token: str) -> tuple[str | None, int | None]:
    """The host and pid a lock token (``host:pid:uuid``) names; (None, None) if it is not one."""
    host, _, rest = token.rpartition(":")[0].rpartition(":")
    try:
        return (host or None), int(rest)
    except ValueError:
        return None, None


def lua_source(package: str, name: str) -> str:
    """The text of the Lua script ``<package>/lua/<name>.lua`` (package data).

    Raises FileNotFoundError if the package has no such script.
    """
    return resources.files(package).joinpath("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")


def compress(data: bytes) -> bytes:
    """``data`` zstandard-compressed (level 3) if it is over :data:`COMPRESS_OVER` bytes."""
    if len(data) <= COMPRESS_OVER:
        return data
    import zstandard

    return zstandard.ZstdCompressor(level=3).compress(data)


#: The most a compressed value may expand to: :data:`MAX_RATIO` times its size, at least
#: :data:`MIN_EXPANDED` bytes (a frontier's JSON compresses about 70 times, done codes 12).
MAX_RATIO = 1024
MIN_EXPANDED = 64 << 20


def decompress(data: bytes) -> bytes:
    """Inverse of :func:`compress` (zstandard data is recognised by its magic number).

    Raises ValueError for data that is not whole zstandard data or that would expand past
    ``max(MIN_EXPANDED, MAX_RATIO * len(data))`` bytes: decompressed into a buffer of at
    most that size, a crafted value never allocates more.
    """
    if not data.startswith(_ZSTD_MAGIC):
        return data
    import zstandard

    cap = max(MIN_EXPANDED, MAX_RATIO * len(data))
    refused = f"a {len(data)}-byte compressed value expands past {cap} bytes; refused"
    try:
        declared = zstandard.frame_content_size(data)
        if declared > cap:  # said by its header: refused before anything is allocated
            raise ValueError(refused)
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=cap)
    except zstandard.ZstdError as exc:
        # Cut short, damaged, or (its size not declared) longer than the cap.
        raise ValueError(f"damaged compressed value, or {refused} ({exc})") from None


@cache
def _permission_error_class() -> type[Exception]:
    """redis-py's NoPermissionError as a CheckpointError whose message names the command."""
    from redis.exceptions import NoPermissionError

    class RedisPermissionError(CheckpointError, NoPermissionError):
        """The Redis user's ACL denies a command this package runs."""

        def __init__(self, message: str = "") -> None:
            m = re.search(r"run the '([^']+)' command", message)
            self.command = m.group(1).replace("|", " ").upper() if m else "a command"
            if m is None:  # denied inside a Lua script, whose reply does not name it
                super().__init__(
                    f"The Redis user may not run a command that scrapy-checkpoint's scripts "
                    f"run ({message.rstrip('.')}). They need GET, SET, DEL, EXISTS, EXPIRE, "
                    f"PEXPIRE, RENAME, HGET, HSET, HDEL, HINCRBY, LRANGE, RPUSH, LTRIM, LLEN, "
                    f"SADD, SREM and TTL on keys under the prefix: grant them (e.g. ACL "
                    f"SETUSER <user> +@read +@write +@scripting) or use a user that may.")
                return
            super().__init__(
                f"The Redis user may not run {self.command} ({message}). scrapy-checkpoint "
                f"needs it: grant it (ACL SETUSER <user> +{self.command.split()[0].lower()}) "
                f"or use a user that may.")

    RedisPermissionError.__qualname__ = RedisPermissionError.__name__
    return RedisPermissionError


@cache
def _refused_write_class() -> type[Exception]:
    """redis-py's ResponseError for a write Redis refuses on a live connection (out of
    memory under maxmemory, a read-only replica, snapshots failing: MISCONF) as a
    CheckpointWriteError, still a ResponseError, whose message says what to do."""
    from redis.exceptions import ResponseError

    class RedisWriteRefusedError(CheckpointWriteError, ResponseError):
        """Redis refused to write a key of the checkpoint."""

        def __init__(self, message: str = "") -> None:
            if message.startswith("Redis refused"):  # made again from its own args
                super().__init__(message)
                return
            reason = message.split(". script:", maxsplit=1)[0].rstrip(".")
            if "command not allowed when used memory" in reason:
                fix = ("Redis is full: raise its maxmemory or free memory on it "
                       "(keep maxmemory-policy noeviction)")
            elif "MISCONF" in message or "snapshots" in message:
                fix = "Redis cannot save its data to disk: fix its disk or its dir setting"
            else:
                fix = "Redis accepts no writes there (a read-only replica?): point the URL " \
                      "at the primary"
            super().__init__(
                f"Redis refused to write the checkpoint ({reason}). {fix}. The job stops: "
                f"what was recorded before stays, and the work done since is redone by the "
                f"next run, which resumes from the last group Redis accepted (run the same "
                f"command again).")

    RedisWriteRefusedError.__qualname__ = RedisWriteRefusedError.__name__
    return RedisWriteRefusedError


def _refuses_writes(exc: Exception) -> bool:
    """True for a reply by which Redis refuses a write: OOM, READONLY or MISCONF."""
    from redis.exceptions import OutOfMemoryError, ReadOnlyError

    text = str(exc)
    return isinstance(exc, (OutOfMemoryError, ReadOnlyError)) or "MISCONF" in text \
        or "command not allowed when used memory" in text \
        or "READONLY You can't write against a read only replica" in text


def _wrong_type(exc: Exception, args: tuple[Any, ...]) -> CorruptCheckpointError:
    """A WRONGTYPE reply as one clear error naming the keys involved: a key of the store
    holds a value of another Redis type, written by something other than this package."""
    if args and str(args[0]).upper() in ("EVALSHA", "EVAL") and len(args) > 2:
        keys = [str(k) for k in args[3:3 + int(args[2])]]
    elif len(args) > 1 and isinstance(args[1], (str, bytes)):
        keys = [args[1].decode(errors="replace") if isinstance(args[1], bytes) else args[1]]
    else:  # a pipeline: its message names the command and the key
        keys = []
    where = f" (one of {', '.join(keys)})" if len(keys) > 1 else f" ({keys[0]})" if keys else ""
    return CorruptCheckpointError(
        f"A key of the checkpoint in Redis{where} holds a value of another type than this "
        f"package writes ({str(exc).rstrip('.')}): something else wrote it, or another "
        f"application uses the same key prefix. Nothing was changed. Check it with redis-cli "
        f"TYPE; delete the stage's keys (or reset the stage) to start it over, or give this "
        f"job its own prefix (?prefix=NAME in the URL).")


@cache
def _client_class() -> Any:
    """redis-py's client (and its pipelines) raising RedisPermissionError, still a
    NoPermissionError, when the user's ACL denies a command: one clear message naming the
    command instead of redis-py's traceback."""
    import redis
    from redis.client import Pipeline
    from redis.exceptions import NoPermissionError, ResponseError

    error = _permission_error_class()

    def translated(method: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return method(self, *args, **kwargs)
            except NoPermissionError as exc:
                if isinstance(exc, error):
                    raise
                raise error(str(exc)) from None
            except ResponseError as exc:
                if "can't run this command" in str(exc):  # an ACL denial inside a script
                    raise error(str(exc)) from None
                if isinstance(exc, CheckpointError):
                    raise
                if _refuses_writes(exc):
                    raise _refused_write_class()(str(exc)) from None
                if "WRONGTYPE" not in str(exc):
                    raise
                raise _wrong_type(exc, args) from None
        return call

    class CheckpointPipeline(Pipeline):
        execute_command = translated(Pipeline.execute_command)
        execute = translated(Pipeline.execute)

    class CheckpointRedis(redis.Redis):
        execute_command = translated(redis.Redis.execute_command)

        def pipeline(self, *args: Any, **kwargs: Any) -> Any:
            pipe = super().pipeline(*args, **kwargs)
            pipe.__class__ = CheckpointPipeline
            return pipe

    return CheckpointRedis


def _warn_if_evicting(client: Any, location: str) -> None:
    """Log a warning if Redis evicts keys when full: every checkpoint key has an expiry,
    so any policy but ``noeviction`` may evict them (``INFO memory``; nothing if denied)."""
    try:
        info = client.info("memory")
    except Exception:  # an ACL without INFO, a proxy that hides it: nothing to tell
        return
    policy, limit = info.get("maxmemory_policy"), int(info.get("maxmemory") or 0)
    if limit and policy and policy != "noeviction":
        logger.warning(
            "Redis at %s evicts keys when it is full (maxmemory %d bytes, maxmemory-policy "
            "%s): an evicted journal stops its stage as damaged, and a stage whose keys are "
            "all evicted starts over from nothing, redoing its finished units. Set "
            "maxmemory-policy noeviction on a Redis that holds checkpoints.",
            location, limit, policy)


def _read_stage(client: Any, key: Callable[[str], str]) -> list[Any]:
    """A stage's snapshot, meta, journal, whether it has a state, its gone marker and the
    length of its corrupt list (``key(part)`` names its keys), read in one transaction. A
    Redis at its maxmemory refuses transactions (it queues nothing) and every write: then
    read without one, again until the meta hash, changed by every write of a stage's
    journal, reads the same after, so a full Redis can still be listed, shown, exported."""
    def read(pipe: Any) -> list[Any]:
        pipe.get(key("snapshot")).hgetall(key("meta")).lrange(key("journal"), 0, -1)
        return list(pipe.exists(key("state")).get(key("gone")).llen(key("corrupt")).execute())

    try:
        with client.pipeline(transaction=True) as pipe:
            return read(pipe)
    except CheckpointWriteError as exc:
        if "used memory" not in str(exc):
            raise
        for _ in range(10):
            with client.pipeline(transaction=False) as pipe:
                values = read(pipe)
            if client.hgetall(key("meta")) == values[1]:
                return values
        raise


def _check_journal_start(loaded: Loaded, stage: str, journal: str) -> None:
    """Raise CorruptCheckpointError if ``loaded``, without a snapshot, does not begin
    with the stage's creation: after a compaction the journal keeps only the groups after
    the snapshot, and with the snapshot and the meta hash counting what it covers both gone,
    the rest would be taken for the whole stage."""
    if loaded.snapshot is None and loaded.payloads and INIT not in loaded.payloads[0].fields:
        raise CorruptCheckpointError(
            f"The journal of stage {stage!r} in Redis ({journal}) does not begin with the "
            f"stage's creation, and its snapshot, which held what came before, is missing with "
            f"the meta hash that counted it: they were deleted or evicted (a maxmemory-policy "
            f"other than noeviction, or keys deleted by hand). The units the snapshot held are "
            f"not known, so the stage is not resumed (it would redo them and write their "
            f"outputs again). Nothing was changed; reset the stage to start it over "
            f"(scrapy-checkpoint --backend URL reset {stage}), and set maxmemory-policy "
            f"noeviction.")


def _as_holder(script: Any, stage: str, location: str, **call: Any) -> Any:
    """``script(**call)``, a script that fails with LOST_LOCK unless the caller holds
    ``stage``'s lock: that failure raised as the LeaseLostError the job stops with."""
    from redis.exceptions import ResponseError

    try:
        return script(**call)
    except ResponseError as exc:
        if "LOST_LOCK" in str(exc):
            raise lease_lost(stage, f"Redis at {location}") from None
        if "BAD_META" in str(exc):
            raise bad_meta(stage, str(exc), call.get("keys") or []) from None
        raise


def bad_meta(stage: str, reply: str, keys: Sequence[str]) -> CheckpointWriteError:
    """A script's BAD_META reply (a field of the stage's meta hash that is not a number,
    written over by something else while the stage ran) as the error the job stops with."""
    field = reply.split("BAD_META", 1)[1].split(maxsplit=1)[0] if "BAD_META " in reply else "a count"
    key = next((k for k in keys if str(k).endswith(":meta")), "meta")
    return CheckpointWriteError(
        f"The meta hash of stage {stage!r} in Redis ({key}) was written over while the stage "
        f"ran: its {field} is not a number, so the journal cannot go on after it. This run "
        f"stops: nothing more can be recorded, and what it recorded before is kept but cannot "
        f"be resumed from. Reset the stage to start it over (scrapy-checkpoint --backend URL "
        f"reset {stage}), and keep other programs off the stage's keys (give this job its own "
        f"?prefix=NAME).")


@dataclass(frozen=True)
class TrackedUnits:
    """Two hashes a stage's journal appends keep in step (see :meth:`RedisStore.track_units`)."""

    #: Hash whose fields, unit codes, are set to ``mark`` once the unit is finished.
    finished: str
    mark: str
    #: Hash of units not yet journaled: a unit leaves it when a group adds it.
    unjournaled: str


class RedisLock:
    """A lease on a stage, renewed by a daemon thread (every third of the lease) while
    the process lives. ``token`` is what the lock key holds while it is ours."""

    def __init__(self, store: RedisStore, stage: str, token: str) -> None:
        self._store, self._stage, self.token = store, stage, token
        self._renew_script = store.lua_script("renew")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"checkpoint-lease-{stage}",
                                        daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        store = self._store
        period = store.lease_seconds / 3
        while not self._stop.wait(period):
            try:
                if not self._renew_script(keys=[store.key(self._stage, "lock")],
                                          args=[self.token, int(store.lease_seconds * 1000)]):
                    logger.error("Stage %s: the Redis lease was lost; another process may own "
                                 "the stage now.", self._stage)
                    return
            except Exception as exc:  # Redis away: keep trying, the lease may still hold
                logger.warning("Stage %s: cannot renew the Redis lease (%s)", self._stage, exc)

    def release(self, *, unlink: bool = False) -> None:
        """Stop renewing and delete the lock if it still holds our token (``unlink`` has no
        meaning here). Idempotent; a Redis error is logged: the lease then expires."""
        if self._stop.is_set():
            return
        self._stop.set()
        store = self._store
        try:
            store.compare_and_delete(store.key(self._stage, "lock"), self.token)
        except Exception as exc:
            logger.warning("Stage %s: cannot release the Redis lease (%s); it expires by "
                           "itself.", self._stage, exc)


class RedisJournalWriter:
    """Appends groups to the stage's list; buffers them while Redis is unreachable.

    ``seq`` is the sequence number of the last group in Redis; ``buffer_limit`` the
    bytes it may buffer (then it raises CheckpointError); ``tracked`` the unit hashes
    its appends keep in step, if any. ``size`` counts the bytes appended (payloads)
    since it was made or last rotated.
    """

    def __init__(self, store: RedisStore, stage: str, token: str, seq: int,
                 buffer_limit: int, tracked: TrackedUnits | None = None, rseq: int = 0) -> None:
        self._store, self._stage, self._token = store, stage, token
        self.seq = seq
        #: The last request ref handed out.
        self.rseq = rseq
        self.size = 0
        #: Groups not yet in Redis: sequence number, group, the request records sent with it.
        self._pending: deque[tuple[int, bytes, list[tuple[int, bytes]]]] = deque()
        self._pending_bytes = 0
        #: Request records waiting for the next group: (ref, record).
        self._requests: list[tuple[int, bytes]] = []
        self._buffer_limit = buffer_limit
        self._keys = [store.key(stage, "lock"), store.key(stage, "journal"), store.key(stage, "meta"),
                      store.key(stage, "requests")]
        self._append = store.lua_script("append")
        self._tracked = tracked
        if tracked is not None:
            self._keys += [tracked.finished, tracked.unjournaled]

    def put_request(self, code: int, data: bytes) -> int:
        """See :meth:`JournalWriter.put_request`: sent with the next group, in its script call."""
        self.rseq += 1
        record = encode_request(code, data)
        self._requests.append((self.rseq, record))
        return self.rseq

    def unwritten(self, ref: int) -> bytes | None:
        """The request record ``ref`` if it has not reached Redis yet, else None."""
        if ref <= self.rseq - len(self._requests) and not self._pending:
            return None
        for batch in (self._requests, *(requests for _, _, requests in self._pending)):
            for r, record in batch:
                if r == ref:
                    return record
        return None

    def append(self, payload: bytes) -> None:
        """Give the group a sequence number and send it with the request records put since
        the last one (buffered if Redis is away)."""
        self.seq += 1
        requests, self._requests = self._requests, []
        self._pending.append((self.seq, payload, requests))
        size = len(payload) + sum(len(record) for _, record in requests)
        self._pending_bytes += size
        self.size += len(payload)
        self.flush()

    def flush(self) -> None:
        """Send the buffered groups, oldest first, each in one script call.

        Raises CheckpointError when Redis has been unreachable for more than
        ``buffer_limit`` bytes, CheckpointLockedError when the lock was lost.
        """
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        while self._pending:
            seq, payload, requests = self._pending[0]
            args: list[Any] = [self._token, seq, payload, len(requests)]
            for ref, record in requests:
                args += [ref, record]
            if self._tracked is not None:
                group = decode_group(payload)
                args += [self._tracked.mark, len(group.done) + len(group.failed)]
                args += [str(code) for code in group.done]
                args += [str(code) for code in group.failed]
                # Journaled here now: they leave the unjournaled hash (not those handed off
                # in this same group: a retry's payload is queued again).
                handed = set(group.fields.get(HANDED, ()))
                args += [str(code) for code in group.added_codes() if code not in handed]
            try:
                self._append(keys=self._keys, args=args)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if self._pending_bytes > self._buffer_limit:
                    raise CheckpointError(
                        f"Redis at {self._store.location} has been unreachable for "
                        f"{len(self._pending)} journal groups ({self._pending_bytes} bytes, over "
                        f"CHECKPOINT_REDIS_BUFFER={self._buffer_limit}); stopping rather than "
                        f"losing records. Bring Redis back and run again."
                    ) from exc
                logger.warning("Redis unreachable (%s); %d group(s) buffered until it is back.",
                               exc, len(self._pending))
                return
            except ResponseError as exc:
                if "STAGE_GONE" in str(exc):
                    raise self._store.stage_gone(self._stage, seq - 1) from None
                if "LOST_LOCK" in str(exc):
                    raise lease_lost(self._stage, f"Redis at {self._store.location}") from None
                if "BAD_META" in str(exc):
                    raise bad_meta(self._stage, str(exc), self._keys) from None
                raise
            self._pending.popleft()
            self._pending_bytes -= len(payload) + sum(len(record) for _, record in requests)

    @property
    def backlog(self) -> int:
        """Groups buffered, not yet in Redis."""
        return len(self._pending)

    def sync(self) -> None:
        """Redis persists by its own configuration (use appendonly with fsync everysec)."""

    def fsync(self) -> None:
        """Send the buffered groups (see :meth:`flush`)."""
        self.flush()

    def close(self) -> None:
        """Send the buffered groups; a Redis error is logged (the groups are lost),
        CheckpointError raised."""
        try:
            self.flush()
        except CheckpointError:
            raise
        except Exception as exc:
            logger.error("Stage %s: %d journal group(s) could not reach Redis (%s).",
                         self._stage, len(self._pending), exc)


class RedisRequestReader:
    """Reads a stage's request records from its ``requests`` hash, and from its writer's
    buffer for records not sent yet."""

    def __init__(self, store: RedisStore, stage: str, writer: RedisJournalWriter | None) -> None:
        self._client, self._key, self.writer = store.client, store.key(stage, "requests"), writer

    def read(self, ref: int, length: int, code: int) -> bytes:
        """See :meth:`RequestReader.read`."""
        raw = self.writer.unwritten(ref) if self.writer is not None else None
        if raw is None:
            raw = self._client.hget(self._key, ref)
            if raw is None:
                raise ValueError(f"request record {ref} is missing from {self._key}")
        if len(raw) != REQUEST_OVERHEAD + length:
            raise ValueError(f"request record {ref} has the wrong length")
        return decode_request(raw, code)


class RedisStore:
    """Stages kept in Redis (see the module docstring for the key layout).

    ``url`` is a redis-py URL (``redis://[:password@]host:port/db``, ``rediss://`` for
    TLS, ``unix://``), optionally with ``?prefix=NAME`` to choose the key prefix.
    """

    def __init__(self, url: str, *, prefix: str | None = None, lease_seconds: float = 60.0,
                 buffer_bytes: int = 64 << 20, ttls: dict[str, int] | None = None) -> None:
        try:
            import redis
        except ImportError:  # pragma: no cover - an install problem, said plainly
            raise ConfigError("The Redis backend needs redis-py and zstandard: "
                              "pip install 'scrapy-checkpoint[redis]'.") from None
        head, _, raw_query = url.partition("?")
        query = parse_qs(raw_query)
        url_prefix = query.pop("prefix", [None])[0]
        self.prefix = prefix or url_prefix or DEFAULT_PREFIX
        # Rebuilt as text: urlunsplit would drop the "//" of unix:// URLs.
        clean = f"{head}?{urlencode(query, doseq=True)}" if query else head
        parts = urlsplit(head)
        shown = {k: v for k, v in query.items() if k not in ("password", "username")}
        self.location = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[-1],
                                                  query=urlencode(shown, doseq=True)))
        if head.startswith("unix://"):
            self.location = redact(head.split("?")[0])
        self.directory = self.location
        self.lease_seconds = lease_seconds
        self.buffer_bytes = buffer_bytes
        self.ttls = {**DEFAULT_TTLS, **(ttls or {})}
        # redis-py's annotations are loose (str | bytes | Awaitable everywhere): keep it Any.
        self.client: Any = _client_class().from_url(clean, socket_timeout=10,
                                                    socket_connect_timeout=5,
                                                    health_check_interval=30)
        try:
            self.client.ping()
        except redis.exceptions.RedisError as exc:
            raise CheckpointError(f"Cannot reach Redis at {self.location}: "
                                  f"{str(exc).rstrip('.')}. Start Redis or fix CHECKPOINT_BACKEND."
                                  ) from None
        _warn_if_evicting(self.client, self.location)
        self._snapshot = self.lua_script("snapshot")
        self._state = self.lua_script("state")
        self._release = self.lua_script("release")
        self._lock_script = self.lua_script("lock")
        self._tokens: dict[str, str] = {}
        self._writers: dict[str, RedisJournalWriter] = {}
        self._rotations: dict[tuple[str, int], int] = {}
        #: Refs of request records freed, by snapshot, not yet deleted (see write_snapshot).
        self._freed: dict[str, list[list[int]]] = {}
        self._tracked: dict[str, TrackedUnits] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self.client.close()

    def key(self, stage: str, part: str) -> str:
        """The Redis key of ``part`` of ``stage`` (see the module docstring)."""
        return f"{self.prefix}:{stage}:{part}"

    def stage_keys(self, stage: str) -> list[str]:
        """Every key the store keeps for ``stage`` (lock and owner included)."""
        return [self.key(stage, part) for part in
                ("lock", "owner", "journal", "requests", "meta", "snapshot", "snapshot:prev",
                 "state", "corrupt", "gone")]

    def lua_script(self, name: str, package: str = __package__) -> Any:
        """The script ``<package>/lua/<name>.lua`` registered with this store's client: a
        redis-py ``Script``, called as ``script(keys=[...], args=[...])``."""
        return self.client.register_script(lua_source(package, name))

    def compare_and_delete(self, key: str, value: str) -> bool:
        """Delete ``key`` if it holds ``value`` (a lock's token), atomically: a lock is
        released only by its holder. True if it was deleted."""
        return bool(self._release(keys=[key], args=[value]))

    def track_units(self, stage: str, *, finished: str, mark: str, unjournaled: str) -> None:
        """Keep two hashes in step with ``stage``'s journal, in the script call that
        appends each group, so no crash can leave them disagreeing with it:

        - ``finished``: each unit the group finishes (done or failed) is set to ``mark``;
        - ``unjournaled``: each unit the group adds as pending leaves it (unless the
          same group hands it off).

        Both are full Redis keys; their fields are unit codes in decimal. Call before the
        stage is opened (its journal writer reads this when it is made). A shared stage
        keeps its claims and its queued requests so (:mod:`scrapy_checkpoint.shared`).
        """
        self._tracked[stage] = TrackedUnits(finished, mark, unjournaled)

    def token(self, stage: str) -> str | None:
        """The lock token this process holds on ``stage``."""
        return self._tokens.get(stage)

    # -- ownership -------------------------------------------------------------------------------

    def lock(self, stage: str, owner: Owner) -> RedisLock:
        """See :meth:`Store.lock`: a lease of ``lease_seconds``, renewed by a thread, taken
        with its owner record in one script (``lock.lua``). A holder on this host whose
        process is gone is taken over at once; the holder is read from the lock's own token
        (``host:pid:uuid``), never from an owner record that may be an earlier holder's."""
        check_stage_name(stage)
        token = f"{owner.host}:{owner.pid}:{uuid.uuid4().hex}"
        keys = [self.key(stage, "lock"), self.key(stage, "owner"), f"{self.prefix}:stages"]
        ms = int(self.lease_seconds * 1000)
        replacing = ""
        for _ in range(10):  # a lock freed or changed between two calls: look again
            held = self._lock_script(keys=keys, args=[token, ms, owner.model_dump_json(), stage,
                                                      replacing])
            if held == 1:
                self._tokens[stage] = token
                return RedisLock(self, stage, token)
            holder = held.decode() if isinstance(held, bytes) else str(held)
            if not holder:
                replacing = ""
                continue
            host, pid = _token_holder(holder)
            if host == socket.gethostname() and pid is not None and not pid_alive(pid):
                replacing = holder  # a crash on this host: take its lease over
                continue
            recorded = self._owner(stage)
            since = (recorded.started_at.isoformat() if recorded is not None
                     and (recorded.host, recorded.pid) == (host, pid) else None)
            raise CheckpointLockedError(stage, pid, host, since)
        raise CheckpointLockedError(stage, None, None, None)

    def _owner(self, stage: str) -> Owner | None:
        raw = self.client.get(self.key(stage, "owner"))
        try:
            return Owner.model_validate_json(raw) if raw else None
        except ValidationError:
            return None

    def live_owner(self, stage: str) -> Owner | None:
        """See :meth:`Store.live_owner` (the lease exists, and on this host its pid lives)."""
        token = self.client.get(self.key(stage, "lock"))
        if token is None:
            return None
        host, pid = _token_holder(token.decode())
        if host == socket.gethostname() and pid is not None and not pid_alive(pid):
            return None
        holder = self._owner(stage)
        if holder is not None and host is not None and (holder.host, holder.pid) != (host, pid):
            # The record is an earlier holder's (written by a version that did not record
            # the owner with the lock): the token names the live one.
            return holder.model_copy(update={"host": host, "pid": pid})
        return holder

    def stages(self) -> list[str]:
        """See :meth:`Store.stages`: the stages set, less those with no data left."""
        names = sorted(n.decode(errors="replace") for n in self.client.smembers(f"{self.prefix}:stages"))
        names = [n for n in names if is_stage_name(n)]  # a value put there by others: ignored
        return [n for n in names if self.client.exists(self.key(n, "state"), self.key(n, "journal"),
                                                        self.key(n, "snapshot"), self.key(n, "gone"))]

    # -- state -----------------------------------------------------------------------------------

    def write_state(self, stage: str, data: bytes) -> None:
        """Write the state with optimistic locking on ``meta.version``; refresh the TTLs."""
        try:
            status = load_json(data).get("status")
        except ValueError:
            status = None
        ttl = self.ttls["completed" if status == Status.COMPLETED.value else
                        "failed" if status == Status.FAILED.value else "active"]
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            self._write_state(stage, data, ttl)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            # The journal is the record; the readable state is refreshed at the next write.
            logger.warning("Stage %s: state not written, Redis unreachable (%s).", stage, exc)

    def _write_state(self, stage: str, data: bytes, ttl: int) -> None:
        first = [self.key(stage, p) for p in ("lock", "state", "meta", "journal")]  # state.lua's
        keys = first + [k for k in self.stage_keys(stage) if k not in first]
        written = self._state(keys=keys, args=[self._tokens.get(stage) or "", compress(data), ttl])
        if written == -1:  # the stage's keys vanished under its writer
            writer = self._writers.get(stage)
            raise self.stage_gone(stage, writer.seq - writer.backlog if writer is not None else 0)
        if not written:
            logger.error("Stage %s: not writing the state, another process holds the stage now.",
                         stage)

    def read_state(self, stage: str) -> tuple[CheckpointState | None, list[str]]:
        """See :meth:`Store.read_state`."""
        raw = self.client.get(self.key(stage, "state"))
        if raw is None:
            return None, []
        try:
            return CheckpointState.model_validate_json(decompress(raw)), []
        except (ValidationError, ValueError) as exc:
            return None, [f"the state in Redis is damaged ({exc})"]

    # -- journal and snapshots ----------------------------------------------------------------------

    def load(self, stage: str) -> Loaded:
        """See :meth:`Store.load`: snapshot, meta and journal read in one transaction;
        ``generation`` is the last sequence number, ``good_bytes`` a record count."""
        blob, meta, records, has_state, gone, set_aside = _read_stage(
            self.client, lambda part: self.key(stage, part))
        try:
            meta = {k.decode(): int(v) for k, v in meta.items()}
            if any(v < 0 for v in meta.values()):
                raise ValueError("a negative count")
        except ValueError as exc:
            raise CorruptCheckpointError(
                f"The meta hash of stage {stage!r} in Redis ({self.key(stage, 'meta')}) is "
                f"damaged ({exc}): it was not written by this package. Nothing was changed; "
                f"reset the stage to start over.") from None
        problems: list[str] = []
        header, done, snap_bytes = None, DoneSet(), 0
        if blob is not None:
            try:
                header, done = decode_snapshot(decompress(blob))
                if header["state"].get("stage") != stage:
                    raise ValueError(f"it belongs to stage {header['state'].get('stage')!r}")
                snap_bytes = len(blob)
            except ValueError as exc:
                header, done = None, DoneSet()
                if meta.get("base", 0):
                    raise CorruptCheckpointError(
                        f"The snapshot of stage {stage!r} in Redis is damaged ({exc}) and the "
                        f"journal before it was trimmed, so the stage cannot be rebuilt. Reset "
                        f"the stage to start over.") from None
                problems.append(f"the snapshot in Redis is damaged ({exc}); replaying the journal")
        if blob is None and meta.get("base", 0):
            raise CorruptCheckpointError(
                f"The snapshot of stage {stage!r} is missing from Redis and the journal before it "
                f"was trimmed, so the stage cannot be rebuilt. Reset the stage to start over.")
        # Every group appended is in the journal, covered by the snapshot (base) or set aside
        # as unreadable: fewer means groups were deleted or evicted behind the store, and
        # the units they finished would be redone (their outputs written twice) unnoticed.
        missing = meta.get("seq", 0) - meta.get("base", 0) - len(records) - set_aside
        if missing > 0 and not problems:  # (a damaged snapshot is reported already)
            raise CorruptCheckpointError(
                f"The journal of stage {stage!r} in Redis ({self.key(stage, 'journal')}) lacks "
                f"{missing} of the {meta['seq']} group(s) recorded: they were deleted or evicted "
                f"(a maxmemory-policy other than noeviction, or keys deleted by hand). The units "
                f"they finished are not known, so the stage is not resumed (it would redo them "
                f"and write their outputs again). Nothing was changed; reset the stage to start "
                f"it over (scrapy-checkpoint --backend URL reset {stage}), and set "
                f"maxmemory-policy noeviction.")
        loaded = Loaded(header, done, 0, snap_bytes, exists=bool(blob or records or has_state),
                        problems=problems, requests=self.request_reader(stage))
        if gone is not None and not loaded.exists:
            loaded.vanished = self.vanished_message(stage, gone)
            problems.append(loaded.vanished)
        good = 0
        for record in records:
            try:
                loaded.payloads.append(decode_group(record))
            except (ValueError, KeyError, TypeError, struct.error) as exc:
                problems.append(f"unreadable journal record {meta.get('base', 0) + good} ({exc}); "
                                f"later records ignored")
                break
            good += 1
        loaded.good_bytes, loaded.generation = good, meta.get("seq", 0)
        loaded.dropped_bytes = sum(len(r) for r in records[good:])
        _check_journal_start(loaded, stage, self.key(stage, "journal"))
        return loaded

    def stage_gone(self, stage: str, committed: int) -> CheckpointLostError:
        """The stage's keys vanished under its writer after ``committed`` journal groups:
        leave a marker (``p:s:gone``) so that the next run does not start it from zero
        silently (see :attr:`Loaded.vanished`), and return the error the job stops with."""
        owner = Owner.current()
        if committed > 0:
            with contextlib.suppress(Exception):  # the error below is what matters
                marker = json.dumps({"at": utcnow().isoformat(timespec="seconds"),
                                     "host": owner.host, "pid": owner.pid, "groups": committed})
                self.client.pipeline().set(self.key(stage, "gone"), marker, nx=True).sadd(
                    f"{self.prefix}:stages", stage).execute()
        return CheckpointLostError(
            f"Redis at {self.location} no longer holds stage {stage!r}: its keys are gone "
            f"(Redis was restarted without its data, or flushed or replaced), with the "
            f"{committed} journal group(s) this stage had recorded. This run stops: nothing "
            f"more can be recorded. The next run will not start the stage from zero silently; "
            f"run Redis with persistence (appendonly yes) to keep checkpoints across restarts.")

    def vanished_message(self, stage: str, raw: bytes) -> str:
        """Why ``stage`` is not started from zero, from a marker ``raw`` left by
        :meth:`stage_gone`."""
        try:
            info = load_json(raw)
            when = f" at {info['at']}, while pid {int(info['pid'])} on host {info['host']} was " \
                   f"running it, after {int(info['groups'])} journal group(s)"
        except (ValueError, KeyError, TypeError):
            when = ""
        return (f"Redis at {self.location} lost the checkpoint of stage {stage!r}{when} (Redis "
                f"was restarted without its data, or flushed or replaced). How much of the stage "
                f"was done is not known, so it is not started from zero silently. To start it "
                f"over: scrapy-checkpoint --backend URL reset {stage} (in a crawl: -s "
                f"CHECKPOINT_RESET=True). Run Redis with persistence (appendonly yes) to keep "
                f"checkpoints across restarts.")

    def set_aside(self, stage: str, loaded: Loaded) -> None:
        """See :meth:`Store.set_aside`: the unreadable records move to the ``corrupt``
        list, in one transaction."""
        journal = self.key(stage, "journal")
        tail = self.client.lrange(journal, loaded.good_bytes, -1)
        if tail:
            pipe = self.client.pipeline().rpush(self.key(stage, "corrupt"), *tail)
            if loaded.good_bytes:
                pipe.ltrim(journal, 0, loaded.good_bytes - 1)
            else:
                pipe.delete(journal)  # LTRIM 0 -1 would keep everything
            pipe.execute()

    def open_segment(self, stage: str, gen: int, *, truncate_at: int | None,
                     buffered: bool) -> RedisJournalWriter:
        """See :meth:`Store.open_segment`. One journal list: a compaction keeps the writer and notes
        how many records the coming snapshot covers. CheckpointError unless the lock is ours."""
        token = self._tokens.get(stage)
        if token is None:
            raise CheckpointError(f"Stage {stage!r} is not locked by this process.")
        previous = self._writers.get(stage)
        if previous is not None and gen > 0 and truncate_at is None:
            # A compaction: the snapshot covers every record in Redis. While records wait in
            # the backlog (Redis away) it would cover records not yet there: skip it then.
            if not previous.backlog:
                with self.client.pipeline(transaction=True) as pipe:  # one consistent read
                    base, length, aside = pipe.hget(self.key(stage, "meta"), "base").llen(
                        self.key(stage, "journal")).llen(self.key(stage, "corrupt")).execute()
                # It covers every group this writer appended (all in Redis: none waits), also
                # those deleted from the journal behind it (a key deleted or evicted while the
                # stage ran): its state has them, and the snapshot records them again.
                self._rotations[(stage, gen)] = max(int(base or 0) + int(length),
                                                    previous.seq - int(aside))
            previous.size = 0
            writer = previous
        else:  # listed again: a reset under the lock (start(reset=True)) took it off the set
            (seq, rseq), _ = self.client.pipeline(transaction=False).hmget(self.key(
                stage, "meta"), ["seq", "rq"]).sadd(f"{self.prefix}:stages", stage).execute()
            writer = RedisJournalWriter(self, stage, token, int(seq or 0), self.buffer_bytes,
                                        tracked=self._tracked.get(stage), rseq=int(rseq or 0))
            self._freed.pop(stage, None)
        self._writers[stage] = writer
        return writer

    def request_reader(self, stage: str, writer: Any = None) -> RedisRequestReader:
        """See :meth:`Store.request_reader` (``HGET`` of the ``requests`` hash)."""
        return RedisRequestReader(self, stage, writer)

    def stage_snapshot(self, stage: str, gen: int,
                       parts: Sequence[bytes | memoryview]) -> bytes:
        """See :meth:`Store.stage_snapshot`: joined (a Redis value is one string)."""
        return b"".join(parts)

    def discard_snapshot(self, staged: Any) -> None:
        """See :meth:`Store.discard_snapshot`: nothing was made."""

    def write_snapshot(self, stage: str, gen: int, blob: Any,
                       freed: Sequence[int] = ()) -> None:
        """See :meth:`Store.write_snapshot`: installed, and the records it covers trimmed,
        by one script (which fails with LOST_LOCK if the lease was lost). The request
        records ``freed`` at the snapshot before are deleted then (the previous snapshot,
        kept as a fallback, may need those of this one)."""
        waiting = self._freed.setdefault(stage, [])
        waiting.append(list(freed))
        covered = self._rotations.pop((stage, gen), None)
        if covered is None:
            return
        done = _as_holder(self._snapshot, stage, self.location,
                          keys=[self.key(stage, part) for part in
                                ("lock", "journal", "meta", "snapshot", "snapshot:prev")],
                          args=[self._tokens[stage], compress(
                              blob if isinstance(blob, bytes) else b"".join(blob)), covered])
        if done and len(waiting) > 1:
            old = [ref for batch in waiting[:-1] for ref in batch]
            del waiting[:-1]
            key = self.key(stage, "requests")
            with self.client.pipeline(transaction=False) as pipe:
                for start in range(0, len(old), 10_000):
                    pipe.hdel(key, *old[start:start + 10_000])
                pipe.execute()

    def retain(self, stage: str, keep: int) -> None:
        """Redis keeps the newest snapshot and the one before it."""

    def remove(self, stage: str) -> None:
        """See :meth:`Store.remove` (one transaction)."""
        # The caller holds the lock: keep it and the owner record that names it.
        keep = (":lock", ":owner")
        self.client.pipeline().delete(*[k for k in self.stage_keys(stage) if not k.endswith(keep)]
                                      ).srem(f"{self.prefix}:stages", stage).execute()
        self._writers.pop(stage, None)

    def disk_usage(self, stage: str) -> dict[str, int]:
        """See :meth:`Store.disk_usage` (``MEMORY USAGE`` of the keys)."""
        usage = {"journal_bytes": 0, "snapshot_bytes": 0, "state_bytes": 0}
        for part, field in (("journal", "journal_bytes"), ("requests", "journal_bytes"),
                            ("snapshot", "snapshot_bytes"),
                            ("snapshot:prev", "snapshot_bytes"), ("state", "state_bytes")):
            usage[field] += int(self.client.memory_usage(self.key(stage, part)) or 0)
        return usage


__all__ = ["RedisJournalWriter", "RedisLock", "RedisStore", "TrackedUnits", "compress", "decompress",
           "lua_source"]
