"""Error types. Each message tells the user what to do next; none carries a secret."""

from __future__ import annotations

import errno
import re

# The password of a URL's user info (``redis://user:PASSWORD@host``, ``unix://:PASSWORD@/p``,
# also when the scheme lost its colon) and of a ``password=`` query parameter
# (``unix:///run/redis.sock?password=PASSWORD``).
_USERINFO_PASSWORD = re.compile(r"(//[^/@\s:]*:)[^/\s]*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|pass|pwd)=)[^&\s#]*", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every password of a URL in it shown as ``***``: the user-info password
    of any ``scheme://`` URL and the value of a ``password=`` query parameter. Anything a
    message, a log line, a location or a repr shows of a backend URL goes through this.

    >>> redact("redis://app:s3cret@10.0.0.5:6379/0 and unix://:pw@/run/redis.sock")
    'redis://app:***@10.0.0.5:6379/0 and unix://:***@/run/redis.sock'
    """
    return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", text))


class CheckpointError(Exception):
    """Base class for every error this package raises."""


class ConfigError(CheckpointError, ValueError):
    """An option or setting has a value we cannot use."""


class CheckpointLockedError(CheckpointError):
    """Another live process owns the stage."""

    def __init__(self, stage: str, pid: int | None, host: str | None, since: str | None) -> None:
        self.stage, self.pid, self.host, self.since = stage, pid, host, since
        owner = f"pid {pid} on host {host}" if pid is not None else "another process"
        when = f" since {since}" if since else ""
        super().__init__(
            f"Stage {stage!r} is in use by {owner}{when}. Only one process may write a "
            f"stage at a time: wait for that process to finish or stop it, then run again."
        )


class InputChangedError(CheckpointError):
    """The input file differs from the one the checkpoint was made with."""

    def __init__(self, stage: str, path: str, reason: str) -> None:
        self.stage, self.path, self.reason = stage, path, reason
        super().__init__(
            f"Input file {path!r} of stage {stage!r} changed since the checkpoint was made "
            f"({reason}). Resuming would mix two inputs. To start the stage over, reset it "
            f"(CHECKPOINT_RESET=True for a crawl, start(..., reset=True), or "
            f"UnifiedCheckpointManager(dir).reset({stage!r})); to keep the old input, restore "
            f"the file."
        )


_RULES_HINT = "; a CrawlSpider rule removed or changed: put it back in `rules` as it was"


def _rules(problems: dict[str, int]) -> bool:
    return any(what.startswith("CrawlSpider rule") for what in problems)


class UnrestorableRequestsError(CheckpointError):
    """Journaled requests of a crawl need spider methods or classes that are gone."""

    def __init__(self, stage: str, spider: str, problems: dict[str, int]) -> None:
        self.stage, self.problems = stage, problems
        total = sum(problems.values())
        needs = ", ".join(f"{what} ({n} request{'s' if n != 1 else ''})"
                          for what, n in sorted(problems.items()))
        super().__init__(
            f"Stage {stage!r} cannot resume: {total} pending request(s) need what spider "
            f"{spider} no longer has: {needs}. Nothing was fetched. Restore those names (a "
            f"renamed callback: give the method its old name back, or add an alias "
            f"`old_name = new_name` in the spider{_RULES_HINT if _rules(problems) else ''}) "
            f"and run the same command again; or set "
            f"CHECKPOINT_DROP_UNRESTORABLE = True to drop these requests (they are counted as "
            f"lost and the stage ends 'incomplete', never 'completed'); or start over with "
            f"CHECKPOINT_RESET = True."
        )


class CorruptCheckpointError(CheckpointError):
    """No consistent state can be rebuilt from what is on disk."""


class UnreadableCheckpointError(CorruptCheckpointError):
    """A file of the stage cannot be opened (another owner, its mode, a directory or FIFO in
    its place): the stage is not damaged, and nothing was changed."""


class InvalidTransitionError(CheckpointError):
    """A status change the status machine does not allow."""

    def __init__(self, stage: str, old: str, new: str) -> None:
        self.stage, self.old, self.new = stage, old, new
        super().__init__(f"Stage {stage!r} cannot go from {old!r} to {new!r}.")


class CheckpointWriteError(CheckpointError):
    """The checkpoint could not be written: the disk is full, an I/O error, its directory
    was deleted or replaced, or one of its files is a symbolic link (never written
    through). Everything committed before stays; the job must stop."""


class WorkerDiskFullError(CheckpointWriteError):
    """A tracker's worker failed because a disk is full (``ENOSPC``/``EDQUOT``, in its own
    writes): the item is not recorded as failed (it would never run again), no new item
    starts, and the stage is paused so that the next run, once there is space, does it."""


class CheckpointLostError(CheckpointWriteError):
    """The checkpoint itself is gone while the job runs (its directory deleted or replaced,
    a Redis restarted empty): what it had recorded is not there to resume from, and the
    job's outputs hold work the next run does not know of."""


class OutputLostError(CheckpointWriteError):
    """An output a crawl writes (a feed file) was deleted or moved while it ran, or is found
    shorter than its committed length when the stage resumes: items of finished requests are
    missing from it. The checkpoint itself is intact; the stage is not carried on to an end
    that would say 'completed' over those missing items."""


class LeaseLostError(CheckpointWriteError, CheckpointLockedError):
    """The running job no longer holds its stage: its lease expired (the process was frozen,
    or the store unreachable, past the lease) or its lock was deleted behind it. Nothing
    more can be written; what was committed before stays. Made by :func:`lease_lost`."""

    def __init__(self, message: str, stage: str | None = None) -> None:
        CheckpointError.__init__(self, message)
        self.stage, self.pid, self.host, self.since = stage, None, None, None  # type: ignore[assignment]


def lease_lost(stage: str, location: str) -> LeaseLostError:
    """The error of a job that lost its lock on ``stage`` in ``location`` while running."""
    return LeaseLostError(
        f"This run lost its lock on stage {stage!r} in {location}: the lease expired (the "
        f"process was frozen, or the store unreachable, for longer than the lease) or the "
        f"lock key was deleted by something else. Another process may own the stage now, "
        f"so nothing more is recorded by this run; what it recorded before stays. Make sure "
        f"no other process runs this stage, then run the same command again to resume from "
        f"the last group recorded.", stage)


class UnknownItemError(CheckpointError, LookupError):
    """``item_id(item)`` was given an item the checkpoint never saw yielded."""

    def __init__(self, item: object) -> None:
        super().__init__(
            f"scrapy_checkpoint.item_id() does not know this {type(item).__name__} item: it "
            f"knows the items a callback, an errback or start() yielded, while the item "
            f"pipelines process them, in a crawl with the checkpoint on (the add-on, or "
            f"CheckpointItemPipeline in ITEM_PIPELINES with CHECKPOINT_ENABLED = True). Call it "
            f"in process_item() on the item the spider yielded, before any pipeline replaces "
            f"it with another object (keep the id in a field if a pipeline must)."
        )


#: sqlite3's error code of "database or disk is full".
SQLITE_FULL = 13


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc``, or an exception it was raised from, is a full disk or quota: an
    ``OSError`` (``ENOSPC``, ``EDQUOT``) or SQLite's ``database or disk is full``."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if getattr(seen, "sqlite_errorcode", None) == SQLITE_FULL:
            return True
        seen = seen.__cause__ or seen.__context__
    return False
