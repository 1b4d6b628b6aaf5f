"""Which Scrapy command a crawler serves: a crawl, or a command that only borrows one.

The plugin records crawls: ``scrapy crawl``, ``scrapy runspider``, and ``CrawlerProcess``
or ``CrawlerRunner`` in a script. ``scrapy shell``, ``fetch``, ``view``, ``parse``, ``check``
and ``bench`` build a crawler too, from the same project settings (so with the add-on),
but to look at a page or test a spider: they must neither create nor resume a stage.

Scrapy (2.19) says which command runs in no public attribute, and ``scrapy.cmdline``
removes the command's name from ``sys.argv``. What each command leaves on its crawler is
read instead, from ``scrapy/commands/``:

- ``fetch`` (and ``view``, its subclass), ``parse`` and ``check`` replace the spider class's
  ``start`` with a function defined in their own module (``scrapy.commands.<name>``);
- ``bench`` crawls its own spider class, defined in ``scrapy.commands.bench``;
- ``shell`` drives the engine itself, but sets its ``default_settings``
  (``DUPEFILTER_CLASS``, ``LOGSTATS_INTERVAL``, ``REMOTE_CONTROL_ENABLED``) at the
  "command" priority, which only a command's ``default_settings`` use.

tests/test_crawl_commands.py runs each command for real, so a Scrapy release that
changes one of these shows there.
"""

from __future__ import annotations

from typing import Any

from scrapy.settings import SETTINGS_PRIORITIES

_COMMANDS = "scrapy.commands."


def borrowing_command(spidercls: type, settings: Any) -> str | None:
    """The name of the Scrapy command that builds this crawler without crawling (``shell``,
    ``fetch``, ``parse``, ``check``, ``bench``; ``view`` is reported as ``fetch``), or None
    for a crawl. ``spidercls`` and ``settings`` are the crawler's."""
    start = getattr(spidercls, "start", None)
    module = getattr(start, "__module__", None) or ""
    if module.startswith(_COMMANDS):
        return module[len(_COMMANDS):]
    module = getattr(spidercls, "__module__", None) or ""
    if module.startswith(_COMMANDS):
        return module[len(_COMMANDS):]
    from scrapy.commands.shell import Command as Shell

    command = SETTINGS_PRIORITIES["command"]
    if any(settings.getpriority(name) == command and settings.get(name) == value
           for name, value in Shell.default_settings.items()):
        return "shell"
    return None


def describe(command: str) -> str:
    """One log line: the plugin stays out of ``command``."""
    name = "fetch/view" if command == "fetch" else command
    return (f"scrapy-checkpoint is off for 'scrapy {name}': only crawls (scrapy crawl, "
            f"scrapy runspider, CrawlerProcess, CrawlerRunner) record a stage.")
