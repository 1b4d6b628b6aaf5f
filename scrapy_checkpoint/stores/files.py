"""File-system steps of the file store that keep it inside its directory: files opened
without following a link, temp files with unpredictable names made exclusively, the
mode a user gave a file kept, the stage's directory watched for deletion or
replacement, and what a crash leaves behind recognised and removed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
from pathlib import Path

from ..errors import CheckpointLostError, CheckpointWriteError
from ..journal.frames import SEGMENT_MAGIC
from ..journal.snapshot import SNAPSHOT_MAGICS

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Temp and trash names of stage ``s``'s files, removed by the next lock of ``s``.
_TEMP_RE = r"\.{stage}\.json(?:\.bak)?\.[0-9a-f]+\.tmp|\.{stage}\.removing-[0-9a-f]+"
_DATA_TEMP_RE = re.compile(r"\.snapshot-\d{8}\.bin\.[0-9a-f]+\.tmp")


def open_nofollow(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` that never follows a symbolic link at ``path`` itself: a link raises
    CheckpointWriteError (a checkpoint writing through a planted link could overwrite any
    file the job may write). Other errors are OSError."""
    try:
        return os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise link_error(path) from None
        raise


def link_error(path: str | os.PathLike[str]) -> CheckpointWriteError:
    """The error for a checkpoint file (or the stage's directory) that is a link."""
    return CheckpointWriteError(
        f"{os.fspath(path)} is a symbolic link. A checkpoint's files are never written or "
        f"deleted through a link (it could change a file outside the checkpoint directory): "
        f"remove the link (or move the real files to its place) and run again.")


def regular_mode(path: Path) -> int:
    """``path``'s ``st_mode`` without following a link; CheckpointWriteError for a link,
    FileNotFoundError if there is nothing."""
    mode = os.lstat(path).st_mode
    if stat.S_ISLNK(mode):
        raise link_error(path)
    return mode


def create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """Create ``.<name>.<random hex>.tmp`` beside ``path`` (O_EXCL, no link followed):
    nobody can plant a link at a name they cannot guess. Returns its fd and path."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.urandom(8).hex()}.tmp")
        try:
            return open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), tmp
        except FileExistsError:
            continue


def link_temp(path: Path, backup: Path) -> Path:
    """Hard-link ``path`` (not a link's target) to an unpredictable temp name beside ``backup``."""
    while True:
        tmp = backup.with_name(f".{backup.name}.{os.urandom(8).hex()}.tmp")
        try:
            os.link(path, tmp, follow_symlinks=False)
            return tmp
        except FileExistsError:
            continue


def unlink_quietly(path: Path) -> None:
    """Delete ``path`` (a link itself, never its target); errors are ignored."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def dir_id(path: str | os.PathLike[str]) -> tuple[int, int]:
    """``(st_dev, st_ino)`` of a directory: which directory a path names now."""
    info = os.stat(path)
    return info.st_dev, info.st_ino


def is_data_dir(path: Path, stage: str, gen_re: re.Pattern[str]) -> bool:
    """A directory is ``stage``'s data only if a snapshot or journal segment in it starts
    with its magic and names ``stage`` (a user folder holding files named like them,
    or a copy of another stage's, is left alone). ``gen_re`` matches their file names."""
    try:
        names = sorted(p.name for p in path.iterdir())
    except OSError:
        return False
    needle = f'"stage":"{stage}"'.encode()
    for name in names:
        m = gen_re.match(name)
        head = read_head(path / name, 4096) if m else None
        if head is None:
            continue
        magics = (SEGMENT_MAGIC,) if m and m.group(1) == "journal" else SNAPSHOT_MAGICS
        if head.startswith(magics) and needle in head.replace(b'"stage": "', b'"stage":"'):
            return True
    return False


#: The names a stage's data directory holds: segments, snapshots, their damaged bytes kept
#: aside (``*.corrupt``) and snapshot temp files.
_DATA_FILE_RE = re.compile(r"(?:snapshot|journal)-\d{8}\.(?:bin|log)(?:\..*\.corrupt)?"
                           r"|\.snapshot-\d{8}\.bin\.[0-9a-f]+\.tmp")


def check_removable(data: Path, stage: str) -> None:
    """Raise CheckpointWriteError, before anything of the stage is deleted, unless ``data``
    (its data directory) is absent or a directory holding only the stage's files: a link,
    a user's file in its place or a folder with files of the user's own is never deleted."""
    if data.is_symlink():
        raise link_error(data)
    try:
        names = [entry.name for entry in os.scandir(data)]
    except FileNotFoundError:
        return
    except NotADirectoryError:
        names = None
    if names is None or any(not _DATA_FILE_RE.fullmatch(name) for name in names):
        what = ("is a file, not the stage's data directory" if names is None else
                "holds files that are not the checkpoint's (" + ", ".join(
                    sorted(n for n in names if not _DATA_FILE_RE.fullmatch(n))[:5]) + ")")
        raise CheckpointWriteError(
            f"{data} {what}: stage {stage!r} is not reset, and nothing was deleted. Move "
            f"{'it' if names is None else 'them'} out of the checkpoint directory, then reset "
            f"the stage again.")


def remove_leftovers(directory: Path, data_dir: Path, stage: str) -> None:
    """Delete what a crash may leave of ``stage`` besides its files: temp files of
    atomic writes and a data directory :meth:`remove` had set apart (the lock is held)."""
    ours = re.compile(_TEMP_RE.format(stage=re.escape(stage)))
    for place, pattern in ((directory, ours), (data_dir, _DATA_TEMP_RE)):
        if place.is_symlink():
            continue
        with contextlib.suppress(OSError):
            for entry in os.scandir(place):
                if not pattern.fullmatch(entry.name):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    unlink_quietly(Path(entry.path))


class DataDirs:
    """Which directory each stage a store writes keeps its journal in (by ``st_dev`` and
    ``st_ino``), so that a job notices it deleted or replaced at its next write and never
    recreates it; and the journal segments it creates."""

    def __init__(self) -> None:
        self._ids: dict[str, tuple[int, int]] = {}
        #: The lock file each stage was opened under and its identity (see :meth:`lock_of`).
        self._locks: dict[str, tuple[Path, tuple[int, int]]] = {}
        #: The segment made last per stage: (path, identity), to make again after a failure.
        self._made: dict[str, tuple[Path, tuple[int, int]]] = {}

    def is_open(self, stage: str) -> bool:
        """True once :meth:`open` noted ``stage``'s directory (until :meth:`forget`)."""
        return stage in self._ids

    def open(self, stage: str, path: Path) -> None:
        """Make ``stage``'s data directory ``path`` if needed (not its parent: the lock made
        it) and note which directory it is. CheckpointWriteError if it is a link."""
        if path.is_symlink():
            raise link_error(path)
        path.mkdir(exist_ok=True)
        self._ids[stage] = dir_id(path)
        lock = path.parent / f"{path.name}.lock"  # held by this process (opened under it)
        with contextlib.suppress(FileNotFoundError):
            self._locks[stage] = (lock, dir_id(lock))

    def lock_of(self, stage: str) -> tuple[Path, tuple[int, int]] | None:
        """``stage``'s lock file and the identity it had when :meth:`open` noted the stage
        (its writer holds that file's lock), for :func:`check_lock`."""
        return self._locks.get(stage)

    def forget(self, stage: str) -> None:
        """``stage``'s directory is removed on purpose (a reset)."""
        self._ids.pop(stage, None)
        self._locks.pop(stage, None)

    def check(self, stage: str, path: Path) -> None:
        """Raise CheckpointWriteError if ``path`` is not the directory :meth:`open` noted
        (deleted, or replaced by another) while this process writes the stage."""
        expected = self._ids.get(stage)
        if expected is None:
            return
        try:
            same = dir_id(path) == expected
        except FileNotFoundError:
            same = False
        if not same:
            raise directory_lost(path)
        check_lock(self._locks.get(stage))

    def create_segment(self, stage: str, path: Path, previous: Path) -> None:
        """Create the segment ``path`` (empty) exclusively, with the mode of ``previous``,
        in the stage's noted directory. One made here before whose header could not be
        written (a full disk) is made again; any other file in its place is refused
        (FileExistsError)."""
        self.check(stage, path.parent)
        mode = mode_of(previous)
        made = self._made.get(stage)
        if made is not None and made[0] == path:
            with contextlib.suppress(OSError):
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) == made[1]:
                    path.unlink()
        fd = open_nofollow(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            info = os.fstat(fd)
            self._made[stage] = (path, (info.st_dev, info.st_ino))
            os.fchmod(fd, mode)  # exactly the mode before, whatever the umask
        finally:
            os.close(fd)


def directory_lost(data_dir: Path, segment: Path | None = None) -> CheckpointLostError:
    """The error a writer stops with when the stage's data directory ``data_dir`` (named
    after the stage) was deleted or replaced under it, found by the directory's identity or
    by its open ``segment`` no longer being linked there: one message for both."""
    gone = f": its journal segment {segment} is no longer in it" if segment is not None else ""
    return CheckpointLostError(
        f"The checkpoint directory of stage {data_dir.name!r} ({data_dir}) was deleted or "
        f"replaced while the job ran{gone}, so nothing more can be recorded (and nothing is "
        f"recreated). Put the directory back to resume from it; {without(data_dir)}")


def check_lock(lock: tuple[Path, tuple[int, int]] | None) -> None:
    """Raise CheckpointWriteError if the lock file ``lock`` names (path, identity) is no
    longer the one its writer holds: deleted or replaced while the job ran, another process
    could take the stage and write it too (the lock held is on a file no one else opens)."""
    if lock is None:
        return
    path, identity = lock
    try:
        same = dir_id(path) == identity
    except FileNotFoundError:
        same = False
    if not same:
        raise CheckpointWriteError(
            f"The lock file {path} of stage {path.name[:-5]!r} was deleted or replaced while "
            f"the job ran: another process could take the stage and write it too, so this "
            f"one records nothing more (what it committed is kept). Run the same command "
            f"again to resume, once no other process runs the stage.")


def without(data_dir: Path | str) -> str:
    """The end of the message for a stage whose data directory ``data_dir`` was lost under
    its writer: its state file, if left, makes the next start refuse it until a reset."""
    path = Path(data_dir)
    return (f"without it, the next run starts the stage over, once the stage is reset if its "
            f"state file {path.name}.json is left (it is refused until then): "
            f"scrapy-checkpoint --dir {path.parent} reset {path.name}.")


def mode_of(path: Path) -> int:
    """The permission bits of ``path`` (0o644 if it is not there, or not a regular file):
    what a new file of the stage is given, so files keep the mode the user gave them. A
    link planted in a file's place is not the user's file: its bits (0o777 on Linux) would
    make the checkpoint's next files writable by every user."""
    try:
        info = os.lstat(path)
    except OSError:
        return 0o644
    return stat.S_IMODE(info.st_mode) if stat.S_ISREG(info.st_mode) else 0o644


def read_head(path: Path, size: int) -> bytes | None:
    """The first ``size`` bytes of ``path`` if it is a regular file (a FIFO never blocks)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, size) if stat.S_ISREG(os.fstat(fd).st_mode) else None
    except OSError:
        return None
    finally:
        os.close(fd)
