"""Feed documents and batch files: a JSON array or XML document stays one valid document
across runs, batch files hold N committed items each and a resumed stage continues them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from scrapy.exporters import JsonItemExporter, XmlItemExporter
from scrapy.utils.test import get_crawler

from scrapy_checkpoint.checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.crawl.batches import BatchedOutput
from scrapy_checkpoint.crawl.extension import OUTPUTS
from scrapy_checkpoint.crawl.feeds import csv_header_fields, probe_framing
from scrapy_checkpoint.crawl.outputs import Framing, OutputSet
from scrapy_checkpoint.journal.groups import DOC_BATCH, DOC_CLOSED, DOC_FEED, DOC_ITEMS
from scrapy_checkpoint.stores.file import FileStore
from scrapy_checkpoint.view import read_stage

from ..conftest import Counts

JSON = Framing(b"[\n", b",\n", b"\n]")


def _start(directory: Path) -> tuple[EnhancedCheckpoint, OutputSet]:
    cp = EnhancedCheckpoint(directory, "docs", durability="flush")
    cp.start()
    outputs = OutputSet(cp, Counts())
    cp.add_commit_hook(lambda: {OUTPUTS: lengths} if (lengths := outputs.changed_lengths())
                       else None)
    outputs.cut(cp.live.outputs)
    return cp, outputs


def _item(outputs: OutputSet, unit: int | None, number: int, *writes: bytes,
          target: object) -> None:
    """Write one item's bytes as an exporter does, with ``unit`` current."""
    outputs.router.current, outputs.router.item = unit, number
    for data in writes:
        target.write(data)  # type: ignore[attr-defined]
    outputs.router.current, outputs.router.item = None, None


def _commit(cp: EnhancedCheckpoint) -> None:
    """A journal commit (with the outputs' lengths, as each group of a crawl has)."""
    cp.set_metadata(commits=cp.live.info.metadata.get("commits", 0) + 1)
    cp.save()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "checkpoints"


def test_a_document_gets_its_own_framing_in_commit_order(directory: Path, tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    cp, outputs = _start(directory)
    out = outputs.open(str(path), overwrite=True, has_header=False, framing=JSON)
    out.write(b"[")  # the exporter's own opening (outside an item): dropped
    _item(outputs, 1, 1, b'{"a": 1}', target=out)
    _item(outputs, 2, 2, b",", b"\n", b'{"a": 2}', target=out)  # its separator: dropped
    outputs.release(2)
    outputs.release(1)
    out.write(b"\n]")  # the exporter's own closing: dropped
    outputs.close_documents()
    cp.complete()
    out.close()
    cp.close()
    assert path.read_bytes() == b'[\n{"a": 2},\n{"a": 1}\n]'
    entry = read_stage(FileStore(directory), "docs").outputs[str(path)]
    assert entry[:2] == [0, len(b'[\n{"a": 2},\n{"a": 1}')]  # the closing is not counted
    assert entry[2][DOC_ITEMS] == 2
    assert entry[2][DOC_CLOSED] == 1


def test_a_resumed_document_continues_inside_and_is_closed_once(directory: Path,
                                                               tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    cp, outputs = _start(directory)
    out = outputs.open(str(path), overwrite=True, has_header=False, framing=JSON)
    _item(outputs, 1, 1, b"1", target=out)
    outputs.release(1)
    outputs.close_documents()
    cp.pause()
    out.close()
    cp.close()
    assert json.loads(path.read_bytes()) == [1]  # paused: a valid document

    cp, outputs = _start(directory)
    assert path.read_bytes() == b"[\n1\n]"  # the closing is what follows: kept by the cut
    out = outputs.open(str(path), overwrite=True, has_header=False, framing=JSON)
    _item(outputs, 2, 1, b"2", target=out)  # the exporter's first item of this run
    outputs.release(2)
    out.flush()
    _commit(cp)
    with path.open("ab") as f:
        f.write(b",\n3")  # released after the last commit, then killed
    out.close()
    cp.abandon()

    cp, outputs = _start(directory)
    assert path.read_bytes() == b"[\n1,\n2"  # cut back: the document is open
    outputs.close_documents()  # this run writes nothing to it: closed all the same
    cp.complete()
    cp.close()
    assert json.loads(path.read_bytes()) == [1, 2]


def test_a_reopened_document_killed_before_a_commit_is_cut_to_its_items(
        directory: Path, tmp_path: Path) -> None:
    path = tmp_path / "items.json"
    cp, outputs = _start(directory)
    out = outputs.open(str(path), overwrite=True, has_header=False, framing=JSON)
    _item(outputs, 1, 1, b"1", target=out)
    outputs.release(1)
    outputs.close_documents()
    cp.pause()
    out.close()
    cp.close()

    cp, outputs = _start(directory)
    out = outputs.open(str(path), overwrite=True, has_header=False, framing=JSON)
    _item(outputs, 2, 1, b"22222", target=out)
    outputs.release(2)
    out.close()  # on disk where the closing was, but never committed
    cp.abandon()
    cp, outputs = _start(directory)
    assert path.read_bytes() == b"[\n1"
    outputs.close_documents()
    cp.close()
    assert json.loads(path.read_bytes()) == [1]


def _batches(outputs: OutputSet, tmp_path: Path, framing: Framing = JSON,
             header: bool = False) -> BatchedOutput:
    out = BatchedOutput(outputs, feed="feed-%(batch_id)d", size=2,
                        path_of=lambda k: str(tmp_path / f"feed-{k}"), overwrite=True,
                        header=header, framing=framing)
    outputs.add(out)
    return out


def test_batch_files_hold_n_committed_items_and_a_resume_continues_the_first_unfull(
        directory: Path, tmp_path: Path) -> None:
    cp, outputs = _start(directory)
    out = _batches(outputs, tmp_path)
    for unit in (1, 2, 3):
        _item(outputs, unit, unit, str(unit).encode(), target=out)
    outputs.release(3)
    outputs.release(1)
    outputs.release(2)  # 3 and 1 fill feed-1, 2 starts feed-2
    assert (tmp_path / "feed-1").read_bytes() == b"[\n3,\n1\n]"
    _commit(cp)
    _item(outputs, 4, 4, b"4", target=out)
    outputs.release(4)  # feed-2 is full on disk, never committed: killed
    out.close()
    cp.abandon()

    cp, outputs = _start(directory)
    assert (tmp_path / "feed-2").read_bytes() == b"[\n2"
    out = _batches(outputs, tmp_path)
    assert out.batch_id == 2
    for unit in (4, 5, 6):
        _item(outputs, unit, unit, str(unit).encode(), target=out)
        outputs.release(unit)
    outputs.close_documents()
    cp.complete()
    out.close()
    cp.close()
    files = {p.name: json.loads(p.read_bytes()) for p in sorted(tmp_path.glob("feed-*"))}
    assert files == {"feed-1": [3, 1], "feed-2": [2, 4], "feed-3": [5, 6]}
    entry = read_stage(FileStore(directory), "docs").outputs[str(tmp_path / "feed-3")]
    assert (entry[2][DOC_FEED], entry[2][DOC_BATCH], entry[2][DOC_ITEMS]) == (
        "feed-%(batch_id)d", 3, 2)


def test_csv_batch_files_each_begin_with_the_header(directory: Path, tmp_path: Path) -> None:
    cp, outputs = _start(directory)
    out = _batches(outputs, tmp_path, framing=Framing(), header=True)
    out.write(b"a,b\r\n")  # the exporter's header, with the first item
    for unit in (1, 2, 3):
        _item(outputs, unit, unit, f"{unit},{unit}\r\n".encode(), target=out)
        outputs.release(unit)
    outputs.close_documents()
    cp.complete()
    out.close()
    cp.close()
    assert (tmp_path / "feed-1").read_bytes() == b"a,b\r\n1,1\r\n2,2\r\n"
    assert (tmp_path / "feed-2").read_bytes() == b"a,b\r\n3,3\r\n"


@pytest.mark.parametrize(("indent", "framing"), [
    (None, Framing(b"[", b",", b"]")),
    (0, Framing(b"[\n", b",\n", b"\n]")),
    (2, Framing(b"[\n", b",\n", b"\n]")),
])
def test_probe_framing_reads_the_json_exporters_framing(indent: int | None,
                                                      framing: Framing) -> None:
    crawler = get_crawler()
    options = {"fields": None, "encoding": "utf-8", "indent": indent, "item_export_kwargs": {}}
    assert probe_framing(crawler, JsonItemExporter, options) == framing


def test_probe_framing_reads_the_xml_exporters_framing() -> None:
    crawler = get_crawler()
    options = {"fields": None, "encoding": None, "indent": 0,
               "item_export_kwargs": {"root_element": "products"}}
    framing = probe_framing(crawler, XmlItemExporter, options)
    assert framing == Framing(b'<?xml version="1.0" encoding="utf-8"?>\n<products>\n', b"",
                              b"</products>")


def test_csv_header_fields_reads_the_feeds_dialect() -> None:
    assert csv_header_fields(b'url,"a,b",name\r\n', {}) == ["url", "a,b", "name"]
    options = {"item_export_kwargs": {"delimiter": ";", "include_headers_line": True}}
    assert csv_header_fields(b"url;name\n", options) == ["url", "name"]


def test_batch_path_names_a_batch_as_scrapy_does(tmp_path: Path) -> None:
    """Scrapy's private ``_get_uri_params`` gives the names: the feed's ``uri_params`` and the
    spider's attributes, with the batch id asked for."""
    from scrapy import Spider

    from scrapy_checkpoint.crawl.feeds import CheckpointFeedExporter

    template = f"file://{tmp_path}/%(name)s-%(batch_id)03d.jl"
    crawler = get_crawler(Spider, {"FEEDS": {template: {"format": "jsonlines"}},
                                   "FEED_EXPORT_BATCH_ITEM_COUNT": 2})
    spider = Spider(name="shop")
    exporter = CheckpointFeedExporter(crawler)
    assert exporter.batch_path(spider, template, 7) == f"{tmp_path}/shop-007.jl"
