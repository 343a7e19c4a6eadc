"""``storedsession-expire`` on a large table while requests run on live sessions."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

from storedsession import SessionStore, StoredSessionError, generate_key
from storedsession.database import is_mysql, is_sqlite

from .fill import fill

LIVE = 200


def _p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] * 1000 if len(samples) > 1 else 0.0


def _requests(
    store: SessionStore,
    public_ids: list[str],
    stop: threading.Event,
    latencies: dict[str, list[float]],
    errors: list[str],
    limit: int,
) -> None:
    """Requests on live sessions: nine reads to one write, as web traffic goes."""
    i = 0
    while not stop.is_set() and i < limit:
        public_id = public_ids[i % len(public_ids)]
        kind = "write" if i % 10 == 0 else "read"
        start = time.perf_counter()
        try:
            with store.connected():
                session = store.load(public_id)
                if session.new:
                    errors.append("live session lost")
                if kind == "write":
                    session["n"] = session.get("n", 0) + 1
                store.save(session)
        except StoredSessionError as exc:
            errors.append(type(exc).__name__)
        latencies[kind].append(time.perf_counter() - start)
        i += 1


def _settle(store: SessionStore, table: str) -> None:
    """Let the database digest the fill before anything is timed."""
    db = store.database
    with store.connected():
        if is_sqlite(db):
            db.execute_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif is_mysql(db):
            db.execute_sql(f"ANALYZE TABLE `{table}`").fetchall()
        else:
            db.execute_sql(f'VACUUM ANALYZE "{table}"')


def sweep_under_load(url: str, rows: int) -> dict[str, Any]:
    """Fill ``rows`` rows (half expired), then compare request p99 without and during a sweep."""
    table = f"bench_expire_{uuid.uuid4().hex[:8]}"
    # The requests go through a pool, as a web app's would; the sweep is the CLI's own.
    pooled = url if url.startswith("sqlite") else url.replace("://", "+pool://", 1)
    store = SessionStore(pooled, keys=[generate_key()], table_name=table)
    store.create_table()
    try:
        public_ids = []
        for _ in range(LIVE):
            session = store.load(None)
            session["n"] = 0
            store.save(session)
            public_ids.append(session.id)
        db = store.database
        quoted = db.quote[0] + table + db.quote[1]
        now = store.now()
        expired = (rows - LIVE) // 2
        with store.connected():
            fill(db, table, expired, library=True, expires=now - 60_000, created=now - 10**6)
            fill(
                db,
                table,
                rows - LIVE - expired,
                library=True,
                expires=now + 10**9,
                created=now - 10**6,
            )

        _settle(store, table)
        calm: dict[str, list[float]] = {"read": [], "write": []}
        errors: list[str] = []
        _requests(store, public_ids, threading.Event(), calm, errors, 300)  # warm up
        calm = {"read": [], "write": []}
        _requests(store, public_ids, threading.Event(), calm, errors, 5000)

        during: dict[str, list[float]] = {"read": [], "write": []}
        stop = threading.Event()
        worker = threading.Thread(
            target=_requests, args=(store, public_ids, stop, during, errors, 10**9)
        )
        command = (
            [shutil.which("storedsession-expire")]
            if shutil.which("storedsession-expire")
            else [sys.executable, "-m", "storedsession", "expire"]
        )
        started = time.perf_counter()
        worker.start()
        result = subprocess.run(
            [
                *command,
                "--database",
                url,
                "--table",
                table,  # type: ignore[list-item]
                "--batch-size",
                "1000",
            ],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        seconds = time.perf_counter() - started
        stop.set()
        worker.join()
        remaining_expired = store.count_expired()
        with store.connected():
            remaining = db.execute_sql(f"SELECT COUNT(*) FROM {quoted}").fetchone()[0]
        return {
            "rows": rows,
            "expired": expired,
            "seconds": seconds,
            "exit_code": result.returncode,
            "output": result.stdout.strip(),
            "requests_during": sum(map(len, during.values())),
            "errors": len(errors),
            "p99_ms_without": _p99(calm["read"] + calm["write"]),
            "p99_ms_during": _p99(during["read"] + during["write"]),
            "p99_factor": _p99(during["read"] + during["write"])
            / _p99(calm["read"] + calm["write"]),
            "p99_ms_without_by_kind": {k: _p99(v) for k, v in calm.items()},
            "p99_ms_during_by_kind": {k: _p99(v) for k, v in during.items()},
            "left_expired": remaining_expired,
            "left_rows": remaining,
            "rows_expected": rows - expired,
        }
    finally:
        store.drop_table()
        store.close()
