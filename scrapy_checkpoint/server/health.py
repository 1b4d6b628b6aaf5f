"""The health document: is the store reachable and how fast, how is its disk, which
stages are stuck."""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

from ..clock import utcnow
from ..documents import Views
from ..errors import redact
from ..state import Status
from ..stores.base import Store
from ..view import StageView

#: Round trips timed for the latency percentiles.
PINGS = 20


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    """``{"p50", "p95", "p99"}`` of ``samples_ms`` (nearest rank), in milliseconds, rounded
    to the microsecond; ``{}`` for no samples."""
    if not samples_ms:
        return {}
    ordered = sorted(samples_ms)
    out = {}
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        rank = max(1, -(-int(q * 100) * len(ordered) // 100))  # ceil(q * n)
        out[name] = round(ordered[min(rank, len(ordered)) - 1], 3)
    return out


def store_health(store: Store, pings: int = PINGS) -> dict[str, Any]:
    """The store's health: ``{"kind", "location", "reachable", "latency_ms", "error"?}``,
    ``latency_ms`` the time to list the stages. A file store adds ``"directory":
    {"exists", "readable", "writable", "free_bytes", "total_bytes"}``; a Redis or PostgreSQL
    store adds ``"round_trip_ms": {"p50", "p95", "p99"}`` over ``pings`` round trips (PING,
    ``SELECT 1``). Never raises: a store
    that fails is ``reachable: False`` with the (redacted) error."""
    from ..stores.file import FileStore

    kind = type(store).__name__.removesuffix("Store").lower()  # file, redis, memory
    doc: dict[str, Any] = {"kind": kind, "location": redact(str(store.location))}
    started = time.perf_counter()
    try:
        store.stages()
    except Exception as exc:
        doc.update(reachable=False, error=redact(f"{type(exc).__name__}: {exc}"))
        return doc
    doc.update(reachable=True, latency_ms=round((time.perf_counter() - started) * 1000, 3))
    if isinstance(store, FileStore):
        doc["directory"] = directory_health(store.directory)
    elif callable(ping := getattr(store, "ping", None)  # PostgreSQL: SELECT 1
                  or getattr(getattr(store, "client", None), "ping", None)):  # Redis: PING
        times = []
        try:
            for _ in range(pings):
                t = time.perf_counter()
                ping()
                times.append((time.perf_counter() - t) * 1000)
        except Exception as exc:
            doc.update(reachable=False, error=redact(f"{type(exc).__name__}: {exc}"))
        doc["round_trip_ms"] = percentiles(times)
    return doc


def directory_health(path: os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint directory's state: ``{"exists", "readable", "writable", "free_bytes",
    "total_bytes"}`` (the bytes None when it does not exist; writable: this process may
    create files in it)."""
    exists = os.path.isdir(path)
    usage = shutil.disk_usage(path) if exists else None
    return {"exists": exists, "readable": exists and os.access(path, os.R_OK | os.X_OK),
            "writable": exists and os.access(path, os.W_OK | os.X_OK),
            "free_bytes": usage.free if usage else None,
            "total_bytes": usage.total if usage else None}


def stuck_stages(views: Views, stuck_after: float) -> list[dict[str, Any]]:
    """Stages ``running`` with a live owner and no commit for more than ``stuck_after``
    seconds: ``[{"stage", "seconds_since_commit", "owner_pid"}]``."""
    now = utcnow()
    out = []
    for stage, view in views:
        if not isinstance(view, StageView) or view.live_owner is None:
            continue
        if view.state.status is not Status.RUNNING:
            continue
        age = (now - view.state.updated_at).total_seconds()
        if age > stuck_after:
            out.append({"stage": stage, "seconds_since_commit": round(age, 1),
                        "owner_pid": view.live_owner.pid})
    return out


def health_document(store: Store, views: Views, stuck_after: float) -> dict[str, Any]:
    """``{"status", "store", "stuck", "crashed", "damaged", "stuck_after_seconds"}``;
    ``status`` is ``down`` (the store cannot be reached), ``degraded`` (a stage is stuck or
    damaged, or the directory cannot be written) or ``ok``."""
    store_doc = store_health(store)
    stuck = stuck_stages(views, stuck_after)
    crashed = [s for s, v in views if isinstance(v, StageView) and v.crashed]
    damaged = [s for s, v in views if not isinstance(v, StageView) or v.problems]
    directory = store_doc.get("directory")
    if not store_doc["reachable"]:
        status = "down"
    elif stuck or damaged or (directory is not None and directory["exists"]
                              and not directory["writable"]):
        status = "degraded"
    else:
        status = "ok"
    return {"status": status, "store": store_doc, "stuck": stuck, "crashed": crashed,
            "damaged": damaged, "stuck_after_seconds": stuck_after}


__all__ = ["directory_health", "health_document", "percentiles", "store_health", "stuck_stages"]
