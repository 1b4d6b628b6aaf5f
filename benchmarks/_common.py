"""Helpers shared by the benchmark scripts: the run header, medians, aligned tables, child
processes (their environment, a web server in its own process, log time stamps), and the
generated Scrapy project and crawl configurations of the crawl benchmarks."""

from __future__ import annotations

import os
import platform
import select
import shlex
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def command_line() -> str:
    """The exact command that started this script."""
    return shlex.join([sys.executable, *sys.argv])


def filesystem_of(path: str) -> str:
    """``<type> on <device>`` of the mount holding ``path`` (Linux), else ``unknown``."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "unknown"
    real = os.path.realpath(path)
    best = ("", "unknown", "?")
    for line in mounts:
        device, mount_point, fs_type = line.split()[:3]
        inside = real == mount_point or real.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best[0]):
            best = (mount_point, fs_type, device)
    return f"{best[1]} on {best[2]}"


def code_version() -> str:
    """The git commit of the code measured, and whether the work tree differs from it."""
    repo = REPO
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain",
                                "scrapy_checkpoint"], capture_output=True, text=True,
                               check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{sha}" + (" + uncommitted changes in scrapy_checkpoint/" if dirty else "")


def print_header(title: str, temp_parent: str) -> None:
    """Print what ran, where, and with what, so figures can be compared later."""
    print(f"# {title}")
    print(f"command:  {command_line()}")
    print(f"machine:  {os.cpu_count()} CPUs, {platform.machine()}, {platform.platform()}")
    print(f"python:   {platform.python_implementation()} {platform.python_version()}")
    print(f"code:     {code_version()}")
    print(f"load:     {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1, 5, 15 min averages)")
    print(f"temp dir: {temp_parent} ({filesystem_of(temp_parent)})")
    print()


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def spread(values: Sequence[float], fmt: str = ",.0f") -> str:
    """``min..max`` of the rounds, to show how noisy a median is."""
    return f"{min(values):{fmt}}..{max(values):{fmt}}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """A plain-text table: the first ``left`` columns left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (str(c).ljust(w) if i < left else str(c).rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """The same table in Markdown (pipes; the first ``left`` columns left-aligned)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        padded = (str(c).ljust(w) if i < left else str(c).rjust(w)
                  for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ("-" if i < left else ":"))
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def least_squares(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float] | None:
    """Slope and intercept of the least-squares line through the points (None below two
    distinct x)."""
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    slope = (sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
             / sum((x - mx) ** 2 for x in xs))
    return slope, my - slope * mx


def wait_to_be_killed(cp: Any) -> None:
    """The crash point of a stage builder: make everything durable, say so, and wait for
    the parent's SIGKILL."""
    print("updates done", flush=True)
    cp.save(force=True)
    print("saved", flush=True)
    time.sleep(3600)


# -- child processes (bench_crawl.py, bench_eta.py, bench_frontier.py) ------------------------


def slug(name: str) -> str:
    """A directory name for a configuration or case."""
    return "".join(c if c.isalnum() else "_" for c in name)


_compiled = False


def child_env() -> dict[str, str]:
    """This environment, with the code measured (this checkout) first on PYTHONPATH and no
    Scrapy settings module of the caller's.

    The checkout's package is compiled to bytecode first (once per script), and children may
    write bytecode (``PYTHONDONTWRITEBYTECODE`` removed): a package installed by pip has its
    ``.pyc`` files, as Scrapy has in the virtualenv. Without them every crawl compiled the
    add-on's 21,000 lines from source at its start (about 90 ms of CPU on this machine, in
    every start-up and resume figure) while Scrapy's own modules loaded precompiled."""
    global _compiled
    if not _compiled:
        import compileall

        compileall.compile_dir(str(REPO / "scrapy_checkpoint"), quiet=1)
        _compiled = True
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("SCRAPY_SETTINGS_MODULE", None)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def log_time(log: str, needle: str) -> float | None:
    """The Unix time stamped on the first log line containing ``needle`` (the crawls' LOG_FORMAT
    starts each line with ``%(created).6f``)."""
    for line in log.splitlines():
        if needle in line:
            return float(line.split(" ", 1)[0])
    return None


class Server:
    """A web server in its own process (and session): ``cmd`` starts it, typically
    ``[PYTHON, script, "--worker", "serve", *args]``; it prints its port on its first line of
    stdout once it listens on 127.0.0.1 (within ``timeout`` seconds) and serves until SIGTERM."""

    def __init__(self, cmd: Sequence[str], timeout: float = 60) -> None:
        self.proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, text=True, env=child_env(),
                                     start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        port = self.proc.stdout.readline().strip() if ready else ""
        if not port.isdigit():
            self.close()
            raise RuntimeError(f"the web server did not start (said {port!r})")
        self.url = f"http://127.0.0.1:{port}"

    def cpu_seconds(self) -> float:
        """user + system CPU time the server has used so far."""
        return process_cpu_seconds(Path(f"/proc/{self.proc.pid}/stat"))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- Redis (bench_redis.py, and the Redis column of bench_crawl.py) ---------------------------

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def default_redis_url() -> str:
    """$REDIS_URL, else the local Redis."""
    return os.environ.get("REDIS_URL", DEFAULT_REDIS_URL)


def with_prefix(url: str, prefix: str) -> str:
    """``url`` with ``?prefix=`` (the store's key prefix) added."""
    return f"{url}{'&' if '?' in url else '?'}prefix={prefix}"


def delete_keys(client: Any, pattern: str) -> int:
    """Delete every key matching ``pattern`` (SCAN, then UNLINK); return how many there were."""
    keys = list(client.scan_iter(match=pattern, count=1000))
    for i in range(0, len(keys), 1000):
        client.unlink(*keys[i:i + 1000])
    return len(keys)


def process_cpu_seconds(stat: Path) -> float:
    """user + system CPU time so far of the process whose ``/proc/<pid>/stat`` is ``stat``."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def local_redis_stat(client: Any) -> Path | None:
    """``/proc/<pid>/stat`` of the Redis server if it runs on this machine, else None."""
    pid = client.info("server").get("process_id")
    try:
        if Path(f"/proc/{pid}/comm").read_text().startswith("redis"):
            return Path(f"/proc/{pid}/stat")
    except OSError:
        pass
    return None


# -- PostgreSQL (bench_postgres.py, and the PostgreSQL column of bench_crawl.py) --------------

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def default_postgres_url() -> str:
    """$POSTGRES_URL, else the local PostgreSQL."""
    return os.environ.get("POSTGRES_URL", DEFAULT_POSTGRES_URL)


def with_schema(url: str, schema: str) -> str:
    """``url`` with ``?schema=`` (the store's schema) added."""
    return f"{url}{'&' if '?' in url else '?'}schema={schema}"


def drop_schema(url: str, schema: str) -> bool:
    """``DROP SCHEMA ... CASCADE`` of ``schema`` at ``url``; True if it existed."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone()
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
            psycopg.sql.Identifier(schema)))
    return found is not None


def local_postgres_cpu_seconds() -> float | None:
    """user + system CPU time so far of the PostgreSQL server on this machine: every live
    ``postgres`` process (postmaster, background workers, backends) plus the postmaster's
    reaped children (backends that exited: ``cutime`` + ``cstime``). Server-wide: other
    clients count too. None if no ``postgres`` process is visible."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, found = 0.0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if (stat.parent / "comm").read_text().strip() != "postgres":
                continue
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parent = Path(f"/proc/{fields[1]}/comm")
            postmaster = not (parent.exists() and parent.read_text().strip() == "postgres")
        except OSError:
            continue
        found = True
        total += (int(fields[11]) + int(fields[12])) / ticks
        if postmaster:
            total += (int(fields[13]) + int(fields[14])) / ticks
    return total if found else None


# -- crawls of a generated Scrapy project (bench_crawl.py, bench_frontier.py) -----------------

ADDON = '{"scrapy_checkpoint.Addon": 100}'

#: The generated project's settings common to every crawl benchmark.
SETTINGS = {
    "BOT_NAME": "benchproject",
    "SPIDER_MODULES": ["benchproject.spiders"],
    "ROBOTSTXT_OBEY": False,
    "REMOTE_CONTROL_ENABLED": False,
    "TELNETCONSOLE_ENABLED": False,
    "CONCURRENT_REQUESTS": 16,
    "CONCURRENT_REQUESTS_PER_DOMAIN": 16,
    "DOWNLOAD_DELAY": 0,
    "RETRY_ENABLED": False,
    "LOG_LEVEL": "INFO",
    "LOG_FORMAT": "%(created).6f [%(name)s] %(levelname)s: %(message)s",
}


@dataclass(frozen=True)
class Config:
    name: str
    #: extra scrapy arguments; "{run}" is the crawl's own directory, "{redis}" a Redis URL
    #: with a key prefix of its own (bench_crawl.py's redis_backend), "{postgres}" a
    #: PostgreSQL URL with a schema of its own (bench_crawl.py's postgres_backend)
    args: tuple[str, ...]

    @property
    def redis(self) -> bool:
        return any("{redis}" in a for a in self.args)

    @property
    def postgres(self) -> bool:
        return any("{postgres}" in a for a in self.args)


PLAIN = Config("plain Scrapy", ())
JOBDIR = Config("JOBDIR", ("-s", "JOBDIR={run}/jobdir"))
JOBDIR_SQLITE = Config("JOBDIR + SQLite queues", (
    "-s", "JOBDIR={run}/jobdir", "-s", "SCHEDULER_DISK_QUEUE=scrapy.squeues.PickleLifoSQLiteQueue"))
CHECKPOINT = Config("checkpoint (default)", (
    "-s", f"ADDONS={ADDON}", "-s", "CHECKPOINT_DIR={run}/checkpoints"))


def write_project(root: Path, files: Mapping[str, str], settings: Mapping[str, Any]) -> Path:
    """A Scrapy project ``benchproject`` under ``root``: ``files`` maps paths inside the
    package (``spiders/site.py``) to their code; ``settings`` becomes its settings.py."""
    package = root / "benchproject"
    (package / "spiders").mkdir(parents=True)
    (root / "scrapy.cfg").write_text("[settings]\ndefault = benchproject.settings\n")
    (package / "__init__.py").write_text("")
    (package / "spiders" / "__init__.py").write_text("")
    for name, code in files.items():
        (package / name).write_text(code)
    (package / "settings.py").write_text(
        "".join(f"{name} = {value!r}\n" for name, value in settings.items()))
    return root


def run_waited(cmd: list[str], cwd: Path, **env: str) -> tuple[int, float, float]:
    """Run ``cmd``; return its exit code, wall time and CPU time (its own, from wait4)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**child_env(), **env}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, wall, usage.ru_utime + usage.ru_stime


# -- interleaved rounds of update loops (bench_redis.py, bench_postgres.py) -------------------


class LoopSample(Protocol):
    """What :func:`measure_rounds` reads of one measured run."""

    updates: int
    seconds: float
    cpu_seconds: float
    error: str | None

    @property
    def rate(self) -> float: ...


S = TypeVar("S", bound=LoopSample)


def describe_sample(s: LoopSample) -> str:
    """One run on one line: updates/s, updates, seconds, CPU, the load, a failure."""
    line = (f"{s.rate:9,.0f} upd/s  {s.updates:>9,} upd  {s.seconds:6.2f} s  "
            f"CPU {s.cpu_seconds:6.2f} s  load {os.getloadavg()[0]:.2f}")
    return line + (f"  FAILED: {s.error}" if s.error else "")


def measure_rounds(runs: Mapping[str, Callable[[], S]], rounds: int,
                   width: int = 36) -> dict[str, list[S]]:
    """Run every configuration once per round, interleaved (order rotated each round),
    printing each run."""
    names = list(runs)
    samples: dict[str, list[S]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            sample = runs[name]()
            samples[name].append(sample)
            print(f"round {r + 1}: {name:<{width}} {describe_sample(sample)}", flush=True)
    print()
    return samples


def paired_rates(samples: Mapping[str, Sequence[LoopSample]], num: str, den: str) -> list[float]:
    """Per round, the rate of ``num`` over that of ``den`` (rounds where either failed left
    out)."""
    return [a.rate / b.rate for a, b in zip(samples[num], samples[den], strict=True)
            if not (a.error or b.error)]
