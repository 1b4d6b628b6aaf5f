"""Durable outputs: a unit's bytes reach the file when the unit is done, lengths are
journaled, and a resumed stage cuts its files back to what was committed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from scrapy_checkpoint.checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.crawl.extension import OUTPUTS
from scrapy_checkpoint.crawl.outputs import DurableOutput, OutputSet, UnitRouter
from scrapy_checkpoint.crawl.stats import publish
from scrapy_checkpoint.state import Status
from scrapy_checkpoint.stores.file import FileStore
from scrapy_checkpoint.view import read_stage

from ..conftest import Counts


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "out.jl"


def _output(path: Path, **kwargs: object) -> tuple[DurableOutput, UnitRouter]:
    router = UnitRouter()
    return DurableOutput(str(path), router, **{"length": 0, **kwargs}), router  # type: ignore[arg-type]


# -- DurableOutput -------------------------------------------------------------------------

def test_a_units_bytes_reach_the_file_only_when_it_is_released(path: Path) -> None:
    out, router = _output(path)
    router.current = 1
    out.write(b"a1\n")
    router.current = 2
    out.write(b"b1\n")
    router.current = 1
    out.write(b"a2\n")
    router.current = None
    assert out.committed_length() == 0
    assert path.read_bytes() == b""
    out.release(2)
    assert out.committed_length() == 3
    assert path.read_bytes() == b"b1\n"
    out.release(1)
    out.release(1)  # a second release has nothing left to write
    assert out.committed_length() == 9
    assert path.read_bytes() == b"b1\na1\na2\n"
    out.close()


def test_bytes_with_no_current_unit_go_straight_through(path: Path) -> None:
    out, router = _output(path)
    router.current = 7
    out.write(b"held\n")
    router.current = None
    assert out.write(b"now\n") == 4
    assert out.committed_length() == 4
    assert path.read_bytes() == b"now\n"
    assert out.tell() == 4
    out.close()


def test_a_memoryview_is_copied_when_held(path: Path) -> None:
    out, router = _output(path)
    buffer = bytearray(b"one\n")
    router.current = 1
    out.write(memoryview(buffer))
    buffer[:] = b"two\n"  # the exporter reuses its buffer
    out.release(1)
    out.close()
    assert path.read_bytes() == b"one\n"


def test_it_opens_at_the_given_length(path: Path) -> None:
    path.write_bytes(b"kept\ncut off\n")
    out, _ = _output(path, length=5)
    assert out.committed_length() == 5
    out.write(b"next\n")
    out.close()
    assert path.read_bytes() == b"kept\nnext\n"


def test_close_drops_unreleased_bytes_and_ignores_later_releases(path: Path) -> None:
    out, router = _output(path)
    router.current = 1
    out.write(b"never\n")
    router.current = 2
    out.write(b"late\n")
    router.current = None
    out.write(b"x\n")
    out.close()
    out.close()  # twice is fine
    out.release(2)
    assert out.closed
    assert out.fileno() is None
    assert out.committed_length() == 2
    assert path.read_bytes() == b"x\n"


def test_a_csv_header_is_written_at_once_or_dropped(path: Path) -> None:
    out, router = _output(path, header=True)
    router.current = 1  # the header is written outside any request even so
    out.write(b"page,title\n")
    out.write(b"1,one\n")
    assert out.committed_length() == len(b"page,title\n")
    out.release(1)
    out.close()
    assert path.read_bytes() == b"page,title\n1,one\n"

    again, router = _output(path, length=path.stat().st_size, header=True, drop_header=True)
    router.current = 2
    again.write(b"page,title\n")
    again.write(b"2,two\n")
    again.release(2)
    again.close()
    assert path.read_bytes() == b"page,title\n1,one\n2,two\n"


def test_it_behaves_as_a_write_only_file(path: Path) -> None:
    out, _ = _output(path)
    assert (out.writable(), out.readable(), out.seekable(), out.closed) == (True, False, False, False)
    assert isinstance(out.fileno(), int)
    out.flush()
    out.close()


# -- OutputSet --------------------------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path: Path) -> Iterator[EnhancedCheckpoint]:
    cp = EnhancedCheckpoint(tmp_path / "checkpoints", "outputs", durability="flush")
    cp.start()
    yield cp
    cp.close()


def _journal_lengths(cp: EnhancedCheckpoint, outputs: OutputSet) -> None:
    """Record the outputs' lengths with every group, as the extension does."""
    cp.add_commit_hook(lambda: {OUTPUTS: lengths} if (lengths := outputs.changed_lengths()) else None)


def test_open_records_a_new_files_base(checkpoint: EnhancedCheckpoint, tmp_path: Path) -> None:
    outputs = OutputSet(checkpoint, Counts())
    new = tmp_path / "new.jl"
    old = tmp_path / "old.jl"
    old.write_bytes(b"from before\n")
    replaced = tmp_path / "replaced.jl"
    replaced.write_bytes(b"from before\n")
    outputs.open(str(new), overwrite=False, has_header=False).close()
    outputs.open(str(old), overwrite=False, has_header=False).close()
    outputs.open(str(replaced), overwrite=True, has_header=False).close()
    recorded = checkpoint.live.outputs
    assert recorded[str(new)] == [0, 0]
    assert recorded[str(old)] == [12, 12]  # appended to: what was there is not ours
    assert recorded[str(replaced)] == [0, 0]
    assert (old.read_bytes(), replaced.read_bytes()) == (b"from before\n", b"")


def test_open_twice_gives_the_same_output(checkpoint: EnhancedCheckpoint, path: Path) -> None:
    outputs = OutputSet(checkpoint, Counts())
    first = outputs.open(str(path), overwrite=False, has_header=False)
    assert outputs.open(str(path), overwrite=True, has_header=False) is first
    assert outputs.fds() == [first.fileno()]
    first.close()
    assert outputs.fds() == []


def test_changed_lengths_reports_only_changes(checkpoint: EnhancedCheckpoint, path: Path) -> None:
    path.write_bytes(b"base\n")
    outputs = OutputSet(checkpoint, Counts())
    out = outputs.open(str(path), overwrite=False, has_header=False)
    key = str(path)
    assert outputs.changed_lengths() == {}
    outputs.router.current = 1
    out.write(b"one\n")
    assert outputs.changed_lengths() == {}  # held: not in the file yet
    outputs.release(1)
    assert outputs.changed_lengths() == {key: [5, 9]}
    assert outputs.changed_lengths() == {}
    outputs.router.current = None
    out.write(b"two\n")
    assert outputs.changed_lengths() == {key: [5, 13]}
    out.close()
    assert outputs.changed_lengths() == {}


def test_release_reaches_every_output(checkpoint: EnhancedCheckpoint, tmp_path: Path) -> None:
    outputs = OutputSet(checkpoint, Counts())
    a = outputs.open(str(tmp_path / "a.jl"), overwrite=False, has_header=False)
    b = outputs.open(str(tmp_path / "b.csv"), overwrite=False, has_header=False)
    outputs.router.current = 4
    a.write(b"a\n")
    b.write(b"b\n")
    outputs.release(4)
    a.close()
    b.close()
    assert (tmp_path / "a.jl").read_bytes() == b"a\n"
    assert (tmp_path / "b.csv").read_bytes() == b"b\n"


def test_cut_truncates_to_the_committed_length(checkpoint: EnhancedCheckpoint, tmp_path: Path) -> None:
    stats = Counts()
    outputs = OutputSet(checkpoint, stats)
    longer = tmp_path / "longer.jl"
    longer.write_bytes(b"1\n2\n3\n4\n")
    exact = tmp_path / "exact.jl"
    exact.write_bytes(b"1\n")
    shorter = tmp_path / "shorter.jl"
    shorter.write_bytes(b"1\n")
    missing = tmp_path / "missing.jl"
    outputs.cut({str(longer): [0, 4], str(exact): [0, 2], str(shorter): [0, 6],
                 str(missing): [0, 4]})
    assert longer.read_bytes() == b"1\n2\n"
    assert exact.read_bytes() == b"1\n"
    assert shorter.read_bytes() == b"1\n"  # never grown or emptied: written on from its end
    assert not missing.exists()
    assert stats.values == {"checkpoint/output_lines_rolled_back": 2}


def test_a_resumed_stage_reopens_at_the_committed_length(tmp_path: Path, path: Path) -> None:
    directory = tmp_path / "checkpoints"
    cp = EnhancedCheckpoint(directory, "outputs", durability="flush")
    cp.start()
    outputs = OutputSet(cp, Counts())
    _journal_lengths(cp, outputs)
    out = outputs.open(str(path), overwrite=True, has_header=True)
    out.write(b"page\n")  # the CSV header
    outputs.router.current = 1
    out.write(b"1\n")
    outputs.release(1)
    outputs.router.current = 2
    out.write(b"2\n")  # unit 2 never finishes
    out.close()
    cp.close()
    assert read_stage(FileStore(directory), "outputs").outputs == {str(path): [0, 7]}
    with path.open("ab") as f:
        f.write(b"3\n")  # written after the last commit (a crash between the two)

    cp = EnhancedCheckpoint(directory, "outputs", durability="flush")
    cp.start()
    stats = Counts()
    outputs = OutputSet(cp, stats)
    _journal_lengths(cp, outputs)
    outputs.cut(cp.live.outputs)
    assert path.read_bytes() == b"page\n1\n"
    assert stats.values["checkpoint/output_lines_rolled_back"] == 1
    out = outputs.open(str(path), overwrite=True, has_header=True)  # -O: not emptied again
    assert out.committed_length() == 7
    out.write(b"page\n")  # dropped: the file has its header
    outputs.router.current = 2
    out.write(b"2\n")
    outputs.release(2)
    out.close()
    cp.complete()
    cp.close()
    assert path.read_bytes() == b"page\n1\n2\n"
    view = read_stage(FileStore(directory), "outputs")
    assert view.outputs == {str(path): [0, 9]}
    assert view.state.status is Status.COMPLETED


def test_claim_file_decides_for_a_new_file_only(checkpoint: EnhancedCheckpoint, tmp_path: Path) -> None:
    claims: list[tuple[str, bool]] = []

    def claim(key: str, overwrite: bool) -> bool:
        claims.append((key, overwrite))
        return False  # e.g. a shared stage appends instead of emptying

    outputs = OutputSet(checkpoint, Counts(), claim_file=claim)
    path = tmp_path / "claimed.jl"
    path.write_bytes(b"other worker\n")
    out = outputs.open(str(path), overwrite=True, has_header=False)
    out.close()
    assert claims == [(str(path), True)]
    assert path.read_bytes() == b"other worker\n"
    assert checkpoint.live.outputs[str(path)] == [13, 13]
    outputs.open(str(path), overwrite=True, has_header=False).close()  # recorded: not claimed
    assert claims == [(str(path), True)]


def test_open_relative_paths_are_recorded_absolute(
    checkpoint: EnhancedCheckpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    outputs = OutputSet(checkpoint, Counts())
    outputs.open("rel.jl", overwrite=False, has_header=False).close()
    assert list(checkpoint.live.outputs) == [os.path.join(str(tmp_path), "rel.jl")]


# -- stats ------------------------------------------------------------------------------------

def test_publish_sets_the_stage_wide_stats(checkpoint: EnhancedCheckpoint) -> None:
    checkpoint.add_unit(1, {"u": 1})
    checkpoint.add_unit(2, {"u": 2})
    checkpoint.add_unit(3, {"u": 3})
    checkpoint.finish_unit(1, processed=1, successful=1)
    checkpoint.finish_unit(2, processed=1, failed=1)
    checkpoint.save()
    stats = Counts()
    publish(stats, checkpoint)
    values = stats.values
    assert (values["checkpoint/done_total"], values["checkpoint/pending"],
            values["checkpoint/failed_total"]) == (2, 1, 1)
    assert values["checkpoint/journal_bytes"] > 0
    assert {"checkpoint/commit_latency_p50_us", "checkpoint/commit_latency_p99_us"} <= set(values)
