"""A stage kept in PostgreSQL: killed with SIGKILL mid-run, resumed, queried with SQL, reset.

Uses $POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres) with a schema
of its own (docs_example_<random>) and drops it at the end. Without a reachable
PostgreSQL it says so and exits 0 (exit 1 under CI=true). Needs the postgres extra:
pip install 'scrapy-checkpoint[postgres]'. See docs/postgresql.md.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import uuid

import psycopg
from psycopg import sql

from scrapy_checkpoint import AsyncCheckpointTracker, UnifiedCheckpointManager
from scrapy_checkpoint.stores.postgres import PostgresStore

TOTAL = 200
BASE_URL = os.environ.get("POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
CHILD = sys.argv[1:2] == ["child"]
SCHEMA = sys.argv[2] if CHILD else f"docs_example_{uuid.uuid4().hex[:8]}"
URL = f"{BASE_URL}{'&' if '?' in BASE_URL else '?'}schema={SCHEMA}"


async def run_stage(kill_at: int | None) -> None:
    # The URL can be given as backend=..., or in place of the checkpoint directory.
    async with AsyncCheckpointTracker(backend=URL, stage="stage3", progress_bar=False,
                                      log_every=0) as tracker:
        tracker.start(total_items=TOTAL)
        for i in range(TOTAL):
            if tracker.should_skip(i):  # finished by an earlier run
                continue
            await asyncio.sleep(0.002)
            tracker.update(processed=1, successful=1, last_item=f"row-{i}", index=i)
            if i == kill_at:
                tracker.checkpoint.save(force=True)  # commit and write the state, then die
                os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    try:
        conn = psycopg.connect(BASE_URL, autocommit=True, connect_timeout=2)
    except psycopg.Error as exc:
        print(f"No PostgreSQL at {BASE_URL} ({' '.join(str(exc).split())}); set POSTGRES_URL to "
              f"run this example.")
        sys.exit(1 if os.environ.get("CI") == "true" else 0)
    schema = sql.Identifier(SCHEMA)
    try:
        if CHILD:
            asyncio.run(run_stage(kill_at=119))
            return
        # 1. A process works on the stage and is killed with SIGKILL at item 120.
        subprocess.run([sys.executable, __file__, "child", SCHEMA], check=False)
        row = conn.execute(sql.SQL("SELECT status, processed_items, total_items, owner_pid "
                                   "FROM {}.stage_status").format(schema)).fetchone()
        print("stage_status after the kill:", row)
        groups = conn.execute(sql.SQL("SELECT count(*) FROM {}.journal").format(schema)).fetchone()
        print("journal rows:", groups[0] if groups else 0)

        # 2. The same stage again: the killed process's session ended with it, and its
        #    advisory lock with the session; the run resumes after the 120 committed items.
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
        asyncio.run(run_stage(kill_at=None))
        store = PostgresStore(URL)  # or UnifiedCheckpointManager(URL): it opens its own
        manager = UnifiedCheckpointManager(store=store)
        view = manager.read("stage3")
        print("after the resume:", view.display_status, view.state.progress.processed_items,
              "processed,", view.state.done_units, "units done,", view.state.recoveries, "recovery")
        assert view.state.progress.processed_items == TOTAL
        row = conn.execute(sql.SQL("SELECT status, processed_items, owner_pid "
                                   "FROM {}.stage_status").format(schema)).fetchone()
        print("stage_status after the resume:", row)

        # 3. Reset deletes the stage's rows (under its lock).
        manager.reset("stage3")
        print("stages after reset:", manager.stages())
        store.close()
    finally:
        if not CHILD:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
        conn.close()


if __name__ == "__main__":
    main()
