"""Benchmark: completions per second of a checkpoint kept in Redis, against naive Redis use.

What is measured
    Completions per second of a loop that marks one unit done by index per
    update, as in ``bench_updates.py``: ``cp.update(processed=1, successful=1,
    index=i)`` for ``i in range(N)``, with ``log_every=0``. N is ``--n`` (default
    100,000) for (a) and (d); (b), (c) and (c2), which make a round trip per
    update, run N / 10 (about 1 s each here), which keeps their loops well under
    the checkpoint's ``state_interval`` (5 s; see "Sustained" below).
    Configurations, interleaved within each round (in a rotated order):

      (a) checkpoint, redis, default   EnhancedCheckpoint("redis://...?prefix=...", stage),
                                       default options: a journal group is committed
                                       every save_every=10 updates, as one EVALSHA of
                                       the append script (one round trip per group)
      (b) checkpoint, redis, save_every=1
                                       the same, one group (one round trip) per update
      (c) naive redis-py               per update ``SADD done i`` then
                                       ``HINCRBY counters processed 1``: two commands,
                                       each its own round trip, nothing pipelined
      (c2) naive redis-py, pipelined   the same two commands in one pipeline per update
                                       (no MULTI): one round trip per update, the
                                       cheapest per-update write redis-py offers
      (d) checkpoint, file store       EnhancedCheckpoint(tempdir, stage), default
                                       options (fsync mode), for reference

    ``start()`` happens before the clock starts and the loop's queued background
    work is drained after it stops (as in ``bench_updates.py``); ``close()`` is
    timed on its own. The checkpoint configurations open their own store from
    the URL, as ``EnhancedCheckpoint(url, stage)`` does for a user.

Per configuration
    median completions/s over ``--rounds`` rounds and the min..max spread; ratios of
    the medians to (b) and to (c), and the median of the per-round (paired) ratios;
    completions per CPU-second of this process (all its threads); the Redis
    server's CPU time per completion when the server runs on this machine (read
    from /proc; the server is shared, so other clients' work lands in it too).

Round trips
    One more untimed run per configuration counts what redis-py sends, from every
    thread (the checkpoint's I/O and lease threads included), by wrapping
    ``Connection.send_packed_command``: one call is one request and one wait for
    its reply, i.e. one round trip, whether it is a single command or a whole
    pipeline. Sends are labelled by their first command (EVALSHA, MULTI, ...).
    The server's view, ``INFO commandstats`` before and after each timed loop, is
    printed too: EVALSHA calls and all commands (including those run inside the
    scripts) per completion. It is server-wide, so other clients of the same
    Redis inflate it.

Sustained
    Then (a) runs ``--sustain-runs`` times (3) for ``--sustain`` seconds (8; none
    with ``--quick``) without pause, past the checkpoint's periodic state write
    (every ``state_interval`` = 5 s, on its I/O thread: one script call that
    checks the lock token and writes the state). The output says whether the
    stage survived it. Before commit 468c7b6 the state write was optimistic
    (WATCH, GET, MULTI/EXEC, 10 tries) and mostly failed here, because the
    writer's own group appends changed the watched ``meta`` key faster than its
    three round trips (see docs/benchmarks.md).

Keys
    Every run uses a fresh key prefix ``bench_<pid>_<n>`` (``?prefix=`` in the URL
    for the checkpoint) and deletes its keys afterwards; a last sweep at exit
    deletes anything left under ``bench_<pid>_``.

    python benchmarks/bench_redis.py [--rounds 5] [--n 100000] [--quick] [--sustain 8]
                                     [--sustain-runs 3] [--profile] [--redis URL] [--dir DIR]

    The Redis URL comes from ``--redis``, else $REDIS_URL, else redis://127.0.0.1:6379/0.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import os
import pstats
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from _common import (
    default_redis_url,
    delete_keys,
    local_redis_stat,
    measure_rounds,
    median,
    paired_rates,
    print_header,
    process_cpu_seconds,
    spread,
    table,
    with_prefix,
)

import scrapy_checkpoint
from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.errors import CheckpointError

STAGE = "bench"
SAVE_EVERY = 10  # the default save_every
#: (b), (c) and (c2) make a round trip per update: they run n / 10 updates, so that their loops
#: (about 1 s here) stay well under the checkpoint's state_interval of 5 s (see SUSTAIN_NOTE).
PER_UPDATE_DIVISOR = 10

A = "(a) checkpoint, redis, default"
B = "(b) checkpoint, redis, save_every=1"
C = "(c) naive redis-py, 2 commands"
C2 = "(c2) naive redis-py, pipelined"
D = "(d) checkpoint, file store"
REDIS_CONFIGS = (A, B, C, C2)

_prefixes = itertools.count()


def fresh_prefix() -> str:
    return f"bench_{os.getpid()}_{next(_prefixes)}"


@dataclass
class Sample:
    """One measured run of one configuration."""

    updates: int
    seconds: float
    cpu_seconds: float
    close_seconds: float
    redis_cpu_seconds: float | None = None
    #: INFO commandstats delta over the loop: calls per command name (server-wide).
    server_calls: dict[str, int] = field(default_factory=dict)
    #: The CheckpointError that ended the loop early, if one did.
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.updates / self.seconds

    @property
    def cpu_rate(self) -> float:
        return self.updates / self.cpu_seconds


class RedisServer:
    """What we can read about the Redis server: its commandstats, and its CPU time when it
    runs on this machine."""

    def __init__(self, client: Any) -> None:
        self.client = client
        info = client.info("server")
        self.version = info.get("redis_version", "?")
        persistence = client.info("persistence")
        self.aof = bool(persistence.get("aof_enabled"))
        self.save = " ".join(str(x) for x in client.config_get("save").values()) or '""'
        self.appendfsync = client.config_get("appendfsync").get("appendfsync", "?")
        self._stat = local_redis_stat(client)

    def cpu_seconds(self) -> float | None:
        """user + system CPU time of the server so far (None: not on this machine)."""
        return None if self._stat is None else process_cpu_seconds(self._stat)

    def command_calls(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@contextmanager
def measured(server: RedisServer) -> Iterator[dict[str, Any]]:
    """Around a loop: the server's CPU time and commandstats delta (INFO excluded)."""
    out: dict[str, Any] = {}
    calls0, cpu0 = server.command_calls(), server.cpu_seconds()
    yield out
    cpu1, calls1 = server.cpu_seconds(), server.command_calls()
    out["redis_cpu"] = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    out["calls"] = {k: v - calls0.get(k, 0) for k, v in calls1.items()
                    if k != "info" and v - calls0.get(k, 0)}


# -- the configurations -------------------------------------------------------------------------


def run_checkpoint(location: str, n: int, server: RedisServer, *, sustain: float = 0.0,
                   **options: Any) -> Sample:
    """``n`` updates of a fresh stage at ``location`` (a directory or a Redis URL); with
    ``sustain``, batches of 10,000 updates until that many seconds have passed instead.
    A CheckpointError raised by an update ends the loop and is recorded in the sample."""
    cp = EnhancedCheckpoint(location, STAGE, log_every=0, **options)
    cp.start()
    cp.drain_io()
    update = cp.update
    i = done = 0
    error = None
    with measured(server) as m:
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            if sustain:
                while time.perf_counter() - t0 < sustain:
                    for i in range(done, done + 10_000):
                        update(processed=1, successful=1, index=i)
                    done += 10_000
            else:
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
    return Sample(done, seconds, cpu, time.perf_counter() - t0, m["redis_cpu"], m["calls"], error)


def run_ours_redis(url: str, n: int, server: RedisServer, **options: Any) -> Sample:
    prefix = fresh_prefix()
    try:
        return run_checkpoint(with_prefix(url, prefix), n, server, **options)
    finally:
        delete_keys(server.client, f"{prefix}:*")


def run_file(parent: str, n: int, server: RedisServer) -> Sample:
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        return run_checkpoint(tmp, n, server)


def run_naive(url: str, n: int, server: RedisServer, *, pipelined: bool) -> Sample:
    """Per update: SADD done i, HINCRBY counters processed 1 (sent one by one, or as one
    pipeline); the "close" is one last HSET of the last index."""
    prefix = fresh_prefix()
    client = redis.Redis.from_url(url)
    done, counters = f"{prefix}:done", f"{prefix}:counters"
    try:
        client.ping()  # connect before the clock starts
        with measured(server) as m:
            t0, c0 = time.perf_counter(), time.process_time()
            if pipelined:
                pipe = client.pipeline(transaction=False)
                for i in range(n):
                    pipe.sadd(done, i)
                    pipe.hincrby(counters, "processed", 1)
                    pipe.execute()
            else:
                sadd, hincrby = client.sadd, client.hincrby
                for i in range(n):
                    sadd(done, i)
                    hincrby(counters, "processed", 1)
            seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        client.hset(counters, "last_index", n - 1)
        close = time.perf_counter() - t0
        processed = client.hget(counters, "processed")
        if int(client.scard(done)) != n or int(processed or 0) != n:
            raise RuntimeError("the naive baseline lost updates")
        return Sample(n, seconds, cpu, close, m["redis_cpu"], m["calls"])
    finally:
        delete_keys(client, f"{prefix}:*")
        client.close()


def per_update_n(n: int) -> int:
    """Updates per run of the configurations with a round trip per update (b, c, c2)."""
    return max(n // PER_UPDATE_DIVISOR, 1)


def configurations(url: str, n: int, parent: str, server: RedisServer
                   ) -> dict[str, Callable[[], Sample]]:
    m = per_update_n(n)
    return {
        A: lambda: run_ours_redis(url, n, server),
        B: lambda: run_ours_redis(url, m, server, save_every=1),
        C: lambda: run_naive(url, m, server, pipelined=False),
        C2: lambda: run_naive(url, m, server, pipelined=True),
        D: lambda: run_file(parent, n, server),
    }


# -- round trips, counted in redis-py -----------------------------------------------------------


def _command_name(packed: Any) -> str:
    first = packed if isinstance(packed, (bytes, bytearray, memoryview)) else packed[0]
    parts = bytes(first[:80]).split(b"\r\n", 3)
    return parts[2].decode(errors="replace").upper() if len(parts) > 2 else "?"


class RoundTripCounter:
    """While installed, counts ``send_packed_command`` calls of every redis-py connection in
    this process, by the first command sent: one call, one request and one reply to wait for."""

    def __init__(self) -> None:
        from redis.connection import AbstractConnection

        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._cls: Any = AbstractConnection
        self._real: Callable[..., Any] = AbstractConnection.send_packed_command

    def __enter__(self) -> RoundTripCounter:
        real, counts, lock = self._real, self.counts, self._lock

        def counting(conn: Any, command: Any, check_health: bool = True) -> Any:
            name = _command_name(command)
            with lock:
                counts[name] += 1
            return real(conn, command, check_health)

        self._cls.send_packed_command = counting
        return self

    def __exit__(self, *exc: object) -> None:
        self._cls.send_packed_command = self._real


@dataclass
class Trips:
    """Round trips of one counting run: sends by first command, and the run's updates."""

    counts: Counter[str]
    updates: int

    @property
    def per_update(self) -> float:
        return sum(self.counts.values()) / self.updates


def count_round_trips(runs: dict[str, Callable[[], Sample]]) -> dict[str, Trips]:
    """One untimed run of each Redis configuration with the counter installed (whole run:
    start, loop and close, minus the benchmark's own INFO and key clean-up)."""
    counted: dict[str, Trips] = {}
    for name in REDIS_CONFIGS:
        with RoundTripCounter() as counter:
            sample = runs[name]()
        counts = counter.counts
        for own in ("INFO", "SCAN", "UNLINK"):  # the benchmark's, not the configuration's
            counts.pop(own, None)
        counted[name] = Trips(counts, sample.updates)
    return counted


# -- measuring and reporting --------------------------------------------------------------------


def measure(runs: dict[str, Callable[[], Sample]], rounds: int) -> dict[str, list[Sample]]:
    """Every configuration once per round, interleaved (:func:`_common.measure_rounds`)."""
    return measure_rounds(runs, rounds, width=36)


def report(all_samples: dict[str, list[Sample]], trips: dict[str, Trips]) -> None:
    samples = {name: [s for s in ss if not s.error] for name, ss in all_samples.items()}
    failed = {name: len(all_samples[name]) - len(ss) for name, ss in samples.items()}
    rates = {name: median([s.rate for s in ss]) if ss else float("nan")
             for name, ss in samples.items()}
    headers = ["configuration", "updates", "median upd/s", "min..max upd/s", "x (b)", "x (c)",
               "upd/CPU-s", "redis CPU us/upd", "upd/CPU-s incl. redis", "round trips/upd",
               "us/round trip", "close() ms"]
    rows = []
    for name, ss in samples.items():
        if not ss:
            rows.append([name, "-", "FAILED", *["-"] * (len(headers) - 3)])
            continue
        known = [s for s in ss if s.redis_cpu_seconds is not None]
        redis_us = median([(s.redis_cpu_seconds or 0) / s.updates * 1e6 for s in known]
                          ) if known else None
        both = median([s.updates / (s.cpu_seconds + (s.redis_cpu_seconds or 0)) for s in known]
                      ) if known else None
        rt = trips[name].per_update if name in trips else None
        rows.append([
            name + (f" ({failed[name]} failed)" if failed[name] else ""), f"{ss[0].updates:,}",
            f"{rates[name]:,.0f}", spread([s.rate for s in ss]),
            f"{rates[name] / rates[B]:.2f}", f"{rates[name] / rates[C]:.2f}",
            f"{median([s.cpu_rate for s in ss]):,.0f}",
            "-" if redis_us is None else f"{redis_us:.1f}",
            "-" if both is None else f"{both:,.0f}",
            "-" if rt is None else f"{rt:.3f}",
            "-" if not rt else f"{1e6 / (rates[name] * rt):.1f}",
            f"{median([s.close_seconds for s in ss]) * 1000:.1f}",
        ])
    print(table(headers, rows))
    print(LEGEND)
    for num, den, what in ((A, B, "group commit vs one round trip per update"),
                           (A, C, "group commit vs naive, 2 commands per update"),
                           (A, C2, "group commit vs naive, pipelined"),
                           (B, C2, "one EVALSHA per update vs one pipeline per update"),
                           (A, D, "Redis store vs file store, both default")):
        p = paired_rates(samples, num, den)
        if p:
            print(f"{num.split()[0]} / {den.split()[0]} ({what}): {rates[num] / rates[den]:.2f} "
                  f"(ratio of the medians); paired per round {median(p):.2f} "
                  f"({spread(p, '.2f')})")
    print("\n## Round trips counted in redis-py (one untimed run each, start to close, "
          "all threads), by the first command of each send")
    for name in REDIS_CONFIGS:
        t = trips[name]
        top = ", ".join(f"{cmd} {k:,}" for cmd, k in t.counts.most_common(6))
        print(f"{name:<36} {sum(t.counts.values()):>8,} sends for {t.updates:>7,} updates "
              f"({t.per_update:.3f}/update): {top}")
    print("\n## Server side: INFO commandstats over the timed loops, per update, median of the "
          "rounds\n(server-wide: other clients of this Redis add to it; commands run inside "
          "scripts are counted too)")
    for name in REDIS_CONFIGS:
        ss = samples[name]
        if not ss:
            continue
        evalsha = median([s.server_calls.get("evalsha", 0) / s.updates for s in ss])
        total = median([sum(s.server_calls.values()) / s.updates for s in ss])
        merged: Counter[str] = Counter()
        for s in ss:
            merged.update(s.server_calls)
        updates = sum(s.updates for s in ss)
        top = ", ".join(f"{cmd} {k / updates:.2f}" for cmd, k in merged.most_common(8))
        print(f"{name:<36} evalsha {evalsha:.3f}/upd, all commands {total:.2f}/upd  ({top})")


LEGEND = f"""
Medians of the rounds; (b), (c) and (c2) run n / {PER_UPDATE_DIVISOR} updates per round. x (b),
x (c): ratio of the medians to (b) and (c). upd/CPU-s: updates per CPU-second of this process
(all threads). redis CPU us/upd: the Redis server's CPU time per update (from /proc;
server-wide). round trips/upd: redis-py sends per update in the counting run (start and close
included); us/round trip: wall time per round trip in the timed loop (1 / (rate x round trips
per update)).
"""

SUSTAIN_NOTE = """\
A stage that commits to Redis without pause for longer than state_interval (5 s) exercises the
periodic state write, on the I/O thread while the caller's thread appends groups: one script
call that checks the lock token, writes the state and refreshes the expiries. (Until commit
468c7b6 it was WATCH/MULTI/EXEC on meta, which the appends kept aborting: "the state kept
changing under us in Redis".)"""


def sustained(url: str, seconds: float, server: RedisServer, runs: int) -> None:
    """(a) for ``seconds`` of updates, ``runs`` times: past state_interval, so the periodic
    state write happens while groups are appended."""
    print(f"\n## Sustained: {A}, {runs} run(s) of {seconds:.0f} s each\n")
    print(SUSTAIN_NOTE + "\n")
    failed = 0
    for r in range(runs):
        s = run_ours_redis(url, 0, server, sustain=seconds)
        failed += bool(s.error)
        result = f"FAILED after {s.seconds:.2f} s: {s.error}" if s.error else "ok"
        print(f"run {r + 1}: {s.updates:>9,} updates in {s.seconds:5.2f} s ({s.rate:,.0f} upd/s, "
              f"{s.server_calls.get('exec', 0)} EXEC server-wide): {result}", flush=True)
    print(f"{failed} of {runs} sustained run(s) failed")


def profile(runs: dict[str, Callable[[], Sample]], name: str) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    sample = runs[name]()
    profiler.disable()
    print(f"\n## cProfile of one run of {name}, {sample.updates:,} updates (profiling slows it: "
          "read the shares)")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(15)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per configuration (5)")
    parser.add_argument("--n", type=int, default=100_000,
                        help="updates per run of (a) and (d); (b), (c), (c2) run a tenth (100000)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 20,000 updates, 2 rounds, no sustained run unless --sustain")
    parser.add_argument("--sustain", type=float, default=None,
                        help="seconds of each sustained run of (a), 0 for none (8; --quick: 0)")
    parser.add_argument("--sustain-runs", type=int, default=3, help="sustained runs of (a) (3)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one run of (a) and of (b) and print their top costs")
    parser.add_argument("--redis", default=default_redis_url(),
                        help="Redis URL (default: $REDIS_URL, else %(default)s)")
    parser.add_argument("--dir", default=tempfile.gettempdir(),
                        help="where the file store's temporary directories go")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.quick:
        args.n, args.rounds = 20_000, min(args.rounds, 2)
    if args.sustain is None:
        args.sustain = 0.0 if args.quick else 8.0
    client = redis.Redis.from_url(args.redis)
    try:
        client.ping()
    except redis.exceptions.RedisError as exc:
        sys.exit(f"Cannot reach Redis at {args.redis}: {exc}")
    server = RedisServer(client)
    print_header("Completions per second with the Redis store, against naive redis-py", args.dir)
    print(f"library:  {Path(scrapy_checkpoint.__file__).parent}; redis-py {redis.__version__}")
    print(f"redis:    {args.redis}, Redis {server.version}, appendonly "
          f"{'yes' if server.aof else 'no'} (appendfsync {server.appendfsync}), save "
          f"{server.save}; server CPU "
          f"{'from /proc' if server.cpu_seconds() is not None else 'not readable (remote)'}")
    print(f"update:   cp.update(processed=1, successful=1, index=i), log_every=0, checkpoint "
          f"default save_every={SAVE_EVERY}; {args.n:,} updates per run for (a) and (d), "
          f"{per_update_n(args.n):,} for (b), (c), (c2); median of {args.rounds} rounds\n")
    runs = configurations(args.redis, args.n, args.dir, server)
    try:
        samples = measure(runs, args.rounds)
        trips = count_round_trips(runs)
        report(samples, trips)
        if args.sustain:
            sustained(args.redis, args.sustain, server, args.sustain_runs)
        if args.profile:
            profile(runs, A)
            profile(runs, B)
    finally:
        left = delete_keys(client, f"bench_{os.getpid()}_*")
        if left:
            print(f"\n(deleted {left} key(s) left under bench_{os.getpid()}_)")
        client.close()
    print(f"\nload at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
