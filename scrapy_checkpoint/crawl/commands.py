"""``scrapy checkpoint ...``: the CLI inside a Scrapy project, reading CHECKPOINT_DIR from
the project's settings."""

from __future__ import annotations

import argparse

from scrapy.commands import ScrapyCommand

from ..stores import MEMORY


class Command(ScrapyCommand):
    """``scrapy checkpoint ...``: the scrapy-checkpoint CLI with the project's settings."""

    requires_project = False
    requires_crawler_process = False
    default_settings = {"LOG_ENABLED": False}

    def syntax(self) -> str:
        """The usage line ``scrapy checkpoint -h`` shows."""
        return "[--dir PATH] {list,show,report,watch,serve,reset,requeue,export,cleanup} [ARGS]"

    def short_desc(self) -> str:
        """One line for ``scrapy -h``."""
        return "Inspect, report on, reset and clean up scrapy-checkpoint stages"

    def long_desc(self) -> str:
        """The description ``scrapy checkpoint -h`` shows."""
        return ("The scrapy-checkpoint CLI, with --dir defaulting to the project's "
                "CHECKPOINT_DIR. 'scrapy-checkpoint --help' lists the commands and options.")

    def run(self, args: list[str], opts: argparse.Namespace) -> None:
        """Run the CLI with ``args``; ``--dir`` and ``--backend`` default to the project's
        CHECKPOINT_DIR and CHECKPOINT_BACKEND (a user's own options win). Sets ``exitcode``."""
        from ..cli import run

        assert self.settings is not None
        backend = self.settings.get("CHECKPOINT_BACKEND")
        prefix = self.settings.get("CHECKPOINT_REDIS_PREFIX")
        if backend and backend != "file" and "--backend" not in args:
            if prefix and "prefix=" not in backend and not backend.startswith(MEMORY):
                backend += ("&" if "?" in backend else "?") + f"prefix={prefix}"
            args = ["--backend", backend, *args]
        self.exitcode = run(args, prog_name="scrapy checkpoint",
                            default_dir=self.settings.get("CHECKPOINT_DIR") or None)
