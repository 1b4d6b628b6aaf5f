"""The demo: a real crawl of the bundled bookstore, killed with SIGKILL midway, then resumed.

    make demo        (or: cd example_project && python run_demo.py)

1. serves the bookstore on 127.0.0.1 (bookstore/site.py),
2. runs `scrapy crawl books` and kills it with SIGKILL once about 40% of the
   books were fetched,
3. shows the checkpoint of the dead crawl,
4. runs the very same command again: it resumes, and
5. checks data/books.jl: every book exactly once, no partial line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bookstore.site import N_BOOKS, BookstoreServer  # noqa: E402

from scrapy_checkpoint import UnifiedCheckpointManager  # noqa: E402

DATA = HERE / "data"


def crawl(url: str, server: BookstoreServer, kill_at_books: int | None) -> int:
    cmd = [sys.executable, "-m", "scrapy", "crawl", "books", "-a", f"base={url}"]
    print(f"$ scrapy crawl books -a base={url}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    if kill_at_books is not None:
        def kill() -> None:
            proc.send_signal(signal.SIGKILL)
            print(f"    *** kill -9 {proc.pid}: {kill_at_books} book pages fetched ***", flush=True)

        server.when_books_fetched(kill_at_books, kill)
    for line in proc.stdout:
        if "[scrapy_checkpoint]" in line or "Spider closed" in line:
            print("   ", line.split("] ", 1)[-1].rstrip(), flush=True)
    return proc.wait()


def main() -> int:
    shutil.rmtree(DATA, ignore_errors=True)
    server = BookstoreServer()
    manager = UnifiedCheckpointManager(DATA / "checkpoints")
    try:
        print(f"The bookstore ({N_BOOKS} books) is served at {server.url}\n")
        print(f"1. Crawl, and kill the crawl with SIGKILL once {int(N_BOOKS * 0.4)} of the "
              f"{N_BOOKS} book pages (40%) were fetched.\n")
        crawl(server.url, server, kill_at_books=int(N_BOOKS * 0.4))
        lines = (DATA / "books.jl").read_text().count("\n") if (DATA / "books.jl").exists() else 0
        print(f"\n2. After the kill: data/books.jl has {lines} lines; the checkpoint says:\n")
        print(manager.report())
        fetched_before = server.book_hits()
        started = time.monotonic()
        print("\n3. Run the very same command again.\n")
        code = crawl(server.url, server, kill_at_books=None)
        print(f"\n4. The checkpoint now ({time.monotonic() - started:.1f} s later):\n")
        print(manager.report())
    finally:
        server.close()

    text = (DATA / "books.jl").read_text()
    ids = [json.loads(line)["id"] for line in text.splitlines()]
    refetched = server.book_hits() - N_BOOKS
    print(f"\ndata/books.jl: {len(ids)} items, {len(set(ids))} distinct books of {N_BOOKS}, "
          f"{len(ids) - len(set(ids))} duplicates, partial line: {not text.endswith(chr(10))}.")
    print(f"Book pages fetched: {server.book_hits()} for {N_BOOKS} books "
          f"({refetched} fetched twice: in flight at the kill; {fetched_before} before it).")
    ok = code == 0 and sorted(ids) == list(range(N_BOOKS)) and text.endswith("\n")
    print("\nDemo OK: every book exactly once after a kill -9." if ok else "\nDemo FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
