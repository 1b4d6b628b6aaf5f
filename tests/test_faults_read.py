"""Bad inputs on the read side: every value read back is checked whole before it is used;
files that do not belong are detected, reported and set aside; unreadable files are refused
with one clear error and never cut; Redis values are bounded; ACL denials are named.

Real files, real FIFOs and directories, a real other user (root runs the reader as
``nobody``), a real redis-server of the test's own for the ACL users.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.errors import CheckpointError, ConfigError, CorruptCheckpointError
from scrapy_checkpoint.journal.doneset import DoneSet
from scrapy_checkpoint.journal.frames import SEGMENT_MAGIC, frame
from scrapy_checkpoint.journal.groups import encode_group
from scrapy_checkpoint.journal.snapshot import decode_snapshot, encode_snapshot
from scrapy_checkpoint.stores.base import check_stage_name
from scrapy_checkpoint.stores.file import FileStore
from scrapy_checkpoint.view import read_stage

from .conftest import PYTHON, python_env


def cli(directory: Path | str, *args: str, backend: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    where = ["--backend", backend] if backend else ["--dir", str(directory)]
    return subprocess.run([PYTHON, "-m", "scrapy_checkpoint.cli", *where, *args],
                          capture_output=True, text=True, timeout=900, check=False,
                          stdin=subprocess.DEVNULL, env={**python_env(), "COLUMNS": "200"})


def make_stage(directory: Path, stage: str = "s", n: int = 100, **options: Any) -> None:
    cp = EnhancedCheckpoint(directory, stage, log_every=0, **options)
    cp.start(total_items=n)
    for i in range(n):
        cp.update(processed=1, successful=1, index=i)
    cp.complete()
    cp.close()


def reopen(directory: Path, stage: str = "s") -> EnhancedCheckpoint:
    cp = EnhancedCheckpoint(directory, stage, log_every=0)
    cp.start()
    return cp


def corrupt_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.corrupt"))


def newest_segment(directory: Path, stage: str = "s") -> Path:
    return sorted((directory / stage).glob("journal-*.log"))[-1]


def assert_consistent(cp: EnhancedCheckpoint, n: int) -> None:
    """should_skip agrees with the count, unit by unit."""
    assert len(cp.live.done) == n
    assert sum(cp.should_skip(i) for i in range(n + 10)) == n


# -- 6. every value read back is checked whole ----------------------------------------------

BAD_GROUPS = {
    "counters are strings": {"c": ["x", 0, 0, 0]},
    "a huge counter": {"c": [10 ** 400, 0, 0, 0]},
    "a counter of the wrong length": {"c": [1, 1]},
    "an unknown field": {"zz": 1},
    "an unknown status": {"st": "exploded"},
    "a negative commit time": {"ts": -5.0},
    "a commit time past 2106": {"ts": 1e300},
    "added units of the wrong shape": {"a": [[1]]},
    "a code that is not a uint64": {"rf": [-1]},
    "an init that is not a state": {"init": {"no": "stage"}},
    "an owner that is not an owner": {"own": {"pid": "x"}},
    "output lengths of the wrong type": {"fo": {"/tmp/x": ["a", 1]}},
    "an error of the wrong shape": {"e": "boom"},
}


@pytest.mark.parametrize("fields", BAD_GROUPS.values(), ids=BAD_GROUPS.keys())
def test_a_checksummed_group_with_a_bad_value_ends_replay_like_a_torn_record(
        tmp_path: Path, fields: dict[str, Any]) -> None:
    make_stage(tmp_path, n=3)
    segment = newest_segment(tmp_path)
    good = segment.read_bytes()
    bad = frame(encode_group([], [], fields))
    # A good group after the bad one: it must not be applied either (the journal is a prefix).
    after = frame(encode_group([50], [], {"c": [1, 1, 0, 0], "ts": 1.7e9}))
    with segment.open("ab") as f:
        f.write(bad + after)

    view = read_stage(FileStore(tmp_path), "s")
    assert view.state.done_units == 3
    assert view.state.progress.processed_items == 3
    assert any("unreadable record" in p for p in view.problems), view.problems
    shown = cli(tmp_path, "show", "s")
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 3
    assert "unreadable record" in shown.stdout

    cp = reopen(tmp_path)
    assert_consistent(cp, 3)
    assert cp.live.processed == 3
    cp.pause()
    cp.close()
    # The bad bytes were moved aside whole before the segment was cut.
    kept = [p.read_bytes() for p in corrupt_files(tmp_path)]
    assert bad + after in kept
    assert segment.read_bytes().startswith(good)  # cut where the good records end


def test_a_done_code_a_crafted_journal_repeats_is_counted_once(tmp_path: Path) -> None:
    """Writers never record a unit done twice; a crafted journal may. The count and
    should_skip must agree all the same, from the first read on."""
    make_stage(tmp_path, n=10, save_every=1)
    from scrapy_checkpoint.journal.keys import key_code

    again = [key_code(3), key_code(7)]  # done already: recorded done once more
    with newest_segment(tmp_path).open("ab") as f:
        f.write(frame(encode_group(again, [], {"c": [2, 2, 0, 0], "ts": 1.7e9})))
    view = read_stage(FileStore(tmp_path), "s")
    assert view.state.done_units == 10
    cp = reopen(tmp_path)
    assert_consistent(cp, 10)
    cp.pause()
    cp.close()


def test_a_snapshot_with_unsorted_codes_is_not_used(tmp_path: Path) -> None:
    make_stage(tmp_path, n=100, save_every=1, compact_min_bytes=4096, keep_snapshots=10)
    snaps = sorted((tmp_path / "s").glob("snapshot-*.bin"))
    assert len(snaps) >= 2
    newest = snaps[-1]
    header, done = decode_snapshot(newest.read_bytes())
    codes = list(done)[::-1]
    newest.write_bytes(encode_snapshot(header, struct.pack(f"<{len(codes)}Q", *codes)))

    cp = reopen(tmp_path)
    assert_consistent(cp, 100)
    assert cp.update(processed=1, successful=1, index=5) is False  # done: not counted again
    assert cp.live.processed == 100
    cp.pause()
    cp.close()
    assert any(p.name.startswith(newest.name) for p in corrupt_files(tmp_path))


@pytest.mark.parametrize("change", [
    {"unknown": 1},
    {"started": ["x"]},
    {"totals": {"items": -1}},
    {"state": {"stage": "s", "progress": {"processed_items": 10 ** 30}}},
], ids=["unknown key", "started not codes", "negative total", "huge counter"])
def test_a_snapshot_header_of_the_wrong_shape_is_refused(change: dict[str, Any]) -> None:
    done = DoneSet([1, 2, 3])
    header = {"generation": 1, "state": {"stage": "s"}}
    decode_snapshot(encode_snapshot(header, done.to_bytes(), done.times_bytes()))  # the base is fine
    blob = encode_snapshot({**header, **change}, done.to_bytes(), done.times_bytes())
    with pytest.raises(ValueError, match="snapshot header"):
        decode_snapshot(blob)


#: A JSON value nested deeper than Python's parser goes (RecursionError, not ValueError).
DEEP = b"[" * 100_000 + b"]" * 100_000


def _raw_group(header: bytes) -> bytes:
    return struct.pack("<I", len(header)) + header


@pytest.mark.parametrize("where", ["group", "snapshot header"])
def test_json_nested_too_deeply_is_damage_not_a_traceback(tmp_path: Path, where: str) -> None:
    """A checksummed record whose JSON nests 100,000 deep: the parser's RecursionError is
    damage like any other bad value (the record set aside, what came before kept), in every
    command and in the writer."""
    make_stage(tmp_path, n=3, save_every=1)
    if where == "group":
        with newest_segment(tmp_path).open("ab") as f:
            f.write(frame(_raw_group(b'{"d":0,"f":0,"m":{"x":' + DEEP + b"}}")))
    else:
        snap = sorted((tmp_path / "s").glob("snapshot-*.bin"))[-1]
        data = snap.read_bytes()
        hlen, _ = struct.unpack_from("<II", data, 8)
        head = data[16 : 16 + hlen][:-1] + b',"attached":{"x":' + DEEP + b"}}"
        snap.write_bytes(data[:8] + struct.pack("<II", len(head), zlib.crc32(head)) + head
                         + data[16 + hlen:])
    for args in (["list"], ["show", "s"], ["show", "s", "--json"], ["report", "--json"],
                 ["export", "-o", str(tmp_path / "e.json")]):
        out = cli(tmp_path, *args)
        assert "Traceback" not in out.stderr + out.stdout, (args, out.stderr[-600:])
        assert out.returncode in (0, 3), (args, out.returncode, out.stderr[-600:])
    cp = reopen(tmp_path)
    assert_consistent(cp, 3)
    cp.pause()
    cp.close()
    assert corrupt_files(tmp_path)  # the record's bytes kept aside


def test_a_huge_counter_in_the_state_file_is_damage_not_a_traceback(tmp_path: Path) -> None:
    make_stage(tmp_path, n=5)
    shutil.rmtree(tmp_path / "s")  # the journal is gone: the state file is all there is
    state = tmp_path / "s.json"
    state.write_text(state.read_text().replace('"processed_items": 5', '"processed_items": 1'
                                               + "0" * 400))
    shown = cli(tmp_path, "show", "s")
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 3
    assert "s.json is damaged" in shown.stdout
    assert "using the backup" in shown.stdout


def test_replaying_many_small_retry_groups_never_rebuilds_the_done_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s").mkdir()
    groups = [encode_group([], list(range(i, i + 1000)), {"c": [1000, 0, 1000, 0], "ts": 1.7e9})
              for i in range(0, 20_000, 1000)]
    groups += [encode_group([], [], {"rf": [i], "c": [-1, 0, -1, 0], "ts": 1.7e9})
               for i in range(2000)]
    (tmp_path / "s" / "journal-00000000.log").write_bytes(
        SEGMENT_MAGIC + b"".join(frame(g) for g in groups))
    rebuilds: list[int] = []
    real_keep = DoneSet._keep

    def counting_keep(self: DoneSet, keep: Any) -> None:
        rebuilds.append(len(self))
        real_keep(self, keep)

    monkeypatch.setattr(DoneSet, "_keep", counting_keep)
    view = read_stage(FileStore(tmp_path), "s")
    # Each retry group used to rebuild the whole done-set (quadratic): now none does.
    assert rebuilds == []
    assert view.state.done_units == 18_000
    live = view._live
    assert live is not None
    assert sum(i in live.done for i in range(20_000)) == 18_000
    assert len(live.pending) == 0
    assert len(live.failed_units) == 18_000


def test_removed_codes_come_back_and_are_purged_in_batches() -> None:
    done = DoneSet(range(200_000), now=10)
    done.discard_many(range(0, 100_000, 2))
    assert len(done) == 150_000
    assert 2 not in done
    assert 3 in done
    done.add_new(2)
    assert 2 in done
    assert done.time_of(2) == 10
    assert len(done) == 150_001
    done.discard_many(range(100_000, 200_000))  # past a quarter: purged from the arrays
    assert len(done) == 50_001
    assert list(done) == sorted({2} | set(range(1, 100_000, 2)))
    assert done.is_strictly_sorted()


# -- 7. files that do not belong ------------------------------------------------------------


def test_a_segment_copied_from_another_stage_is_set_aside_not_replayed(tmp_path: Path) -> None:
    make_stage(tmp_path / "a", "s", n=100)
    cp = EnhancedCheckpoint(tmp_path / "b", "t", log_every=0)
    cp.start(total_items=30)
    for i in range(30):
        cp.update(processed=1, successful=1, key=f"t{i}")
    cp.complete()
    cp.close()
    foreign = tmp_path / "b" / "t" / "journal-00000000.log"
    last = int(newest_segment(tmp_path / "a").stem.split("-")[1])
    planted = tmp_path / "a" / "s" / f"journal-{last + 1:08d}.log"
    shutil.copy(foreign, planted)

    view = read_stage(FileStore(tmp_path / "a"), "s")
    assert any("belongs to stage 't'" in p for p in view.problems), view.problems
    assert view.state.done_units == 100
    assert view.state.stage == "s"
    cp = reopen(tmp_path / "a")
    assert_consistent(cp, 100)
    assert cp.live.info.stage == "s"
    cp.pause()
    cp.close()
    assert [p.read_bytes() for p in corrupt_files(tmp_path / "a")] == [foreign.read_bytes()]


def test_a_segment_renamed_to_another_generation_is_a_stranger(tmp_path: Path) -> None:
    make_stage(tmp_path, n=50)
    seg = newest_segment(tmp_path)
    gen = int(seg.stem.split("-")[1])
    shutil.copy(seg, seg.with_name(f"journal-{gen + 1:08d}.log"))  # the same bytes again
    view = read_stage(FileStore(tmp_path), "s")
    assert any(f"is generation {gen}" in p for p in view.problems), view.problems
    assert view.state.done_units == 50


def test_an_old_format_segment_of_another_stage_is_known_by_its_init(tmp_path: Path) -> None:
    """Segments written before they carried a name tag: the group that creates the stage
    names it."""
    make_stage(tmp_path, n=10)
    seg = newest_segment(tmp_path)
    gen = int(seg.stem.split("-")[1])
    other = {"init": {"stage": "t"}, "c": [5, 5, 0, 0], "ts": 1.7e9}
    seg.with_name(f"journal-{gen + 1:08d}.log").write_bytes(
        SEGMENT_MAGIC + frame(encode_group([1000, 1001], [], other)))
    view = read_stage(FileStore(tmp_path), "s")
    assert any("belongs to stage 't'" in p for p in view.problems), view.problems
    assert view.state.done_units == 10
    assert view.state.progress.processed_items == 10


def test_a_segment_missing_between_two_others_is_reported_not_skipped(tmp_path: Path) -> None:
    make_stage(tmp_path, n=600, save_every=1, compact_min_bytes=4096, keep_snapshots=10)
    data = tmp_path / "s"
    snaps = sorted(int(p.stem.split("-")[1]) for p in data.glob("snapshot-*.bin"))
    segs = sorted(int(p.stem.split("-")[1]) for p in data.glob("journal-*.log"))
    assert len(snaps) >= 4
    assert len(segs) >= 4
    base, missing = snaps[0], snaps[0] + 1
    for gen in snaps[1:]:
        (data / f"snapshot-{gen:08d}.bin").unlink()
    (data / f"journal-{missing:08d}.log").unlink()

    view = read_stage(FileStore(tmp_path), "s")
    assert any(f"journal-{missing:08d}.log is missing" in p for p in view.problems), view.problems
    cp = reopen(tmp_path)
    n = len(cp.live.done)
    assert 0 < n < 600
    assert sum(cp.should_skip(i) for i in range(600)) == n
    assert all(cp.should_skip(i) for i in range(n))  # a prefix: done in order, none skipped
    cp.pause()
    cp.close()
    set_aside = {p.name.split(".")[0] for p in corrupt_files(tmp_path)}
    assert {f"journal-{g:08d}" for g in segs if g > missing} <= set_aside
    assert f"journal-{base:08d}" not in set_aside


@pytest.mark.parametrize("what", ["segment-fifo", "segment-dir", "snapshot-fifo",
                                  "snapshot-dir"])
def test_a_fifo_or_directory_in_place_of_a_journal_file_is_refused_clearly(
        tmp_path: Path, what: str) -> None:
    make_stage(tmp_path, n=20)
    data = tmp_path / "s"
    kind, node = what.split("-")
    if kind == "segment":
        gen = int(newest_segment(tmp_path).stem.split("-")[1]) + 1
        path = data / f"journal-{gen:08d}.log"
    else:
        gen = max(int(p.stem.split("-")[1]) for p in data.glob("snapshot-*.bin")) + 1
        path = data / f"snapshot-{gen:08d}.bin"
    if node == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
    before = sorted((p.name, p.stat().st_size) for p in data.iterdir())
    shown = cli(tmp_path, "show", "s")  # a FIFO opened for reading used to hang here
    assert shown.returncode == 3, (shown.stdout, shown.stderr)
    assert "Traceback" not in shown.stderr
    assert f"{path.name}" in shown.stderr
    assert ("a FIFO" if node == "fifo" else "a directory") in shown.stderr
    with pytest.raises(CorruptCheckpointError, match="not a regular file"):
        reopen(tmp_path)
    assert sorted((p.name, p.stat().st_size) for p in data.iterdir()) == before


@pytest.mark.parametrize("name", ["s.json", "s.lock"])
def test_a_fifo_in_place_of_the_state_or_lock_file_does_not_hang_show(
        tmp_path: Path, name: str) -> None:
    make_stage(tmp_path, n=20)
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    shown = cli(tmp_path, "show", "s")
    assert "Traceback" not in shown.stderr, shown.stderr
    assert "20 done" in shown.stdout


def _as_nobody(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as user nobody (uid 65534) when root (root reads any mode), else as us."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to run the reader as another user")
        prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=900, check=False, env=python_env(), cwd=directory)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="sc-faults-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_an_unreadable_segment_is_refused_and_never_cut(shared_dir: Path) -> None:
    directory = shared_dir / "cp"
    make_stage(directory, n=100, save_every=1)
    cp = EnhancedCheckpoint(directory, "s", log_every=0, save_every=1)
    cp.start(total_items=150)
    for i in range(100, 150):
        cp.update(processed=1, successful=1, index=i)
    cp.pause()
    cp.close()
    if os.geteuid() == 0:  # the checkpoint belongs to nobody, who runs the reader
        for path in [directory, *directory.rglob("*")]:
            os.chown(path, 65534, 65534)
    segment = newest_segment(directory)
    content = segment.read_bytes()
    segment.chmod(0o200)  # writable, not readable: it used to be cut as "damage"
    code = ("from scrapy_checkpoint import EnhancedCheckpoint as E\n"
            "from scrapy_checkpoint.errors import CorruptCheckpointError\n"
            "try:\n    E('cp', 's', log_every=0).start()\n"
            "except CorruptCheckpointError as exc:\n    print('REFUSED', exc)\n")
    run = _as_nobody(code, shared_dir)
    assert "Traceback" not in run.stderr, run.stderr
    assert "REFUSED Cannot read" in run.stdout
    assert segment.name in run.stdout
    assert "Permission denied" in run.stdout
    segment.chmod(0o644)
    assert segment.read_bytes() == content  # not one byte cut
    assert corrupt_files(directory) == []
    view = read_stage(FileStore(directory), "s")
    assert view.state.done_units == 150
    assert view.problems == []


def _modes_apply(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` so that file modes apply to it: as root, without the capabilities that
    bypass them (``setpriv``); else as us."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("setpriv (util-linux) is needed to run without root's file access")
        caps = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--bounding-set={caps}", f"--inh-caps={caps}", "--"]
    return subprocess.run([*prefix, *cmd], capture_output=True, text=True, timeout=900,
                          check=False, stdin=subprocess.DEVNULL, env=python_env())


def test_a_lock_file_the_user_may_not_open_is_one_clear_error(tmp_path: Path) -> None:
    make_stage(tmp_path, n=20)
    lock = tmp_path / "s.lock"
    lock.chmod(0)
    code = ("from scrapy_checkpoint import EnhancedCheckpoint as E\n"
            "from scrapy_checkpoint.errors import CorruptCheckpointError\n"
            f"try:\n    E({str(tmp_path)!r}, 's', log_every=0).start()\n"
            "except CorruptCheckpointError as exc:\n    print('REFUSED', exc)\n")
    started = _modes_apply([PYTHON, "-c", code])
    assert "Traceback" not in started.stderr, started.stderr
    assert "REFUSED Cannot write" in started.stdout, started.stdout  # held: opened to write
    assert "s.lock" in started.stdout
    assert "Permission denied" in started.stdout
    shown = _modes_apply([PYTHON, "-m", "scrapy_checkpoint.cli", "--dir", str(tmp_path),
                          "show", "s"])
    assert "Traceback" not in shown.stderr, shown.stderr
    assert "s.lock" in shown.stdout + shown.stderr
    lock.chmod(0o644)
    assert read_stage(FileStore(tmp_path), "s").state.done_units == 20  # nothing lost


# -- 8. stage names -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["x\n", "y" * 127 + "\n", "a\tb", "a\rb", "a\x00", "a\x7f",
                                  "\nx", "a\u2028b"])
def test_a_stage_name_with_a_newline_or_control_character_is_refused(
        tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="Invalid stage name"):
        check_stage_name(name)
    with pytest.raises(ConfigError):
        EnhancedCheckpoint(tmp_path, name, log_every=0).start()
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


# -- Redis values (13, 16) and ACL users (9) ----------------------------------------------------

redis = pytest.importorskip("redis")


def test_a_compressed_value_that_expands_too_far_is_refused() -> None:
    import zstandard

    from scrapy_checkpoint.stores.redis import MIN_EXPANDED, compress, decompress

    chunk, n = bytes(1 << 20), (MIN_EXPANDED >> 20) * 2
    for size in (-1, n << 20):  # its size unknown, or declared in its header
        writer = zstandard.ZstdCompressor(level=3).compressobj(size=size)
        bomb = b"".join(writer.compress(chunk) for _ in range(n)) + writer.flush()
        assert len(bomb) < 64 << 10
        assert zstandard.frame_content_size(bomb) == size
        with pytest.raises(ValueError, match="expands past"):
            decompress(bomb)
    large = os.urandom(64) * 4000
    assert decompress(compress(large)) == large
    with pytest.raises(ValueError, match="damaged compressed value"):
        decompress(compress(large)[:-4])  # cut short


def test_bad_redis_values_are_clear_errors_not_tracebacks(redis_backend: str) -> None:
    from scrapy_checkpoint.stores.redis import RedisStore

    make_stage(redis_backend, n=10)  # type: ignore[arg-type]
    store = RedisStore(redis_backend)
    store.client.set(store.key("s", "snapshot"), b"SCKSNAP1short")
    store.client.hset(store.key("s", "meta"), "base", 0)
    shown = cli("", "show", "s", backend=redis_backend)
    assert "Traceback" not in shown.stderr, shown.stderr
    assert "snapshot in Redis is damaged" in shown.stdout

    store.client.hset(store.key("s", "meta"), "seq", "abc")
    shown = cli("", "show", "s", backend=redis_backend)
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 3
    assert "meta hash" in shown.stderr
    with pytest.raises(CorruptCheckpointError, match="meta hash"):
        read_stage(store, "s")
    store.client.hset(store.key("s", "meta"), "seq", 1)

    # An owner record naming a pid no OS has, on this host, while the lock key exists.
    owner = json.dumps({"pid": 10 ** 30, "host": socket.gethostname(),
                        "started_at": "2026-01-01T00:00:00Z"})
    store.client.set(store.key("s", "owner"), owner)
    store.client.set(store.key("s", "lock"), "someone", px=60_000)
    shown = cli("", "show", "s", backend=redis_backend)
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 3  # the damaged snapshot above; the owner is just not shown
    store.client.delete(store.key("s", "lock"))

    import zstandard
    writer = zstandard.ZstdCompressor().compressobj()
    bomb = b"".join(writer.compress(bytes(1 << 20)) for _ in range(200)) + writer.flush()
    store.client.set(store.key("s", "state"), bomb)
    _, problems = store.read_state("s")
    assert problems
    assert "expands past" in problems[0]
    store.close()


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[str]:
    from .test_redis_store import PrivateRedis, needs_redis_server

    if needs_redis_server.args[0]:
        pytest.skip("redis-server is not installed")
    server = PrivateRedis(tmp_path / "redis")
    client = redis.Redis(port=server.port)
    client.execute_command("ACL", "SETUSER", "nomem", "on", ">pw", "~*", "&*", "+@all", "-memory")
    client.execute_command("ACL", "SETUSER", "noscript", "on", ">pw", "~*", "&*", "+@all",
                           "-@scripting")
    client.close()
    try:
        yield server.url
    finally:
        server.stop()


def test_a_redis_user_without_a_permission_gets_one_message_naming_the_command(
        acl_redis: str) -> None:
    make_stage(acl_redis, n=10)  # type: ignore[arg-type]
    nomem = acl_redis.replace("redis://", "redis://nomem:pw@")
    shown = cli("", "show", "s", backend=nomem)
    assert "Traceback" not in shown.stderr, shown.stderr
    assert shown.returncode == 1
    assert "may not run MEMORY USAGE" in shown.stderr
    assert "+memory" in shown.stderr
    assert ":pw@" not in shown.stderr  # no password in the message

    noscript = acl_redis.replace("redis://", "redis://noscript:pw@")
    with pytest.raises(CheckpointError, match="may not run EVALSHA") as caught:
        make_stage(noscript, "s2", n=3)  # type: ignore[arg-type]
    assert isinstance(caught.value, redis.exceptions.NoPermissionError)  # still what it was
