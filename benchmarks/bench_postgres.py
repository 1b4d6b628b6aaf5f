"""Benchmark: completions per second of a checkpoint kept in PostgreSQL, against naive psycopg.

What is measured
    Completions per second of a loop that marks one unit done by index per
    update, as in ``bench_updates.py`` and ``bench_redis.py``:
    ``cp.update(processed=1, successful=1, index=i)`` for ``i in range(N)``, with
    ``log_every=0``. N is ``--n`` (default 100,000) for (a), (a0), (d) and (e); (b),
    (c), (c2) and (c0), which make a transaction (and a WAL flush on the server) per
    update, run N / 10. Configurations, interleaved within each round (in a rotated order):

      (a) checkpoint, postgresql, default
                                     EnhancedCheckpoint("postgresql://...?schema=...",
                                     stage), default options (save_every=10,
                                     save_interval=1 s): one journal group per 10
                                     updates, one INSERT statement (one round trip, one
                                     transaction) per group
      (b) checkpoint, postgresql, save_every=1
                                     the same, one group (one transaction) per update
      (c) naive psycopg, 2 statements
                                     what a user would write by hand, on one autocommit
                                     connection: per update ``INSERT INTO done (stage,
                                     idx)`` then ``UPDATE counters SET processed =
                                     processed + 1, last_index = i``: two round trips,
                                     two transactions
      (c2) naive psycopg, 1 statement
                                     the same two writes in one statement (``WITH d AS
                                     (INSERT ...) UPDATE ...``): one round trip, one
                                     transaction per update
      (a0) checkpoint, postgresql, default, synchronous_commit=off
                                     (a) with ``options=-csynchronous_commit=off`` in the
                                     URL: a COMMIT does not wait for the server's WAL
                                     flush (fsync). Not a durable setting (a server crash
                                     may lose the last commits); here to show what the
                                     wait for the WAL flush costs
      (c0) naive psycopg, 1 statement, synchronous_commit=off
                                     (c2) with ``SET synchronous_commit = off``, for the
                                     same reason
      (d) checkpoint, file store     EnhancedCheckpoint(tempdir, stage), default options
                                     (fsync mode), for reference
      (e) checkpoint, redis, default EnhancedCheckpoint("redis://...?prefix=...", stage),
                                     default options, for reference (left out if Redis
                                     cannot be reached)

    ``start()`` happens before the clock starts and the loop's queued background
    work is drained after it stops; ``close()`` is timed on its own. The
    checkpoint configurations open their own store from the URL, as
    ``EnhancedCheckpoint(url, stage)`` does for a user.

Per configuration
    median completions/s over ``--rounds`` rounds and the min..max spread; ratios
    of the medians to (b) and to (c), and the median of the per-round (paired)
    ratios; completions per CPU-second of this process (all its threads); the CPU
    time of the PostgreSQL server per completion when it runs on this machine
    (every ``postgres`` process, plus the backends that exited, from /proc;
    server-wide, so other clients' work lands in it too).

Round trips
    One more untimed run of each PostgreSQL configuration counts what psycopg
    sends, from every thread (the checkpoint's I/O thread included), by wrapping
    ``psycopg.Connection.wait``: psycopg runs every exchange with the server
    (a statement, BEGIN, COMMIT, a setting) through it, one request and its
    reply, i.e. one round trip. They are labelled by the operation (execute,
    begin, commit, ...). Transactions are counted on the client too: a statement
    on an autocommit connection outside a transaction block, or the end of a
    transaction block. Connecting is not counted; the run's set-up and clean-up
    are (the store's schema check and creation, the naive tables, the schema drop:
    a few dozen round trips per run, spread over its updates).

Schemas
    Every PostgreSQL run uses a fresh schema ``bench_pg_<pid>_<n>`` (``?schema=`` in
    the URL for the checkpoint) and drops it afterwards; a last sweep at exit drops
    anything left under ``bench_pg_<pid>_``. The Redis reference row uses a fresh
    key prefix, deleted after each run.

    python benchmarks/bench_postgres.py [--rounds 5] [--n 100000] [--quick]
                                        [--postgres URL] [--redis URL] [--dir DIR]

    The PostgreSQL URL comes from ``--postgres``, else $POSTGRES_URL, else
    postgresql://postgres@127.0.0.1:5432/postgres; the Redis URL from ``--redis``,
    else $REDIS_URL, else redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from _common import (
    default_postgres_url,
    default_redis_url,
    delete_keys,
    drop_schema,
    local_postgres_cpu_seconds,
    measure_rounds,
    median,
    paired_rates,
    print_header,
    spread,
    table,
    with_prefix,
    with_schema,
)
from psycopg import sql

import scrapy_checkpoint
from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.errors import CheckpointError

STAGE = "bench"
SAVE_EVERY = 10  # the default save_every
#: (b), (c) and (c2) make a transaction per update: they run n / 10 updates.
PER_UPDATE_DIVISOR = 10

A = "(a) checkpoint, postgresql, default"
B = "(b) checkpoint, postgresql, save_every=1"
C = "(c) naive psycopg, 2 statements"
C2 = "(c2) naive psycopg, 1 statement"
A0 = "(a0) (a), synchronous_commit=off"
C0 = "(c0) (c2), synchronous_commit=off"
D = "(d) checkpoint, file store"
E = "(e) checkpoint, redis, default"
POSTGRES_CONFIGS = (A, B, C, C2, A0, C0)
#: Updates per journal group of the checkpoint configurations.
GROUP_SIZE = {A: SAVE_EVERY, B: 1, A0: SAVE_EVERY}
#: libpq's ``options`` in a URL: the session does not wait for the WAL flush at COMMIT.
NO_SYNC = "options=-csynchronous_commit%3Doff"

_schemas = itertools.count()


def fresh_name() -> str:
    return f"bench_pg_{os.getpid()}_{next(_schemas)}"


@dataclass
class Sample:
    """One measured run of one configuration."""

    updates: int
    seconds: float
    cpu_seconds: float
    close_seconds: float
    postgres_cpu_seconds: float | None = None
    #: The CheckpointError that ended the loop early, if one did.
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.updates / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.updates / self.cpu_seconds


@contextmanager
def postgres_cpu() -> Iterator[dict[str, float | None]]:
    """Around a loop: the local PostgreSQL server's CPU time (None if not on this machine)."""
    out: dict[str, float | None] = {}
    before = local_postgres_cpu_seconds()
    yield out
    after = local_postgres_cpu_seconds()
    out["cpu"] = None if before is None or after is None else after - before


# -- the configurations -------------------------------------------------------------------------


def run_checkpoint(location: str, n: int, **options: Any) -> Sample:
    """``n`` updates of a fresh stage at ``location`` (a directory or a store URL). A
    CheckpointError raised by an update ends the loop and is recorded in the sample."""
    cp = EnhancedCheckpoint(location, STAGE, log_every=0, **options)
    cp.start()
    cp.drain_io()
    update = cp.update
    i = done = 0
    error = None
    with postgres_cpu() as m:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            for i in range(n):
                update(processed=1, successful=1, index=i)
            done = n
        except CheckpointError as exc:
            done, error = i, f"{type(exc).__name__}: {exc}"
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        if error is None:
            cp.drain_io()
    t0 = time.perf_counter()
    try:
        cp.close()
    except CheckpointError:
        if error is None:
            raise
    return Sample(done, seconds, cpu, time.perf_counter() - t0, m["cpu"], error)


def run_ours_postgres(url: str, n: int, *, no_sync: bool = False, **options: Any) -> Sample:
    schema = fresh_name()
    location = with_schema(url, schema) + (f"&{NO_SYNC}" if no_sync else "")
    try:
        return run_checkpoint(location, n, **options)
    finally:
        drop_schema(url, schema)


def run_file(parent: str, n: int) -> Sample:
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        return run_checkpoint(tmp, n)


def run_redis(url: str, n: int) -> Sample:
    import redis

    prefix = fresh_name()
    try:
        return run_checkpoint(with_prefix(url, prefix), n)
    finally:
        client = redis.Redis.from_url(url)
        try:
            delete_keys(client, f"{prefix}:*")
        finally:
            client.close()


NAIVE_TABLES = """
CREATE SCHEMA {s};
CREATE TABLE {s}.done (stage text NOT NULL, idx bigint NOT NULL, PRIMARY KEY (stage, idx));
CREATE TABLE {s}.counters (stage text PRIMARY KEY, processed bigint NOT NULL,
                           last_index bigint);
"""


def run_naive(url: str, n: int, *, one_statement: bool, no_sync: bool = False) -> Sample:
    """Per update, on one autocommit connection: INSERT the unit's row, UPDATE the stage's
    counters row (two statements, or one with a CTE); close is closing the connection."""
    schema = fresh_name()
    s = sql.Identifier(schema)
    conn = psycopg.connect(url, autocommit=True)
    try:
        if no_sync:
            conn.execute("SET synchronous_commit = off")
        conn.execute(sql.SQL(NAIVE_TABLES).format(s=s))
        conn.execute(sql.SQL("INSERT INTO {s}.counters VALUES (%s, 0, NULL)").format(s=s), [STAGE])
        insert = sql.SQL("INSERT INTO {s}.done (stage, idx) VALUES (%s, %s)").format(s=s)
        bump = sql.SQL("UPDATE {s}.counters SET processed = processed + 1, last_index = %s "
                       "WHERE stage = %s").format(s=s)
        both = sql.SQL("WITH d AS (INSERT INTO {s}.done (stage, idx) VALUES (%s, %s)) "
                       "UPDATE {s}.counters SET processed = processed + 1, last_index = %s "
                       "WHERE stage = %s").format(s=s)
        execute = conn.execute
        with postgres_cpu() as m:
            t0, c0 = time.perf_counter(), time.process_time()
            if one_statement:
                for i in range(n):
                    execute(both, (STAGE, i, i, STAGE))
            else:
                for i in range(n):
                    execute(insert, (STAGE, i))
                    execute(bump, (i, STAGE))
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        row = conn.execute(sql.SQL("SELECT processed, (SELECT count(*) FROM {s}.done) "
                                   "FROM {s}.counters").format(s=s)).fetchone()
        if row != (n, n):
            raise RuntimeError(f"the naive baseline lost updates: {row}")
        t0 = time.perf_counter()
        conn.close()
        return Sample(n, seconds, cpu, time.perf_counter() - t0, m["cpu"])
    finally:
        conn.close()
        drop_schema(url, schema)


def per_update_n(n: int) -> int:
    """Updates per run of the configurations with a transaction per update (b, c, c2)."""
    return max(n // PER_UPDATE_DIVISOR, 1)


def configurations(url: str, redis_url: str | None, n: int, parent: str
                   ) -> dict[str, Callable[[], Sample]]:
    m = per_update_n(n)
    runs: dict[str, Callable[[], Sample]] = {
        A: lambda: run_ours_postgres(url, n),
        B: lambda: run_ours_postgres(url, m, save_every=1),
        C: lambda: run_naive(url, m, one_statement=False),
        C2: lambda: run_naive(url, m, one_statement=True),
        A0: lambda: run_ours_postgres(url, n, no_sync=True),
        C0: lambda: run_naive(url, m, one_statement=True, no_sync=True),
        D: lambda: run_file(parent, n),
    }
    if redis_url is not None:
        runs[E] = lambda: run_redis(redis_url, n)
    return runs


# -- round trips, counted in psycopg ------------------------------------------------------------


def _operation(gen: Any) -> str:
    """A short label for the psycopg operation generator ``gen``."""
    name = str(getattr(gen, "__qualname__", None) or getattr(gen, "__name__", "?"))
    name = name.rsplit(".", 1)[-1].strip("_").removesuffix("_gen")
    return {"enter": "begin", "exit": "commit/rollback"}.get(name, name)


class RoundTripCounter:
    """While installed, counts ``psycopg.Connection.wait`` calls of every connection in this
    process, by operation (one call: one request and the reply it waits for), and the
    transactions they end (a statement run in autocommit outside a transaction block, a
    COMMIT, the end of a ``transaction()`` block)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.transactions = 0
        self._lock = threading.Lock()
        self._real: Callable[..., Any] = psycopg.Connection.wait

    def __enter__(self) -> RoundTripCounter:
        real, counts, lock = self._real, self.counts, self._lock
        idle = psycopg.pq.TransactionStatus.IDLE

        def counting(conn: Any, gen: Any, *args: Any, **kwargs: Any) -> Any:
            op = _operation(gen)
            ends = (op in ("commit", "commit/rollback")
                    or (op == "execute" and conn.autocommit
                        and conn.info.transaction_status == idle))
            with lock:
                counts[op] += 1
                self.transactions += ends
            return real(conn, gen, *args, **kwargs)

        psycopg.Connection.wait = counting  # type: ignore[method-assign,assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        psycopg.Connection.wait = self._real  # type: ignore[method-assign]


@dataclass
class Trips:
    """Round trips of one counting run: by operation, transactions, and the run's updates."""

    counts: Counter[str]
    transactions: int
    updates: int

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def per_update(self) -> float:
        return self.total / self.updates


def count_round_trips(runs: dict[str, Callable[[], Sample]]) -> dict[str, Trips]:
    """One untimed run of each PostgreSQL configuration with the counter installed (whole
    run: the store's schema check, start, loop and close, minus the benchmark's own schema
    drop, which uses its own connection after the run)."""
    counted: dict[str, Trips] = {}
    for name in POSTGRES_CONFIGS:
        with RoundTripCounter() as counter:
            sample = runs[name]()
        counted[name] = Trips(counter.counts, counter.transactions, sample.updates)
    return counted


# -- measuring and reporting --------------------------------------------------------------------


def measure(runs: dict[str, Callable[[], Sample]], rounds: int) -> dict[str, list[Sample]]:
    """Every configuration once per round, interleaved (:func:`_common.measure_rounds`)."""
    return measure_rounds(runs, rounds, width=42)


def report(all_samples: dict[str, list[Sample]], trips: dict[str, Trips]) -> None:
    samples = {name: [s for s in ss if not s.error] for name, ss in all_samples.items()}
    failed = {name: len(all_samples[name]) - len(ss) for name, ss in samples.items()}
    rates = {name: median([s.rate for s in ss]) if ss else float("nan")
             for name, ss in samples.items()}
    headers = ["configuration", "updates", "median upd/s", "min..max upd/s", "x (b)", "x (c)",
               "upd/CPU-s", "pg CPU us/upd", "upd/CPU-s incl. pg", "round trips/upd",
               "round trips/group", "transactions/upd", "us/round trip", "close() ms"]
    rows = []
    for name, ss in samples.items():
        if not ss:
            rows.append([name, "-", "FAILED", *["-"] * (len(headers) - 3)])
            continue
        known = [s for s in ss if s.postgres_cpu_seconds is not None]
        pg_us = median([(s.postgres_cpu_seconds or 0) / s.updates * 1e6 for s in known]
                       ) if known else None
        both = median([s.updates / (s.cpu_seconds + (s.postgres_cpu_seconds or 0))
                       for s in known]) if known else None
        t = trips.get(name)
        rt = t.per_update if t else None
        group = GROUP_SIZE.get(name)
        rows.append([
            name + (f" ({failed[name]} failed)" if failed[name] else ""), f"{ss[0].updates:,}",
            f"{rates[name]:,.0f}", spread([s.rate for s in ss]),
            f"{rates[name] / rates[B]:.2f}", f"{rates[name] / rates[C]:.2f}",
            f"{median([s.cpu_rate for s in ss]):,.0f}",
            "-" if pg_us is None or name in (D, E) else f"{pg_us:.1f}",
            "-" if both is None or name in (D, E) else f"{both:,.0f}",
            "-" if rt is None else f"{rt:.3f}",
            "-" if rt is None or group is None else f"{rt * group:.2f}",
            "-" if t is None else f"{t.transactions / t.updates:.3f}",
            "-" if not rt else f"{1e6 / (rates[name] * rt):.0f}",
            f"{median([s.close_seconds for s in ss]) * 1000:.1f}",
        ])
    print(table(headers, rows))
    print(LEGEND)
    for num, den, what in ((A, B, "group commit vs one transaction per update"),
                           (A, C, "group commit vs naive, 2 statements per update"),
                           (A, C2, "group commit vs naive, 1 statement per update"),
                           (B, C2, "one group per update vs the naive single statement"),
                           (A0, A, "(a) without, then with, the wait for the WAL flush"),
                           (C0, C2, "(c2) without, then with, the wait for the WAL flush"),
                           (A, D, "PostgreSQL store vs file store, both default"),
                           (A, E, "PostgreSQL store vs Redis store, both default")):
        p = paired_rates(samples, num, den) if num in samples and den in samples else []
        if p:
            print(f"{num.split()[0]} / {den.split()[0]} ({what}): {rates[num] / rates[den]:.2f} "
                  f"(ratio of the medians); paired per round {median(p):.2f} "
                  f"({spread(p, '.2f')})")
    print("\n## Round trips counted in psycopg (one untimed run each, start to close, "
          "all threads), by operation")
    for name in POSTGRES_CONFIGS:
        t = trips[name]
        top = ", ".join(f"{op} {k:,}" for op, k in t.counts.most_common(6))
        print(f"{name:<42} {t.total:>8,} round trips, {t.transactions:>7,} transactions for "
              f"{t.updates:>7,} updates ({t.per_update:.3f}/update): {top}")


LEGEND = f"""
Medians of the rounds; (b), (c), (c2) and (c0) run n / {PER_UPDATE_DIVISOR} updates per round. x (b),
x (c): ratio of the medians to (b) and (c). upd/CPU-s: updates per CPU-second of this process
(all threads). pg CPU us/upd: the PostgreSQL server's CPU time per update (every postgres
process of this machine, from /proc; server-wide). round trips/upd, transactions/upd: counted
in psycopg in the counting run (start and close included); round trips/group: round trips per
update x updates per journal group; us/round trip: wall time per round trip in the timed loop
(1 / (rate x round trips per update)).
"""


def server_settings(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()
        values = {name: conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
                  for name in ("fsync", "synchronous_commit", "wal_sync_method", "commit_delay",
                               "shared_buffers")}
    return (f"PostgreSQL {version[0] if version else '?'}, "
            + ", ".join(f"{k} {v[0] if v else '?'}" for k, v in values.items()))


def sweep(url: str) -> list[str]:
    """Drop every schema this process left under ``bench_pg_<pid>_``."""
    with psycopg.connect(url, autocommit=True) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
            [f"bench\\_pg\\_{os.getpid()}\\_%"]).fetchall()]
    for name in names:
        drop_schema(url, name)
    return names


def reachable_redis(url: str) -> str | None:
    """``url`` if a Redis answers there, else None (said so)."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_connect_timeout=5)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        print(f"*** Redis at {url} cannot be used ({exc}): row (e) is left out ***\n")
        return None
    return url


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration (5)")
    parser.add_argument("--n", type=int, default=100_000,
                        help="updates per run of (a), (a0), (d), (e); (b), (c), (c2), (c0) run a "
                             "tenth (100000)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2,000 updates, 1 round")
    parser.add_argument("--postgres", default=default_postgres_url(),
                        help="PostgreSQL URL (default: $POSTGRES_URL, else %(default)s)")
    parser.add_argument("--redis", default=default_redis_url(),
                        help="Redis URL of the reference row (e) (default: $REDIS_URL, else "
                             "%(default)s)")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the file store's temporary directories go")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.quick:
        args.n, args.rounds = 2_000, 1
    try:
        settings = server_settings(args.postgres)
    except psycopg.Error as exc:
        sys.exit(f"Cannot reach PostgreSQL at {args.postgres}: {exc}")
    print_header("Completions per second with the PostgreSQL store, against naive psycopg",
                 args.dir)
    print(f"library:  {Path(scrapy_checkpoint.__file__).parent}; psycopg {psycopg.__version__}")
    print(f"postgres: {args.postgres}, {settings}; server CPU "
          f"{'from /proc' if local_postgres_cpu_seconds() is not None else 'not readable'}")
    redis_url = reachable_redis(args.redis)
    print(f"update:   cp.update(processed=1, successful=1, index=i), log_every=0, checkpoint "
          f"default save_every={SAVE_EVERY}; {args.n:,} updates per run for (a), (a0), (d), "
          f"(e), {per_update_n(args.n):,} for (b), (c), (c2), (c0); median of {args.rounds} "
          f"round(s)\n")
    runs = configurations(args.postgres, redis_url, args.n, args.dir)
    try:
        samples = measure(runs, args.rounds)
        trips = count_round_trips(runs)
        report(samples, trips)
    finally:
        left = sweep(args.postgres)
        if left:
            print(f"\n(dropped {len(left)} schema(s) left under bench_pg_{os.getpid()}_)")
    print(f"\nload at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
