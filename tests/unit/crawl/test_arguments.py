"""The spider arguments kept with a stage: fingerprints, never the values."""

from __future__ import annotations

from scrapy_checkpoint.crawl.arguments import command_line_arguments


def test_arguments_are_kept_as_fingerprints_of_their_values() -> None:
    argv = ["/venv/bin/scrapy", "crawl", "shop", "-a", "password=hunter2", "-a", "q=a=b",
            "-o", "out.jl"]
    kept = command_line_arguments(argv)
    assert kept is not None
    assert set(kept) == {"password", "q"}
    assert "hunter2" not in repr(kept)
    assert all(len(v) == 16 and int(v, 16) >= 0 for v in kept.values())
    assert kept == command_line_arguments(argv)  # the same values, the same fingerprints
    other = command_line_arguments([*argv[:4], "password=other", *argv[5:]])
    assert other is not None
    assert other["password"] != kept["password"]
    assert other["q"] == kept["q"]


def test_a_program_other_than_scrapy_has_no_arguments_to_compare() -> None:
    assert command_line_arguments(["/usr/bin/python", "run.py", "-a", "x=1"]) is None
