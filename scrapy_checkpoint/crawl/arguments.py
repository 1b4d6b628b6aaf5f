"""The spider arguments (``-a NAME=VALUE``) a stage was started with, kept with it.

A resumed run continues the requests that earlier runs made with their arguments. Run
with other arguments (``-a category=books`` then ``-a category=games``), plain Scrapy
would crawl something else; the resume mixes both: the pending requests of the earlier
arguments, and whatever this run's ``start()`` yields. Scrapy keeps no record of the
arguments a spider was built with, so they are read from the command line of
``scrapy crawl`` and ``scrapy runspider`` (``sys.argv``, which Scrapy leaves with its
options), kept with the stage (attached data :data:`ARGUMENTS_ATTACHED`) until it starts
over, and every run whose arguments differ from those says so at open. A crawl started from a
script (``CrawlerProcess``) has no command line of Scrapy's: nothing is compared.

Only a fingerprint of each value is kept (the first 16 hex digits of its SHA-256), and the
warning names the arguments, not their values: ``-a password=...`` or ``-a api_key=...``
stay out of the checkpoint and the log.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from typing import Any

logger = logging.getLogger("scrapy_checkpoint")

#: Attached data: ``{name: value}`` of the ``-a`` options the stage's requests were made with.
ARGUMENTS_ATTACHED = "spider_args"


def command_line_arguments(argv: list[str] | None = None) -> dict[str, str] | None:
    """The ``-a NAME=VALUE`` options of a ``scrapy`` command line (``argv``, by default
    ``sys.argv``) as ``{NAME: fingerprint of VALUE}``, or None when the program is not the
    ``scrapy`` command."""
    argv = sys.argv if argv is None else argv
    if not argv:
        return None
    program = argv[0].replace(os.sep, "/")
    if not (os.path.basename(program) == "scrapy" or program.endswith("scrapy/__main__.py")):
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("-a", dest="spargs", action="append", default=[])
    try:
        known, _ = parser.parse_known_args(argv[1:])
    except SystemExit:  # (argparse exits on what it cannot parse; Scrapy has said so already)
        return None
    arguments = {}
    for pair in known.spargs:
        name, sep, value = str(pair).partition("=")
        if sep:
            arguments[name.strip()] = hashlib.sha256(
                value.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return arguments


def note_arguments(cp: Any, name: str, argv: list[str] | None = None) -> None:
    """Keep this run's spider arguments with the started stage ``cp`` if it has no request
    yet; else warn when they differ from the ones kept."""
    current = command_line_arguments(argv)
    if current is None:
        return
    recorded = cp.live.attached.get(ARGUMENTS_ATTACHED)
    started = len(cp.live.done) or len(cp.live.pending)
    if isinstance(recorded, dict) and started:
        changes = [f"{key} changed" for key in sorted(set(recorded) & set(current))
                   if recorded[key] != current[key]]
        changes += [f"{key} not given" for key in sorted(set(recorded) - set(current))]
        changes += [f"{key} added" for key in sorted(set(current) - set(recorded))]
        if changes:
            logger.warning(
                "Stage %s: this run's spider arguments differ from the ones its %d done and %d "
                "pending request(s) were made with (%s): the resumed requests are the earlier "
                "arguments' and this run's start() adds its own, so the result mixes both, "
                "which no single plain Scrapy run gives. Run with the earlier arguments to "
                "finish the stage, or set CHECKPOINT_RESET = True to crawl with the new ones "
                "from the start.", name, len(cp.live.done), len(cp.live.pending),
                "; ".join(changes))
    elif recorded != current:  # the stage's first run (or a new start): its arguments
        cp.attach(ARGUMENTS_ATTACHED, current)
