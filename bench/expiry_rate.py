"""How fast ``storedsession-expire`` removes a backlog, timed from process start to exit.

    python -m bench.expiry_rate --backends sqlite,postgres,mysql --rows 200000

Each run fills a fresh table on the server side (``--rows`` expired rows, ``--live`` live
ones, 1.1 KB payloads as in bench/fill.py), lets the database settle, then runs the
installed console script with its defaults and no other traffic. ``--layout ordered``
gives the rows distinct expiry times in the order they were inserted, as sessions that
were created together expire together; ``scrambled`` draws them at random over a day, so
that the sweep's order has nothing to do with where the rows lie on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee

from storedsession import SessionTable
from storedsession.database import is_mysql, is_sqlite
from storedsession.lifetime import now_ms

from .expiry import _settle
from .fill import BATCH, _rows

URLS = {
    "sqlite": "sqlite:///{tmp}/expiry_rate.db",
    "postgres": os.environ.get(
        "STOREDSESSION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("STOREDSESSION_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test"),
}
#: Issue 13's rate targets, rows per second.
TARGETS = {"sqlite": 15_000, "postgres": 40_000, "mysql": 15_000}
DAY_MS = 86_400_000


def _fill(database: peewee.Database, table: str, count: int, expires: str, created: int) -> None:
    """Insert ``count`` rows whose expiry is the SQL expression ``expires`` of row ``n``."""
    quoted = database.quote[0] + table + database.quote[1]
    done = 0
    while done < count:
        size = min(BATCH, count - done)
        source, sid, payload = _rows(database, size)
        n = "x" if is_sqlite(database) else "seq" if is_mysql(database) else "g"
        expiry = expires.format(n=f"({n} + {done})")
        database.execute_sql(
            f"INSERT INTO {quoted} SELECT {sid}, {payload}, NULL, {created}, {created}, "
            f"{expiry}, NULL, 1 FROM {source}"
        )
        done += size


def _random_ms(database: peewee.Database) -> str:
    if is_sqlite(database):
        return f"abs(random() % {DAY_MS})"
    if is_mysql(database):
        return f"FLOOR(RAND() * {DAY_MS})"
    return f"FLOOR(random() * {DAY_MS})::bigint"


def run_once(backend: str, url: str, rows: int, live: int, layout: str) -> dict[str, Any]:
    """Fill a table, time one ``storedsession-expire`` on it, check what it left."""
    table = f"bench_rate_{uuid.uuid4().hex[:8]}"
    session_table = SessionTable(url, table)
    session_table.create_table()
    try:
        db = session_table.database
        now = now_ms()
        with session_table.connected():
            if layout == "ordered":  # one row every 10 ms, oldest first
                expires = f"{now - 60_000 - rows * 10} + 10 * {{n}}"
            else:
                expires = f"{now - 60_000} - {_random_ms(db)}"
            _fill(db, table, rows, expires, now - DAY_MS * 2)
            _fill(db, table, live, str(now + 10**9), now - DAY_MS * 2)
        _settle(session_table, table)
        command = shutil.which("storedsession-expire") or str(
            Path(sys.executable).parent / "storedsession-expire"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("STOREDSESSION_")}
        started = time.perf_counter()
        done = subprocess.run(
            [command, "--database", url, "--table", table],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
            check=False,
        )
        seconds = time.perf_counter() - started
        found = re.fullmatch(r"Expired (\d+) sessions\.", done.stdout.strip())
        removed = int(found.group(1)) if found else 0
        quoted = db.quote[0] + table + db.quote[1]
        with session_table.connected():
            left = db.execute_sql(f"SELECT COUNT(*) FROM {quoted}").fetchone()[0]
        return {
            "backend": backend,
            "layout": layout,
            "rows": rows,
            "live": live,
            "seconds": round(seconds, 3),
            "rows_per_second": round(removed / seconds),
            "target": TARGETS[backend],
            "exit_code": done.returncode,
            "output": done.stdout.strip() or done.stderr.strip()[-300:],
            "correct": done.returncode == 0 and removed == rows and left == live,
            "load_average": os.getloadavg()[0],
        }
    finally:
        session_table.drop_table()
        session_table.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.expiry_rate", description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument("--rows", type=int, default=200_000, help="expired rows")
    parser.add_argument("--live", type=int, default=50_000, help="live rows beside them")
    parser.add_argument("--layout", default="ordered", help="ordered, scrambled, or both")
    parser.add_argument("--repeat", type=int, default=1, help="runs per backend and layout")
    parser.add_argument("--json", default="bench/results/expiry_rate.json")
    args = parser.parse_args(argv)
    layouts = ["ordered", "scrambled"] if args.layout == "both" else [args.layout]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            url = URLS[backend].format(tmp=tmp)
            for layout in layouts:
                for _ in range(args.repeat):
                    result = run_once(backend, url, args.rows, args.live, layout)
                    print(
                        f"  {backend} {layout}: {result['rows_per_second']:,} rows/s "
                        f"({result['output']}, load {result['load_average']:.1f})",
                        file=sys.stderr,
                    )
                    results.append(result)
    print(
        f"{'backend':9} {'layout':10} {'expired':>8} {'median s':>9} {'rows/s':>8} "
        f"{'runs (rows/s)':>24} {'target':>7} {'load':>5} ok"
    )
    for backend in args.backends.split(","):
        for layout in layouts:
            runs = [r for r in results if r["backend"] == backend and r["layout"] == layout]
            seconds = statistics.median(r["seconds"] for r in runs)
            rate = round(args.rows / seconds)
            each = ", ".join(f"{r['rows_per_second']:,}" for r in runs)
            load = statistics.mean(r["load_average"] for r in runs)
            ok = all(r["correct"] for r in runs)
            print(
                f"{backend:9} {layout:10} {args.rows:>8,} {seconds:>9.2f} {rate:>8,} "
                f"{each:>24} {TARGETS[backend]:>7,} {load:>5.1f} {'yes' if ok else 'NO'}"
            )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{os.cpu_count()} cores, Python {sys.version.split()[0]}",
            "command": "python -m bench.expiry_rate "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "runs": results,
        }
        path.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if all(r["correct"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
