"""UnifiedCheckpointManager: every stage of a pipeline in one directory."""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

from .checkpoint import EnhancedCheckpoint, describe_lost
from .clock import utcnow
from .config import CheckpointConfig
from .errors import CheckpointLockedError, CheckpointWriteError, ConfigError, CorruptCheckpointError
from .metrics import format_duration, format_percent, printable
from .shared import OVER, Worker, open_shared, shared_stage_of, sub_stage_name, supports_shared
from .state import CheckpointState, Owner, Status
from .stores import open_backend
from .stores.base import Store, check_stage_name
from .stores.file import atomic_write, is_checkpoint_file
from .tracker import AsyncCheckpointTracker
from .view import StageView, read_stage

logger = logging.getLogger("scrapy_checkpoint")

EXPORT_SCHEMA_VERSION = 1


def write_export(path: str | os.PathLike[str], text: str, store: Store | None = None) -> None:
    """Write an export (``text``) to ``path`` whole or not at all: through a temp file
    renamed over it, so a full disk or a crash keeps the previous export as it was. Never
    through a symbolic link to a file (a link planted at the path would make it overwrite
    the file it points to): CheckpointWriteError, nothing written. A FIFO or a device (also
    behind a link: /dev/stdout) is written as is. Never over a file of ``store``'s own (a
    file store's state, backup or lock file of a stage, or anything in a stage's data
    directory): CheckpointWriteError, nothing written.
    Raises OSError as writing does."""
    _refuse_checkpoint_file(path, store)
    try:
        mode: int | None = os.stat(path).st_mode  # what a link leads to (/dev/stdout: a pipe)
    except FileNotFoundError:
        mode = None
    if (mode is None or stat.S_ISREG(mode)) and os.path.islink(path):
        raise CheckpointWriteError(
            f"Cannot write the export to {os.fspath(path)}: it is a symbolic link (to "
            f"{os.readlink(path)}), and an export is never written through a link (it could "
            f"overwrite a file elsewhere). Nothing was written. Give the path of a file, or "
            f"'-' for standard output.")
    if mode is not None and not stat.S_ISREG(mode):  # a FIFO, a device, a directory
        with open(path, "w") as f:
            f.write(text)
        return
    atomic_write(Path(path), text.encode())


def _refuse_checkpoint_file(path: str | os.PathLike[str], store: Store | None) -> None:
    """CheckpointWriteError if ``path`` is (or would be) one of ``store``'s own files: an
    export written there would replace recorded progress (a journal segment, a state file)."""
    if store is not None and is_checkpoint_file(store, path):
        raise CheckpointWriteError(
            f"Cannot write the export to {os.fspath(path)}: it is a file of the checkpoint in "
            f"{store.location}, and an export never replaces recorded progress. Nothing was "
            f"written. Give a path outside the stages' files, or '-' for standard output.")


class UnifiedCheckpointManager:
    """The checkpoints of a multi-stage pipeline.

    >>> manager = UnifiedCheckpointManager("data/checkpoints")       # doctest: +SKIP
    >>> async with manager.tracker("stage2_parse") as tracker: ...   # doctest: +SKIP
    >>> print(manager.report())                                      # doctest: +SKIP
    """

    def __init__(self, checkpoint_dir: str | os.PathLike[str] = "checkpoints", *,
                 config: CheckpointConfig | None = None, backend: str | None = None,
                 store: Store | None = None, **options: Any) -> None:
        self.config = CheckpointConfig.from_options(config, **options)
        self.store: Store = store if store is not None else open_backend(backend, checkpoint_dir)
        #: Where the stages live (a directory, or a Redis URL).
        self.directory = self.store.location
        self._checkpoints: dict[str, EnhancedCheckpoint] = {}

    def get_checkpoint(self, stage: str, **options: Any) -> EnhancedCheckpoint:
        """The stage's checkpoint (created on first use; call ``start()`` on it)."""
        check_stage_name(stage)
        cp = self._checkpoints.get(stage)
        if cp is None or (cp.closed):
            config = CheckpointConfig.from_options(self.config, **options)
            cp = EnhancedCheckpoint(stage=stage, config=config, store=self.store)
            self._checkpoints[stage] = cp
        return cp

    def tracker(self, stage: str, **options: Any) -> AsyncCheckpointTracker[Any]:
        """An :class:`AsyncCheckpointTracker` for ``stage`` in this manager's store;
        ``options`` are checkpoint options (over the manager's) and tracker arguments."""
        config = CheckpointConfig.from_options(self.config, **{
            k: v for k, v in options.items() if k in CheckpointConfig.model_fields})
        rest = {k: v for k, v in options.items() if k not in CheckpointConfig.model_fields}
        return AsyncCheckpointTracker(stage=stage, config=config, store=self.store, **rest)

    def stages(self) -> list[str]:
        """Names of every stage in the store, sorted."""
        return self.store.stages()

    def shared_stages(self) -> dict[str, list[Worker]]:
        """Stages shared by several workers (``CHECKPOINT_SHARED``, Redis and PostgreSQL
        stores): their workers, oldest first, with ``alive`` and the last heartbeat."""
        if not supports_shared(self.store):
            return {}
        parents = sorted({parent for name in self.stages()
                          if (parent := (shared_stage_of(name) or ("", ""))[0])})
        out = {}
        for parent in parents:
            shared = open_shared(self.store, parent, worker="-")
            workers = shared.workers()
            if workers or shared.lost() is not None:  # lost: its records went with its keys
                out[parent] = workers
        return out

    def shared_summary(self, stage: str, workers: list[Worker]) -> dict[str, Any]:
        """One shared stage as a whole, from its workers' records and sub-stages.

        Returns ``{"status", "done", "pending", "lost", "unreadable"}``: ``status`` is
        ``active`` while a worker is alive or has not left, then ``incomplete`` when a
        sub-stage lost work (``lost``: units by reason, summed over the sub-stages) or ended
        ``incomplete``/``failed``, else ``completed``; ``unreadable`` lists sub-stages that
        could not be read (the stage is then not called completed either). ``damaged``
        (with ``damage``, what to do) when the store lost the records of a worker under it
        (see :meth:`SharedStage.lost`); ``damage`` is None otherwise.
        """
        done, pending = sum(w.done for w in workers), sum(w.pending for w in workers)
        lost: dict[str, int] = {}
        unreadable: list[str] = []
        ended_badly = False
        for w in workers:
            name = sub_stage_name(stage, w.id)
            try:
                state = self.read(name).state
            except (CorruptCheckpointError, FileNotFoundError, ValueError):
                unreadable.append(name)
                continue
            for reason, n in state.lost.items():
                lost[reason] = lost.get(reason, 0) + n
            ended_badly |= state.status in (Status.INCOMPLETE, Status.FAILED)
        damage = open_shared(self.store, stage, worker="-").lost()
        if damage is not None:
            status = "damaged"
        elif not all(w.status in OVER and not w.alive for w in workers):
            status = "active"
        elif ended_badly or unreadable or any(lost.values()):
            status = "incomplete"
        else:
            status = "completed"
        return {"status": status, "done": done, "pending": pending, "lost": lost,
                "unreadable": unreadable, "damage": damage}

    def read(self, stage: str) -> StageView:
        """A read-only view of ``stage`` (see :func:`read_stage`)."""
        return read_stage(self.store, check_stage_name(stage))

    def list_checkpoints(self) -> list[CheckpointState]:
        """The state of every stage, sorted by name (damaged ones are logged and left out)."""
        states = []
        for stage in self.stages():
            try:
                states.append(self.read(stage).state)
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                logger.warning("Stage %s cannot be read: %s", stage, exc)
        return states

    def reset(self, stage: str) -> None:
        """Delete a stage so its next start begins from nothing.

        A crash in the middle leaves the stage whole or deleted, never an older state (see
        :meth:`Store.remove`). Raises :class:`CheckpointLockedError` if a live process
        owns it, :class:`CheckpointWriteError` (deleting nothing) if a file store's stage
        directory is a symbolic link, or if a file cannot be changed (a read-only file
        system, a directory this user may not write).
        """
        check_stage_name(stage)
        parent = shared_stage_of(stage)
        if parent is not None and parent[0] in self.shared_stages():
            raise ConfigError(f"{stage!r} is worker {parent[1]}'s part of shared stage "
                              f"{parent[0]!r}: reset the shared stage as a whole ({parent[0]!r}); "
                              f"alone, its claims would stay and its work be lost.")
        try:
            lock = self.store.lock(stage, Owner.current())
            try:
                self.store.remove(stage)
            finally:
                lock.release(unlink=True)
        except OSError as exc:  # a read-only file system, a directory this user may not change
            raise CheckpointWriteError(
                f"Cannot reset stage {stage!r}: {exc.filename or self.directory}: "
                f"{exc.strerror or exc}. The stage is left whole (or, if it was being deleted, "
                f"deleted), never in between; make {self.directory} writable (remount a read-only "
                f"file system, or fix its permissions), then run the command again.") from None
        logger.info("Stage %s reset.", stage)

    def requeue_failed(self, stage: str) -> int:
        """Make the stage's failed units pending again, so its next run does them again
        (as ``start(retry_failed=True)`` or ``CHECKPOINT_RETRY_FAILED`` would): a journaled
        change made under the stage's lock, that takes them off the done-set and the
        counters (processed and failed) and restores what redoes them (a crawl's request).
        The status is left as it is; a completed crawl stage with units pending resumes
        them. Returns how many units were requeued (0: none had failed).

        Raises :class:`FileNotFoundError` (no such stage), :class:`CheckpointLockedError`
        (a live process owns it: nothing written), :class:`ConfigError` (an invalid name, or
        a worker's sub-stage of a shared stage), :class:`CorruptCheckpointError`.
        """
        check_stage_name(stage)
        parent = shared_stage_of(stage)
        if parent is not None and parent[0] in self.shared_stages():
            raise ConfigError(f"{stage!r} is a worker's part of a shared stage: its failed "
                              f"units cannot be requeued alone.")
        if stage not in self.stages():
            raise FileNotFoundError(f"No checkpoint for stage {stage!r} in {self.directory}.")
        cp = EnhancedCheckpoint(stage=stage, config=self.config, store=self.store)
        cp.open()
        try:
            codes = list(cp.live.failed_units)
            n = cp.retry_units(codes)
        except BaseException:
            cp.abandon()
            raise
        try:
            cp.close()
        except CheckpointWriteError as exc:  # a full disk: was the requeue itself recorded?
            live = self.read(stage)._live
            if not n or live is None or any(code in live.failed_units for code in codes):
                raise
            logger.warning("Stage %s: the requeue is recorded in its journal; what is written "
                           "after it (its snapshot, its state file) is not: %s. Free the space "
                           "before its next run.", stage, str(exc).split(". ")[0])
        if n:
            logger.info("Stage %s: %d failed unit(s) requeued.", stage, n)
        return n

    def reset_shared(self, stage: str) -> list[str]:
        """Delete a shared stage: its claims, its workers and their sub-stages. Raises
        :class:`CheckpointLockedError` while one of its workers is alive."""
        if not supports_shared(self.store):
            raise FileNotFoundError(f"No shared stage {stage!r} in {self.store.location}.")
        shared = open_shared(self.store, check_stage_name(stage), worker="-")
        for w in shared.workers():
            if w.alive:
                raise CheckpointLockedError(stage, w.pid, w.host, None)
        removed = shared.reset()
        logger.info("Shared stage %s reset (%d worker sub-stages).", stage, len(removed))
        return removed

    def reset_all(self) -> list[str]:
        """Reset every stage no live process owns; return the names reset."""
        reset = []
        shared = self.shared_stages()
        for stage in shared:
            try:
                reset += self.reset_shared(stage)
            except CheckpointLockedError as exc:
                logger.warning("%s", exc)
        for stage in self.stages():
            if (shared_stage_of(stage) or ("",))[0] in shared:
                continue
            try:
                self.reset(stage)
            except (CheckpointLockedError, CheckpointWriteError, CorruptCheckpointError) as exc:
                logger.warning("%s", exc)  # e.g. its lock file is a directory: left as it is
            else:
                reset.append(stage)
        return reset

    def cleanup(self, older_than_days: float | None = None, *, dry_run: bool = False
                ) -> dict[str, int]:
        """Remove stages not updated for ``older_than_days`` (default: the ``ttl_hours``
        option) that no live process owns. Returns ``{stage: bytes freed}``. Only stages
        are removed (see :meth:`Store.stages`); ConfigError for a negative age."""
        if older_than_days is not None and not older_than_days >= 0:
            raise ConfigError(f"older_than_days must be 0 or more, not {older_than_days!r}.")
        try:
            age = (timedelta(days=older_than_days) if older_than_days is not None
                   else timedelta(hours=self.config.ttl_hours))
            cutoff = utcnow() - age
        except OverflowError:  # an age beyond any date (inf, 1e400, 1e9 days): none is that old
            return {}
        removed: dict[str, int] = {}
        shared = self.shared_stages()
        for stage in self.stages():
            if (shared_stage_of(stage) or ("",))[0] in shared:
                continue  # part of a shared stage: its keys expire by TTL, or reset the stage
            state, _ = self.store.read_state(stage)
            if state is None:
                try:
                    state = self.read(stage).state
                except (CorruptCheckpointError, FileNotFoundError):
                    continue
            if state.updated_at >= cutoff or self.store.live_owner(stage) is not None:
                continue
            freed = sum(self.store.disk_usage(stage).values())
            if not dry_run:
                try:
                    self.reset(stage)
                except CheckpointLockedError:
                    continue
                except (CheckpointWriteError, CorruptCheckpointError) as exc:
                    logger.warning("%s", exc)
                    continue
            removed[stage] = freed
        return removed

    def export(self, path: str | os.PathLike[str] | None = None) -> dict[str, Any]:
        """Every stage's state as one JSON document (written to ``path`` if given)."""
        stages = []
        for stage in self.stages():
            try:
                stages.append(self.read(stage).to_dict())
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                stages.append({"stage": stage, "error": str(exc)})
        doc = {"schema_version": EXPORT_SCHEMA_VERSION, "checkpoint_dir": str(self.directory),
               "exported_at": utcnow().isoformat(), "stages": stages}
        if path is not None:
            write_export(path, json.dumps(doc, indent=2) + "\n", self.store)
        return doc

    def report(self) -> str:
        """The multi-stage report: a block per stage, then the whole pipeline."""
        lines = [f"Checkpoint report for {self.directory}", ""]
        counts = {"active": 0, "completed": 0, "incomplete": 0, "failed": 0, "paused": 0,
                  "crashed": 0}
        total_known = processed_known = 0
        estimated = False
        for stage in self.stages():
            try:
                view = self.read(stage)
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                lines += [f"{stage}  [damaged]", f"  {exc}", ""]
                continue
            s, m = view.state, view.metrics()
            status = view.display_status
            if status == "crashed":
                counts["crashed"] += 1
            elif s.status in (Status.RUNNING, Status.RECOVERING, Status.INITIALIZED):
                counts["active"] += 1
            elif s.status.value in counts:
                counts[s.status.value] += 1
            if m.total:
                total_known += m.total
                processed_known += min(m.processed, m.total)
                estimated = estimated or m.estimated
            rate = m.success_rate
            lines += [
                f"{stage}  [{status}]",
                f"  {m.progress_line()}",
                f"  processed {m.processed}, successful {m.successful}, failed {m.failed}, "
                f"skipped {m.skipped}; success rate "
                f"{'n/a' if rate is None else f'{rate:.1f}%'}; updated {s.updated_at:%Y-%m-%d %H:%M:%S} UTC",
            ]
            items = view.items
            if items["scraped"] or items["dropped"] or items["errors"]:
                lines.append(f"  items {items['scraped']} scraped, {items['dropped']} dropped, "
                             f"{items['errors']} errors (all runs)")
            if s.lost:
                lines.append(f"  lost {sum(s.lost.values())} ({describe_lost(s.lost)})")
            if s.error_message:
                lines.append(f"  last error ({s.error_count} in all): "
                             f"{printable(s.error_message)}")
            lines += [f"  warning: {p}" for p in view.problems]
            lines.append("")
        about = "~" if estimated else ""  # a crawl's total still an uncertain estimate
        pct = (about + format_percent(100.0 * processed_known / total_known) if total_known
               else "n/a")
        lines.append(
            f"Overall: {pct} ({processed_known}/{about}{total_known} of known work) | "
            f"active {counts['active']} | completed {counts['completed']} | "
            + (f"incomplete {counts['incomplete']} | " if counts["incomplete"] else "")
            + f"failed {counts['failed']} | paused {counts['paused']} | crashed {counts['crashed']}"
        )
        return "\n".join(lines)


__all__ = ["StageView", "UnifiedCheckpointManager", "format_duration", "read_stage"]
