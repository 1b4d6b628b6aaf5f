"""Claims of a shared stage (``CHECKPOINT_SHARED``) per second, Redis and PostgreSQL side by
side in one invocation, interleaved rounds.

A worker claims each new request it schedules (one round trip: ``claim.lua`` on Redis, one
``INSERT ... ON CONFLICT DO UPDATE`` statement and its commit on PostgreSQL). Each run claims
``--n`` fresh unit codes in a loop on one worker of a fresh stage, then ``--n`` codes a second
worker already holds (refused: the path of a unit another worker found first). Figures are
medians of ``--rounds``; docs/benchmarks.md section 7 keeps them.

    python benchmarks/bench_claims.py --rounds 5
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import (
    default_postgres_url,
    default_redis_url,
    delete_keys,
    drop_schema,
    measure_rounds,
    median,
    print_header,
    table,
    with_prefix,
    with_schema,
)

from scrapy_checkpoint import EnhancedCheckpoint
from scrapy_checkpoint.shared import open_shared, sub_stage_name
from scrapy_checkpoint.stores import open_store


@dataclass
class Sample:
    """One run: ``updates`` claims (fresh, then refused) in ``seconds``."""

    updates: int
    seconds: float
    cpu_seconds: float
    refused_seconds: float
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.updates / self.seconds if self.seconds else 0.0


def run(url: str, n: int, cleanup: object) -> Sample:
    store = open_store(url)
    # Worker "a" is alive as a crawl's worker is: its sub-stage locked, its token recorded.
    cp = EnhancedCheckpoint(stage=sub_stage_name("bench", "a"), store=store, log_every=0)
    cp.open()
    mine = open_shared(store, "bench", worker="a")
    try:
        token = store.token(cp.stage)  # type: ignore[attr-defined]
        mine.join(token, dict)
        other = open_shared(store, "bench", worker="b")
        other.beat()
        cpu, start = time.process_time(), time.perf_counter()
        for code in range(n):
            if not mine.claim(code):
                return Sample(0, 0, 0, 0, f"claim {code} refused")
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        start = time.perf_counter()
        for code in range(n):
            if other.claim(code):
                return Sample(0, 0, 0, 0, f"claim {code} of a live worker taken")
        refused = time.perf_counter() - start
        return Sample(n, seconds, cpu, refused)
    finally:
        mine.leave("finished")
        cp.close()
        store.close()
        cleanup()  # type: ignore[operator]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--n", type=int, default=5_000, help="claims per run (5,000)")
    parser.add_argument("--postgres", default=default_postgres_url())
    parser.add_argument("--redis", default=default_redis_url())
    args = parser.parse_args()
    print_header("Claims of a shared stage per second", "/tmp")
    runs = {}

    def postgres() -> Sample:
        schema = f"bench_claims_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        return run(with_schema(args.postgres, schema), args.n,
                   lambda: drop_schema(args.postgres, schema))

    def redis() -> Sample:
        import redis as redis_py

        prefix = f"bench_claims_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        client = redis_py.Redis.from_url(args.redis)
        return run(with_prefix(args.redis, prefix), args.n,
                   lambda: delete_keys(client, f"{prefix}:*"))

    runs["redis (claim.lua)"] = redis
    runs["postgresql (upsert)"] = postgres
    samples = measure_rounds(runs, args.rounds)
    rows = []
    for name, got in samples.items():
        ok = [s for s in got if not s.error]
        if not ok:
            rows.append([name, "failed", "", "", ""])
            continue
        rows.append([name, f"{median([s.rate for s in ok]):,.0f}",
                     f"{median([s.seconds / s.updates * 1e6 for s in ok]):,.0f}",
                     f"{median([s.refused_seconds / s.updates * 1e6 for s in ok]):,.0f}",
                     f"{median([s.cpu_seconds / s.updates * 1e6 for s in ok]):,.0f}"])
    print(table(["store", "claims/s", "us/claim", "us/refused claim", "client CPU us/claim"],
                rows))


if __name__ == "__main__":
    main()
