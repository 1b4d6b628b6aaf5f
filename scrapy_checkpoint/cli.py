"""The ``scrapy-checkpoint`` command (also ``scrapy checkpoint`` in a Scrapy project).

Read-only commands (list, show, report, watch, export) never take a stage's
lock or change a file, so they work while a job runs, after it died, and on a
damaged checkpoint. Exit codes: 0 success, 1 not found or nothing to do,
2 usage error, 3 damaged checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import click
from rich import box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from .bar import is_terminal
from .checkpoint import describe_lost
from .documents import (
    damaged,
    entries,
    input_file_matches,
    list_document,
    read_views,
    report_document,
    shared_stage_document,
    stage_document,
)
from .errors import (
    CheckpointError,
    CheckpointLockedError,
    CheckpointWriteError,
    ConfigError,
    CorruptCheckpointError,
    UnreadableCheckpointError,
    redact,
)
from .manager import EXPORT_SCHEMA_VERSION, StageView, UnifiedCheckpointManager, write_export
from .metrics import Metrics, format_duration, format_percent, printable
from .shared import Worker, shared_stage_of
from .state import ACTIVE_STATUSES, LOST_REDONE_NEXT_RUN
from .stores import BACKEND_SCHEMES
from .stores.base import check_stage_name

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_DAMAGED = 0, 1, 2, 3
SCHEMA_VERSION = EXPORT_SCHEMA_VERSION


class Context:
    """What every command needs: the manager over the store, the console and its options.

    Exits with EXIT_NOT_FOUND (after one clear line) when the store cannot be opened.
    """

    def __init__(self, directory: str, backend: str, verbose: bool) -> None:
        try:
            self.manager = UnifiedCheckpointManager(directory, backend=backend)
        except CheckpointError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_NOT_FOUND)
        self.tty = is_terminal(sys.stdout)
        #: False when piped without $COLUMNS: a table is then as wide as its cells (rich
        #: would cut it to 80 columns, and a long stage name to "S…", unreadable to a script).
        self.sized = self.tty or bool(os.environ.get("COLUMNS"))
        self.console = Console(no_color=bool(os.environ.get("NO_COLOR")) or None,
                               highlight=False, soft_wrap=not self.tty,
                               width=None if self.sized else PIPED_WIDTH)
        if verbose:
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    def table(self, *columns: str) -> Table:
        """A rich table with ``columns`` in this CLI's style."""
        table = Table(box=box.SIMPLE_HEAD if self.tty else None, pad_edge=False,
                      show_header=True, header_style="bold" if self.tty else None)
        for name in columns:
            table.add_column(name, no_wrap=True, overflow="ellipsis")
        return table

    def print(self, renderable: RenderableType) -> None:
        """Print through rich without the spaces it pads each line with."""
        self.console.print(_Rstripped(renderable))

    def schema_plan(self) -> str | None:
        """What the store's first write will do to its tables first (a PostgreSQL store
        without them, or of an older layout), as a sentence; None if nothing."""
        db = getattr(self.manager.store, "db", None)
        return db.plan() if db is not None else None

    def announce_schema(self) -> None:
        """A command that writes says on stderr what it will do to the tables first."""
        plan = self.schema_plan()
        if plan is not None:
            click.echo(f"PostgreSQL: this command will first {plan}.", err=True)


class _Rstripped:
    """A renderable whose lines end without whitespace (rich pads table lines to the width)."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for line in Segment.split_lines(console.render(self.renderable, options)):
            yield from _rstrip(line)
            yield Segment.line()


def _rstrip(line: list[Segment]) -> list[Segment]:
    line = list(line)
    while line and not line[-1].control:
        text, style, _ = line.pop()
        if text.rstrip():
            line.append(Segment(text.rstrip(), style))
            break
    return line


@dataclass
class Location:
    """--dir, --backend and --verbose as given before the command."""

    directory: str
    backend: str
    verbose: bool


def _default_dir() -> str:
    return os.environ.get("CHECKPOINT_DIR") or "checkpoints"


DIR_HELP = "Checkpoint directory."
BACKEND_HELP = ("'file' (the --dir directory), a Redis URL (redis://host:6379/0), a PostgreSQL "
                "URL (postgresql://user@host:5432/db) or memory:// (this process only).")
AFTER_HELP = " Also accepted before the command; given in both places, this one wins."


def pass_ctx(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command its Context, taking --dir and --backend after the command as well."""

    @functools.wraps(command)
    def with_context(*args: Any, directory: str | None, backend: str | None, **kwargs: Any) -> None:
        location = click.get_current_context().find_object(Location)
        assert location is not None
        backend = location.backend if backend is None else backend
        if backend != "file" and not backend.startswith(BACKEND_SCHEMES):
            raise click.UsageError(f"--backend {redact(repr(backend))}: use 'file', a redis:// or "
                                   f"postgresql:// URL or memory://.")
        ctx = Context(location.directory if directory is None else directory, backend,
                      location.verbose)
        command(ctx, *args, **kwargs)

    # Applied in reverse so that help lists --dir, then --backend, after the command's options.
    with_context = click.option("--backend", default=None, metavar="file|URL",
                                help=BACKEND_HELP + AFTER_HELP)(with_context)
    return click.option("--dir", "directory", default=None, metavar="PATH",
                        help=DIR_HELP + AFTER_HELP)(with_context)


class _Group(click.Group):
    """The command group: a CheckpointError no command handles (e.g. a Redis user whose
    ACL denies a command) is one clear line on stderr and exit code 1, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CheckpointError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(EXIT_NOT_FOUND)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dir", "directory", default=_default_dir, show_default="$CHECKPOINT_DIR or ./checkpoints",
              metavar="PATH", help=DIR_HELP + " Also accepted after the command.")
@click.option("--backend", default=lambda: os.environ.get("CHECKPOINT_BACKEND") or "file",
              show_default="file", metavar="file|URL",
              help=BACKEND_HELP + " Also accepted after the command.")
@click.option("-v", "--verbose", is_flag=True, help="Log what the command does.")
@click.pass_context
def main(ctx: click.Context, directory: str, backend: str, verbose: bool) -> None:
    """Inspect, report on, reset and clean up scrapy-checkpoint stages.

    --dir and --backend go before or after the command; given in both places,
    the one after the command wins.
    """
    ctx.obj = Location(directory, backend, verbose)


# -- helpers -------------------------------------------------------------------------------


def _views(ctx: Context) -> list[tuple[str, StageView | Exception]]:
    return read_views(ctx.manager)


@contextlib.contextmanager
def _stage_exits(ctx: Context, stage: str) -> Iterator[None]:
    """Say why ``stage`` cannot be used and exit: a bad name (usage), no such stage (not
    found), a damaged stage."""
    try:
        yield
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    except FileNotFoundError:
        click.echo(f"No checkpoint for stage {stage!r} in {ctx.manager.directory}.", err=True)
        sys.exit(EXIT_NOT_FOUND)
    except UnreadableCheckpointError as exc:  # not damaged: its message says what to do
        click.echo(str(exc), err=True)
        sys.exit(EXIT_DAMAGED)
    except CorruptCheckpointError as exc:
        click.echo(f"Stage {stage!r} is damaged: {exc}", err=True)
        sys.exit(EXIT_DAMAGED)


def _read(ctx: Context, stage: str) -> StageView:
    with _stage_exits(ctx, stage):
        return ctx.manager.read(stage)
    raise AssertionError("unreachable")  # (for type checkers: _stage_exits exits)


def _progress(view: StageView, explain: bool = True) -> str:
    """``processed/total (percent)``; with ``explain``, what a crawl's estimated total rests
    on (``show``: ``list`` keeps its cell short, or it takes the row at 80 columns)."""
    m = view.metrics()
    if not m.total:
        return f"{m.processed}/?"
    about = "~" if m.estimated else ""
    line = f"{m.processed}/{about}{m.total} ({about}{format_percent(m.percent)})"
    estimate = view.estimate
    if explain and estimate is not None and estimate.get("source") != "known":
        line += (f", of an estimated total ({estimate.get('source')}; {estimate.get('low')} "
                 f"found so far, at most about {estimate.get('high')})")
    return line


def _rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def _na(value: Any) -> str:
    return "n/a" if value is None else repr(value) if isinstance(value, str) else str(value)


def _dump(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


# -- read-only commands ----------------------------------------------------------------------


@main.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def list_(ctx: Context, as_json: bool) -> None:
    """One row per stage: status, progress, success rate, last update."""
    views = _views(ctx)
    shared = ctx.manager.shared_stages()
    if as_json:
        _dump(list_document(ctx.manager, views, shared))
    else:
        if not views:
            click.echo(f"No checkpoints in {ctx.manager.directory}.")
            sys.exit(EXIT_NOT_FOUND)
        table = ctx.table("STAGE", "STATUS", "PROGRESS", "SUCCESS", "UPDATED (UTC)")
        for stage, view in views:
            if isinstance(view, StageView):
                table.add_row(stage, view.display_status, _progress(view, explain=False),
                              _rate(view.metrics().success_rate),
                              f"{view.state.updated_at:%Y-%m-%d %H:%M}")
            else:
                table.add_row(stage, "damaged", "-", "-", "-")
        ctx.print(table)
        for stage, workers in shared.items():
            alive = sum(w.alive for w in workers)
            click.echo(f"\nShared stage {stage}: {len(workers)} worker(s), {alive} alive "
                       f"(one sub-stage {stage}.w.<worker> each)")
            ctx.print(_worker_rows(ctx, workers))
    if _damaged(views):
        sys.exit(EXIT_DAMAGED)


def _worker_rows(ctx: Context, workers: list[Worker]) -> Table:
    table = ctx.table("WORKER", "HOST", "PID", "STATUS", "ALIVE", "HEARTBEAT", "DONE", "PENDING")
    now = time.time()
    for w in workers:
        table.add_row(Text(printable(w.id)), Text(printable(w.host)), str(w.pid),
                      Text(printable(w.status + (f" by {w.adopted_by}" if w.adopted_by else ""))),
                      "yes" if w.alive else "no", f"{max(0.0, now - w.heartbeat):.0f} s ago",
                      str(w.done), str(w.pending))
    return table


def _damaged(views: list[tuple[str, StageView | Exception]]) -> bool:
    return damaged(views)


@main.command()
@click.argument("stage")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def show(ctx: Context, stage: str, as_json: bool) -> None:
    """Everything about one stage (for a shared stage: its workers)."""
    workers = ctx.manager.shared_stages().get(stage)
    if workers is not None and stage not in ctx.manager.stages():
        summary = ctx.manager.shared_summary(stage, workers)
        if as_json:
            _dump(shared_stage_document(ctx.manager, stage, workers))
        else:
            lost = summary["lost"]
            click.echo(f"Shared stage {stage}: {summary['status']}, {summary['done']} done, "
                       f"{summary['pending']} pending in {len(workers)} worker sub-stage(s) "
                       f"({stage}.w.<worker>; show one for its details)")
            if any(lost.values()):
                click.echo(f"Lost: {sum(lost.values())} unit(s) whose work cannot be done "
                           f"({describe_lost(lost)}).")
            if summary["unreadable"]:
                click.echo(f"Unreadable sub-stage(s): {', '.join(summary['unreadable'])} "
                           f"(show each for the reason).")
            if summary["damage"]:
                click.echo(f"Damage: {summary['damage']}")
            ctx.print(_worker_rows(ctx, workers))
        if summary["damage"]:
            sys.exit(EXIT_DAMAGED)
        return
    view = _read(ctx, stage)
    if as_json:
        _dump(stage_document(view))
    else:
        s, m = view.state, view.metrics()
        input_ok = input_file_matches(view)
        p = s.progress
        owner = s.owner
        rows: list[tuple[str, str]] = [
            ("Stage", s.stage),
            ("Status", view.display_status + (" (its process is gone; the next run recovers it)"
                                              if view.crashed else "")),
            ("Created / updated", f"{s.created_at:%Y-%m-%d %H:%M:%S} / {s.updated_at:%Y-%m-%d %H:%M:%S} UTC"),
            ("Progress", _progress(view)),
            ("Processed", f"{p.processed_items} (successful {p.successful_items}, failed "
                          f"{p.failed_items}, skipped {p.skipped_items})"),
            ("Success rate", _rate(m.success_rate)),
            ("Throughput", "n/a" if m.throughput is None else f"{m.throughput:.1f} items/sec"),
            ("ETA", format_duration(m.eta_seconds)),
            ("Resume point", f"last item {_na(s.last_processed_item)}, index "
                             f"{_na(s.last_processed_index)}, batch {_na(s.batch_id)}"),
            ("Units", f"{s.done_units} done, {s.pending_units} pending, {view.in_flight} in flight "
                      f"at the last stop, {s.recoveries} recoveries"),
        ]
        items = view.items
        if any(items[key] for key in ("scraped", "dropped", "errors")):
            types = ", ".join(f"{name} {n}" for name, n in items["types"].items())
            rows.append(("Items", f"{items['scraped']} scraped, {items['dropped']} dropped, "
                                  f"{items['errors']} errors (all runs)"
                                  + (f"; scraped by type: {types}" if types else "")))
        gone = {why: n for why, n in s.lost.items() if why not in LOST_REDONE_NEXT_RUN}
        redone = {why: n for why, n in s.lost.items() if why in LOST_REDONE_NEXT_RUN}
        if gone:
            rows.append(("Lost", f"{sum(gone.values())} unit(s) whose work cannot be done "
                                 f"({describe_lost(gone)}); the stage cannot complete: "
                                 f"reset it to start over"))
        if redone:
            rows.append(("Not done", f"{sum(redone.values())} unit(s) ({describe_lost(redone)}); "
                                     f"the next run does them again"))
        if s.error_message:
            rows.append(("Last error", f"{s.error_message} ({s.error_count} in all, "
                                       f"{s.last_error_time:%Y-%m-%d %H:%M:%S} UTC)"
                         if s.last_error_time else s.error_message))
        if s.input_file:
            match = {True: "unchanged", False: "CHANGED or unreadable (a resume will refuse)",
                     None: "no hash recorded"}[input_ok]
            rows.append(("Input file", f"{s.input_file} ({match})"))
        if s.output_file:
            rows.append(("Output file", s.output_file))
        if owner is not None:
            alive = "alive" if view.live_owner is not None else "gone"
            rows.append(("Owner", f"pid {owner.pid} on {owner.host}, since "
                                  f"{owner.started_at:%Y-%m-%d %H:%M:%S} UTC ({alive})"))
        d = view.disk
        rows.append(("Disk", f"journal {d.get('journal_bytes', 0):,} B, snapshots "
                             f"{d.get('snapshot_bytes', 0):,} B, state {d.get('state_bytes', 0):,} B"))
        if s.commit_latency_us:
            rows.append(("Commit latency", ", ".join(f"{k} {v} us" for k, v in s.commit_latency_us.items())))
        for problem in view.problems:
            rows.append(("Damage", problem))
        table = Table(box=None, show_header=False, pad_edge=False)
        table.add_column(style="bold" if ctx.tty else None, no_wrap=True)
        table.add_column()
        for key, value in rows:  # as plain text: a recorded '[/]' is no markup, ESC no escape
            table.add_row(key, Text(printable(value)))
        ctx.print(table)
    if view.problems:
        sys.exit(EXIT_DAMAGED)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_ctx
def report(ctx: Context, as_json: bool) -> None:
    """Every stage, then the whole pipeline."""
    views = _views(ctx)
    if as_json:
        _dump(report_document(ctx.manager, views))
    elif not views:
        click.echo(f"No checkpoints in {ctx.manager.directory}.")
        sys.exit(EXIT_NOT_FOUND)
    else:
        ctx.print(Text(ctx.manager.report()))
    if _damaged(views):
        sys.exit(EXIT_DAMAGED)


class _Finite(click.FloatRange):
    """A FloatRange that refuses nan (which passes every bound) and, unless ``infinite``,
    infinities: seconds that are slept or added to a time must be numbers a clock holds."""

    def __init__(self, *args: Any, infinite: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.infinite = infinite

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number) or (math.isinf(number) and not self.infinite):
            self.fail(f"{value!r} is not a {'' if self.infinite else 'finite '}number.",
                      param, ctx)
        return number


@main.command()
@click.argument("stage", required=False)
@click.option("--interval", default=1.0, show_default=True,
              type=_Finite(min=0, max=86400, min_open=True), help="Seconds between refreshes.")
@pass_ctx
def watch(ctx: Context, stage: str | None, interval: float) -> None:
    """Follow one stage (or the report) live until it stops being active, or Ctrl-C."""

    def active(view: StageView) -> bool:
        return view.state.status in ACTIVE_STATUSES and view.live_owner is not None

    #: The first commit seen of the live owner: (processed, commit time in seconds).
    since: list[tuple[int, float]] = []

    def measured(view: StageView, m: Metrics) -> Metrics:
        """``m`` with a throughput measured from the commits seen while the owner has not
        written its own yet (it does with the state file, every few seconds)."""
        if m.throughput is not None or not active(view):
            since.clear()
            return m
        now = (m.processed, view.state.updated_at.timestamp())
        if not since:
            since.append(now)
        (first, at), (processed, then) = since[0], now
        if processed > first and then > at:
            return replace(m, throughput=(processed - first) / (then - at))
        return m

    def frame() -> tuple[str, tuple[int, int] | None, bool]:
        """The frame's text, (completed, total) for a bar, and whether to go on."""
        if stage is None:
            views = [v for _, v in _views(ctx) if isinstance(v, StageView)]
            return ctx.manager.report(), None, any(active(v) for v in views)
        view = _read(ctx, stage)
        m = measured(view, view.metrics())
        line = f"{stage} [{view.display_status}] {m.progress_line()}"
        still = active(view)
        if not still:  # the last frame: what is damaged, as show says it
            line += "".join(f"\n  warning: {problem}" for problem in view.problems)
        return line, ((m.processed, m.total) if m.total else None), still

    def width() -> int:
        if ctx.tty:  # the terminal's own width, read again at each frame (it may be resized)
            try:
                return os.get_terminal_size(sys.stdout.fileno()).columns or ctx.console.width
            except OSError:
                pass
        return ctx.console.width if ctx.sized else 80  # $COLUMNS, else 80

    def render() -> tuple[RenderableType, bool]:
        text, bar, still = frame()
        ctx.console.width = columns = width()
        body = Text(_fit(text, columns))
        if bar is None:
            return body, still
        completed, total = bar
        return Group(body, ProgressBar(total=total, completed=completed,
                                       width=min(60, columns))), still

    try:
        if ctx.tty:
            with Live(render()[0], console=ctx.console, auto_refresh=False) as live:
                while True:
                    renderable, still = render()
                    live.update(renderable, refresh=True)
                    if not still:
                        break
                    time.sleep(interval)
        else:
            while True:
                text, _, still = frame()
                click.echo(_fit(text, width()))
                if not still:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; one other than loopback needs a token.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port, printed at start).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the bearer token (else $SCRAPY_CHECKPOINT_TOKEN). Needed for "
                   "actions, and for any request when not on loopback.")
@click.option("--stuck-after", default=300.0, show_default=True,
              type=_Finite(min=0, min_open=True),
              help="Seconds without a commit after which a running stage is called stuck.")
@click.option("--sample-interval", default=5.0, show_default=True,
              type=_Finite(min=0.1, max=86400),
              help="Seconds between two samples of every stage (history and chart).")
@pass_ctx
def serve(ctx: Context, host: str, port: int, token_file: str | None, stuck_after: float,
          sample_interval: float) -> None:
    """Serve a live page, a JSON API and Prometheus metrics (docs/server.md)."""
    try:
        from .server import ServerConfig, load_token, run
    except ImportError as exc:
        click.echo(f"The status server needs the 'server' extra ({exc.name} is missing): "
                   f"pip install 'scrapy-checkpoint[server]'.", err=True)
        sys.exit(EXIT_NOT_FOUND)
    try:
        config = ServerConfig(host=host, port=port, token=load_token(token_file),
                              stuck_after=stuck_after, sample_interval=sample_interval)
        config.check_bind()
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_USAGE)
    try:
        run(ctx.manager, config)
    except OSError as exc:
        click.echo(f"Cannot listen on {host}:{port}: {exc.strerror or exc}.", err=True)
        sys.exit(EXIT_NOT_FOUND)


def _fit(text: str, width: int) -> str:
    """Wrap each line of text to width terminal cells at spaces (a longer word is cut), its
    continuation lines indented two spaces more than the line."""
    width = max(width, 2)  # a wide character takes two cells
    out: list[str] = []
    for line in text.expandtabs().splitlines():
        if cell_len(line) <= width:
            out.append(line)
            continue
        body = line.lstrip(" ")
        lead = line[:len(line) - len(body)]
        if len(lead) + 2 > width // 2:  # too narrow to indent
            lead = ""
        hang = lead + "  " if len(lead) + 2 <= width // 2 else ""
        first = _wrap(body, width - len(lead))[0]
        out.append(lead + first)
        rest = body[len(first):].lstrip(" ")
        if rest:
            out += [hang + piece for piece in _wrap(rest, width - len(hang))]
    return "\n".join(out)


def _wrap(text: str, width: int) -> list[str]:
    return [line.plain.rstrip() for line in Text(text).wrap(_MEASURE, width, overflow="fold")]


#: The width of piped output without $COLUMNS: wide enough for any table's natural width.
PIPED_WIDTH = 4096
_MEASURE = Console(width=80)  # only measures; never prints


@main.command()
@click.option("--output", "-o", "output", required=True, type=click.Path(dir_okay=False),
              help="File to write the JSON to ('-' for stdout).")
@pass_ctx
def export(ctx: Context, output: str) -> None:
    """Write every stage as one JSON document (schema in docs/cli.md)."""
    views = _views(ctx)
    doc = {"schema_version": SCHEMA_VERSION, "checkpoint_dir": str(ctx.manager.directory),
           "stages": entries(views)}
    text = json.dumps(doc, indent=2, default=str) + "\n"
    if output == "-":
        click.echo(text, nl=False)
    else:
        try:
            write_export(output, text, ctx.manager.store)
        except OSError as exc:
            fix = ("free disk space, or " if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")
            click.echo(f"Cannot write {output}: {exc.strerror or exc}. Nothing was written (an "
                       f"earlier export there is kept); {fix}give a path this user may write, "
                       f"or '-' for standard output.", err=True)
            sys.exit(EXIT_NOT_FOUND)
        click.echo(f"Exported {len(views)} stage(s) to {output}.")


# -- commands that change checkpoints -------------------------------------------------------------


@main.command()
@click.argument("stage")
@click.option("--force", is_flag=True, help="Do not ask; reset even a stage whose owner is alive.")
@pass_ctx
def reset(ctx: Context, stage: str, force: bool) -> None:
    """Delete a stage (or 'all') so its next run starts from nothing."""
    manager = ctx.manager
    ctx.announce_schema()
    if stage != "all":
        try:
            check_stage_name(stage)
        except ConfigError as exc:
            click.echo(str(exc), err=True)
            sys.exit(EXIT_USAGE)
    known = manager.stages()
    shared = manager.shared_stages()  # read once: each call reads every worker record
    stages = known if stage == "all" else [stage]
    if stage != "all" and stage not in known and stage in shared:
        if is_terminal(sys.stdin) and not force:
            click.confirm(f"Reset shared stage {stage} and all its workers' sub-stages? Their "
                          f"recorded progress is deleted", abort=True)
        try:
            removed = manager.reset_shared(stage)
        except CheckpointLockedError as exc:
            click.echo(f"{exc} Stop every worker of the stage first.", err=True)
            sys.exit(EXIT_NOT_FOUND)
        click.echo(f"Reset shared stage {stage} ({len(removed)} worker sub-stage(s)).")
        return
    if stage != "all" and stage not in known:
        click.echo(f"No checkpoint for stage {stage!r} in {manager.directory}.", err=True)
        sys.exit(EXIT_NOT_FOUND)
    shared_refused = False
    if stage == "all" and shared:
        # A worker's sub-stage goes with its shared stage, claims and all, never alone.
        stages = [s for s in stages if (shared_stage_of(s) or ("",))[0] not in shared]
        if is_terminal(sys.stdin) and not force:
            click.confirm(f"Reset shared stage(s) {', '.join(shared)} and their workers' "
                          f"sub-stages?", abort=True)
        for name in shared:
            try:
                removed = manager.reset_shared(name)
            except CheckpointLockedError as exc:
                click.echo(f"{exc} Stop every worker of the stage first.", err=True)
                shared_refused = True
                continue
            click.echo(f"Reset shared stage {name} ({len(removed)} worker sub-stage(s)).")
        if not stages:
            sys.exit(EXIT_NOT_FOUND if shared_refused else EXIT_OK)
    if not stages:
        click.echo(f"No checkpoints in {manager.directory}.")
        sys.exit(EXIT_NOT_FOUND)
    live = {s: o for s in stages if (o := manager.store.live_owner(s)) is not None}
    if live and not force:
        for s, owner in live.items():
            click.echo(f"Stage {s!r} is in use by pid {owner.pid} on {owner.host}; not reset. "
                       f"Stop that process first, or use --force.", err=True)
        stages = [s for s in stages if s not in live]
        if not stages:
            sys.exit(EXIT_NOT_FOUND)
    if is_terminal(sys.stdin) and not force:
        what = stages[0] if len(stages) == 1 else f"{len(stages)} stages ({', '.join(stages)})"
        click.confirm(f"Reset {what}? Its recorded progress is deleted", abort=True)
    refused = (bool(live) and not force) or shared_refused
    for s in stages:
        try:
            manager.reset(s)
        except ConfigError as exc:  # a worker's sub-stage of a shared stage
            click.echo(str(exc), err=True)
            sys.exit(EXIT_USAGE)
        except (CheckpointWriteError, CorruptCheckpointError) as exc:
            # e.g. its data directory is a symbolic link, its lock file a directory
            click.echo(f"{exc} Stage {s!r} not reset.", err=True)
            refused = True
            continue
        except CheckpointLockedError as exc:
            if not force:  # its owner started while we asked
                click.echo(f"{exc} Not reset.", err=True)
                refused = True
                continue
            manager.store.remove(s)
            click.echo(f"Stage {s!r} reset while its owner runs: that process keeps its progress "
                       f"in memory and may write it back; stop it.", err=True)
        click.echo(f"Reset {s}.")
    if refused:
        sys.exit(EXIT_NOT_FOUND)


@main.command()
@click.argument("stage")
@click.option("--failed", is_flag=True, required=True,
              help="Requeue the units that finished with a failure (required: the only kind).")
@pass_ctx
def requeue(ctx: Context, stage: str, failed: bool) -> None:
    """Make a stage's failed units pending again: its next run does them again."""
    ctx.announce_schema()
    with _stage_exits(ctx, stage):
        try:
            n = ctx.manager.requeue_failed(stage)
        except CheckpointLockedError as exc:
            click.echo(f"{exc} Not requeued: stop that process first.", err=True)
            sys.exit(EXIT_NOT_FOUND)
    if not n:
        click.echo(f"Stage {stage} has no failed units to requeue.")
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"Requeued {n} failed unit(s) of {stage}: its next run does them again.")


@main.command()
@click.option("--days", type=_Finite(min=0, infinite=True), default=None,
              help="Remove stages not updated for this many days (default: 1, the TTL).")
@click.option("--dry-run", is_flag=True, help="Only print what would be removed.")
@pass_ctx
def cleanup(ctx: Context, days: float | None, dry_run: bool) -> None:
    """Remove old checkpoints no live process owns; print what and the space freed."""
    if not dry_run:
        ctx.announce_schema()
    removed = ctx.manager.cleanup(older_than_days=days, dry_run=dry_run)
    verb = "Would remove" if dry_run else "Removed"
    for stage, size in sorted(removed.items()):
        click.echo(f"{verb} {stage} ({size:,} bytes)")
    if not removed:
        click.echo("Nothing to clean up.")
        sys.exit(EXIT_NOT_FOUND)
    click.echo(f"{verb} {len(removed)} stage(s), {sum(removed.values()):,} bytes.")


@main.command()
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@click.option("--dry-run", is_flag=True, help="Only print what would be done.")
@pass_ctx
def migrate(ctx: Context, yes: bool, dry_run: bool) -> None:
    """Create or upgrade the tables of a PostgreSQL store now, saying what first.

    Runs and writers do it by themselves on their first write (and log it); this
    command lets a database owner do it beforehand, e.g. with a role that may create.
    """
    store = ctx.manager.store
    db = getattr(store, "db", None)
    if db is None:
        click.echo(f"{store.location} is not a PostgreSQL store: it has no tables to create.")
        return
    plan = db.plan()
    if plan is None:
        click.echo(f"The tables in schema {db.schema!r} of {db.location} are up to date "
                   f"(layout version {db.version}).")
        return
    click.echo(f"This will {plan}.")
    if dry_run:
        return
    if not yes:
        click.confirm("Go on?", abort=True)
    db.create_schema()
    click.echo(f"Done: the tables in schema {db.schema!r} are of layout version {db.version}.")


def run(argv: list[str] | None = None, *, prog_name: str = "scrapy-checkpoint",
        default_dir: str | None = None) -> int:
    """Run the CLI and return its exit code (used by the Scrapy command)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if default_dir is not None and "--dir" not in args:
        args = ["--dir", default_dir, *args]
    try:
        main.main(args=args, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return EXIT_NOT_FOUND
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except SystemExit as exc:
        return int(exc.code or 0)
    return EXIT_OK



if __name__ == "__main__":
    main()
