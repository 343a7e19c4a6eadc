"""Run the benchmark: ``python -m bench [--backends sqlite,postgres,mysql] [--smoke]``.

Contenders run interleaved in rounds (the order rotates every round) so that machine
noise hits all alike; the table reports medians of per-round throughput and the median
of per-round ratios to the floor. The floor holds one persistent connection. The headline
rows run storedsession the way the README does: a store built from a plain URL, nothing
held by the caller (the store's pool, or SQLite's connection per thread, keeps the
connection); the "held" rows hold one across the round with ``store.connected()``.
Every contender uses the same driver.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storedsession import SessionStore, generate_key
from storedsession.web import SessionMiddlewareCore

from . import fill as fill_module
from . import floor as floor_module
from . import frameworks

URLS = {
    "sqlite": "sqlite:///{tmp}/bench.db",
    "postgres": os.environ.get(
        "STOREDSESSION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("STOREDSESSION_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test"),
}


def payload(size: int) -> dict[str, Any]:
    """A session of about ``size`` bytes of JSON, shaped like a real one."""
    data: dict[str, Any] = {
        "user_id": 1234,
        "csrf": "x" * 43,
        "cart": [101, 102, 103],
        "flash": None,
        "counter": 0,
        "prefs": {"lang": "en", "tz": "UTC"},
    }
    data["pad"] = "p" * max(0, size - len(json.dumps(data)) - 10)
    return data


def fill(store: SessionStore, floor: floor_module.Floor, count: int) -> None:
    """Add ``count`` filler rows to both tables (never read; they only make them large)."""
    now = store.now()
    with store.connected():
        fill_module.fill(
            store.database, store.table_name, count, library=True, expires=now + 10**9, created=now
        )
        fill_module.fill(
            store.database, floor.table, count, library=False, expires=now + 10**9, created=now
        )


def run_backend(backend: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    url = URLS[backend].format(tmp=tmp)
    suffix = uuid.uuid4().hex[:8]
    store = SessionStore(url, keys=[generate_key()], table_name=f"bench_lib_{suffix}")
    store.create_table()
    floor = floor_module.Floor(url, f"bench_floor_{suffix}")
    data = payload(args.payload)
    try:
        public_ids = []
        for _ in range(args.live):
            session = store.load(None)
            session.update(data)
            store.save(session)
            public_ids.append(session.id)
        floor.add(public_ids, data)
        results: dict[str, Any] = {"url": _redact(url), "sizes": {}}
        rows = args.live
        for size in args.sizes:
            if size > rows:
                print(f"  [{backend}] filling to {size:,} rows …", file=sys.stderr)
                fill(store, floor, size - rows)
                rows = size
            print(f"  [{backend}] measuring at {rows:,} rows …", file=sys.stderr)
            results["sizes"][rows] = measure(store, floor, public_ids, args)
        results["queries"] = query_counts(store, public_ids[0])
        results["settings"] = server_settings(store)
        return results
    finally:
        store.drop_table()
        store.close()
        floor.drop()


def measure(
    store: SessionStore, floor: floor_module.Floor, public_ids: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    state = {"i": 0}

    def next_id() -> str:
        state["i"] += 1
        return public_ids[state["i"] % len(public_ids)]

    def lib_read() -> None:
        session = store.load(next_id())
        assert session["user_id"] == 1234
        store.save(session)

    def lib_write() -> None:
        session = store.load(next_id())
        session["counter"] += 1
        store.save(session)

    def floor_read() -> None:
        found = floor.read(next_id())
        assert found is not None and found[1]["user_id"] == 1234

    def floor_write() -> None:
        floor.write(next_id(), "counter", state["i"])

    contenders: dict[str, Contender] = {
        "floor read": (floor_read, None),
        "storedsession read": (lib_read, None),
        "storedsession read, held": (lib_read, store.connected),
        "floor write": (floor_write, None),
        "storedsession write": (lib_write, None),
        "storedsession write, held": (lib_write, store.connected),
    }
    pairs = [
        ("storedsession read", "floor read"),
        ("storedsession read, held", "floor read"),
        ("storedsession write", "floor write"),
        ("storedsession write, held", "floor write"),
    ]
    if args.frameworks:
        extra, extra_pairs = frameworks.contenders(store, floor, next_id)
        contenders.update((name, (op, None)) for name, op in extra.items())
        pairs += extra_pairs
    rates = interleave(contenders, args.rounds, args.ops)
    ratios = {
        mine: [a / b for a, b in zip(rates[mine], rates[base], strict=True)] for mine, base in pairs
    }
    return {
        "ops_per_second": {name: statistics.median(r) for name, r in rates.items()},
        "ratio_to_floor": {name: statistics.median(r) for name, r in ratios.items()},
        "pairs": pairs,
        "rounds": args.rounds,
        "ops_per_round": args.ops,
    }


#: An operation, and what to hold around a round of it (``store.connected``) or None.
Contender = tuple[Callable[[], None], Callable[[], AbstractContextManager[Any]] | None]


def interleave(contenders: dict[str, Contender], rounds: int, ops: int) -> dict[str, list[float]]:
    names = list(contenders)
    rates: dict[str, list[float]] = {name: [] for name in names}

    def run(name: str, count: int) -> float:
        op, hold = contenders[name]
        with hold() if hold is not None else contextlib.nullcontext():
            start = time.perf_counter()
            for _ in range(count):
                op()
            return time.perf_counter() - start

    for name in names:  # warm up caches, connections and the interpreter
        run(name, max(10, ops // 10))
    for round_number in range(rounds):
        order = names[round_number % len(names) :] + names[: round_number % len(names)]
        for name in order:
            rates[name].append(ops / run(name, ops))
    return rates


def query_counts(store: SessionStore, public_id: str) -> dict[str, int]:
    """Count the statements of each kind of request through the web lifecycle."""
    core = SessionMiddlewareCore(store)
    statements: list[str] = []
    hook = lambda event: statements.append(event.sql)  # noqa: E731
    store.database.query_hooks.append(hook)

    def request(cookie: str | None, action: Callable[[Any], None] | None) -> int:
        statements.clear()
        request_session = core.begin(f"session={cookie}" if cookie else None, https=False)
        if action is not None:
            action(request_session.session)
        request_session.finish(200)
        return len(statements)

    def change(session: Any) -> None:
        session["counter"] = session.get("counter", 0) + 1

    try:
        return {
            "untouched": request(public_id, None),
            "read": request(public_id, lambda s: s.get("user_id")),
            "write": request(public_id, change),
            "new session": request(None, change),
            "hostile cookie": request("'; DROP TABLE x; --", lambda s: s.get("user_id")),
        }
    finally:
        store.database.query_hooks.remove(hook)


def server_settings(store: SessionStore) -> dict[str, Any]:
    db = store.database
    queries = {
        "sqlite": ["PRAGMA journal_mode", "PRAGMA synchronous", "PRAGMA cache_size"],
        "postgres": [
            "SHOW server_version",
            "SHOW shared_buffers",
            "SHOW synchronous_commit",
            "SHOW fsync",
        ],
        "mysql": [
            "SELECT @@version",
            "SELECT @@innodb_buffer_pool_size",
            "SELECT @@innodb_flush_log_at_trx_commit",
            "SELECT @@sync_binlog",
        ],
    }
    kind = (
        "sqlite"
        if "Sqlite" in type(db).__name__
        else "postgres"
        if "Postgres" in type(db).__name__
        else "mysql"
    )
    out = {}
    with store.connected():
        for sql in queries[kind]:
            out[sql] = str(db.execute_sql(sql).fetchone()[0])
    return out


def _redact(url: str) -> str:
    from storedsession.database import redact

    return redact(url)


def print_table(report: dict[str, Any]) -> None:
    print()
    print(f"storedsession benchmark, {report['date']}, {report['machine']}")
    print(
        f"payload {report['payload']} B, {report['rounds']} rounds x {report['ops']} ops, "
        "median of per-round ratios"
    )
    print()
    header = (
        f"{'backend':9} {'rows':>10}  {'contender':28} {'ops/s':>9} "
        f"{'floor ops/s':>11} {'ratio':>6}"
    )
    print(header)
    print("-" * len(header))
    for backend, result in report["backends"].items():
        for size, figures in result["sizes"].items():
            ops = figures["ops_per_second"]
            for mine, base in figures["pairs"]:
                print(
                    f"{backend:9} {int(size):>10,}  {mine:28} {ops[mine]:>9,.0f} "
                    f"{ops[base]:>11,.0f} {figures['ratio_to_floor'][mine]:>6.2f}"
                )
        counts = ", ".join(f"{k} {v}" for k, v in result["queries"].items())
        print(f"{backend:9} queries per request: {counts}")
    for backend, result in report["backends"].items():
        sizes = list(result["sizes"])
        if len(sizes) > 1:
            small, large = result["sizes"][sizes[0]], result["sizes"][sizes[-1]]
            for mine, _ in small["pairs"]:
                change = large["ratio_to_floor"][mine] / small["ratio_to_floor"][mine] - 1
                print(
                    f"{backend:9} scale {int(sizes[0]):,} -> {int(sizes[-1]):,} rows: "
                    f"{mine} ratio changes {change:+.1%}"
                )
    if report.get("expiry"):
        for backend, sweep in report["expiry"].items():
            print(
                f"{backend:9} expiry sweep of {sweep['rows']:,} rows ({sweep['expired']:,} "
                f"expired) in {sweep['seconds']:.1f} s, exit {sweep['exit_code']}, "
                f"{sweep['errors']} request errors; request p99 "
                f"{sweep['p99_ms_without']:.2f} ms without, {sweep['p99_ms_during']:.2f} ms "
                f"during ({sweep['p99_factor']:.2f}x)"
            )
            calm, busy = sweep.get("p99_ms_without_by_kind"), sweep.get("p99_ms_during_by_kind")
            if calm and busy:
                print(
                    f"{'':9} reads {calm['read']:.2f} -> {busy['read']:.2f} ms, "
                    f"writes {calm['write']:.2f} -> {busy['write']:.2f} ms"
                )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument(
        "--sizes",
        default="10000",
        help="table sizes to measure at, comma-separated (e.g. 10000,1000000)",
    )
    parser.add_argument("--live", type=int, default=2000, help="sessions read and written")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--ops", type=int, default=1000, help="operations per round")
    parser.add_argument("--payload", type=int, default=1024, help="bytes of JSON per session")
    parser.add_argument("--no-frameworks", dest="frameworks", action="store_false")
    parser.add_argument(
        "--expiry",
        type=int,
        default=0,
        metavar="ROWS",
        help="also time storedsession-expire on ROWS rows, half expired",
    )
    parser.add_argument("--smoke", action="store_true", help="a tiny run that only checks it works")
    parser.add_argument("--json", default="bench/results/latest.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.sizes, args.live, args.rounds, args.ops = "200", 50, 2, 20
        args.expiry = args.expiry and 2000
    args.sizes = [int(s) for s in args.sizes.split(",")]
    import tempfile

    from . import expiry

    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()}",
        "payload": args.payload,
        "rounds": args.rounds,
        "ops": args.ops,
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "backends": {},
        "expiry": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            print(f"{backend} …", file=sys.stderr)
            report["backends"][backend] = run_backend(backend, args, Path(tmp))
            if args.expiry:
                url = URLS[backend].format(tmp=tmp)
                report["expiry"][backend] = expiry.sweep_under_load(url, args.expiry)
            _write(report, args.json)  # after each backend: a failure later keeps these
    print_table(report)
    if args.json:
        print(f"\nwritten to {args.json}")
    return 0


def _write(report: dict[str, Any], where: str) -> None:
    if where:
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
