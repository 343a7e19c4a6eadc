"""End to end, through real servers: ``python -m bench.e2e [options]``.

Bottle and Falcon WSGI under gunicorn (2 sync workers), Falcon ASGI under uvicorn (2
workers), driven over loopback by wrk, on SQLite, PostgreSQL and MariaDB. Each (server,
backend) cell serves four variants side by side, each from its own server and table:

- ``bare``: the same routes with no session at all (a constant reply);
- ``floor``: the floor's raw read (or write) by hand, one persistent connection per worker
  (under ASGI its query runs in a worker thread; its write route sends the cookie too);
- ``storedsession``: as the README shows it, a plain URL, keys from ``STOREDSESSION_KEYS``;
- ``beaker``: Beaker's ``SessionMiddleware`` with ``ext:database`` (WSGI only).

Each server starts, ``--sessions`` sessions of 1 KB are made (over HTTP, by a request
without a cookie that writes, for storedsession and Beaker; with the floor's own ``add()``
for the floor), and wrk cycles through their cookies. Rounds are interleaved: each round
runs every variant of a (server, backend, phase) cell once, the order rotating; figures
are medians over rounds, ratios the medians of per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.cookies import SimpleCookie
from importlib import metadata
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import floor as floor_module
from .__main__ import URLS, payload
from .e2e_apps import COOKIE, sqlalchemy_url

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("bottle", "falcon-wsgi", "falcon-asgi")
VARIANTS = ("bare", "floor", "storedsession", "beaker")
PHASES = ("read", "write")
WSGI_ONLY = {"beaker"}
#: Floor target of the issue: storedsession at or above this share of the floor.
TARGET = 0.85


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    wrk = ensure_wrk()
    if "beaker" in args.variants:
        try:
            import beaker  # noqa: F401
            import sqlalchemy  # noqa: F401
        except ImportError as exc:
            raise SystemExit(f"{exc}: install the bench extra, pip install -e '.[bench]'") from exc
    os.environ.setdefault("STOREDSESSION_KEYS", _generate_key())
    report: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "uptime_before": _uptime(),
        },
        "versions": versions(wrk, args.backends),
        "command": "python -m bench.e2e " + " ".join(argv if argv is not None else sys.argv[1:]),
        "settings": {
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "connections": args.connections,
            "threads": args.threads,
            "sessions": args.sessions,
            "payload_bytes": 1024,
            "workers": 2,
            "uvicorn_nodelay_fix": not args.uvicorn_as_is,
            "async_threads": args.async_threads,
        },
        "cells": [],
    }
    if args.async_threads is not None:  # the servers inherit the environment
        os.environ["E2E_ASYNC_THREADS"] = str(args.async_threads)
    print(f"uptime before: {report['machine']['uptime_before']}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        for server in args.servers:
            for backend in args.backends:
                print(f"{server} on {backend} …", file=sys.stderr)
                report["cells"] += run_cell(wrk, server, backend, args, Path(tmp))
                _write(report, args.json)  # after each cell: a failure later keeps these
    report["machine"]["uptime_after"] = _uptime()
    _write(report, args.json)
    print_table(report)
    if args.json:
        print(f"\nwritten to {args.json}")
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--duration", type=float, default=15, help="seconds of each wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=3, help="seconds of wrk before rounds")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--json", default="bench/results/e2e.json")
    parser.add_argument(
        "--async-threads",
        type=int,
        default=None,
        help="the store's async_threads under ASGI (the store's default when omitted)",
    )
    parser.add_argument(
        "--uvicorn-as-is",
        action="store_true",
        help="run uvicorn without the fix of its issue 3149 (40 ms per keep-alive request)",
    )
    args = parser.parse_args(argv)
    for name, known in (
        ("backends", tuple(URLS)),
        ("servers", SERVERS),
        ("variants", VARIANTS),
        ("phases", PHASES),
    ):
        values = [v.strip() for v in getattr(args, name).split(",") if v.strip()]
        unknown = sorted(set(values) - set(known))
        if unknown or not values:
            parser.error(f"--{name} takes some of {','.join(known)}, not {','.join(unknown)}")
        setattr(args, name, values)
    if args.duration < 1 or args.rounds < 1 or args.sessions < 1 or args.warmup < 0:
        parser.error("--duration, --rounds and --sessions take at least 1, --warmup 0 or more")
    return args


# -- wrk --------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Return wrk's path, installing it with bench/setup.sh (Debian's package) if missing."""
    found = shutil.which("wrk")
    if found is None:
        print("wrk is not installed: running bench/setup.sh …", file=sys.stderr)
        subprocess.run(["bash", str(ROOT / "bench" / "setup.sh")], check=False, timeout=900)
        found = shutil.which("wrk")
    if found is None:
        raise SystemExit(
            "wrk is needed and bench/setup.sh could not install it (apt-get install wrk)"
        )
    return found


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> dict[str, Any]:
    """Read wrk's ``--latency`` report: requests/s, p50/p99 in ms, requests and errors."""

    def number(pattern: str) -> float:
        match = re.search(pattern, text)
        return float(match.group(1)) if match else 0.0

    percentiles = {
        int(p): float(value) * _UNITS[unit]
        for p, value, unit in re.findall(
            r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M
        )
    }
    sockets = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    socket_errors = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, sockets.groups()), strict=True))
        if sockets
        else {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    )
    if not re.search(r"Requests/sec:", text):
        raise RuntimeError(f"wrk printed no report:\n{text}")
    non_2xx = int(number(r"Non-2xx or 3xx responses:\s+(\d+)"))
    return {
        "rps": number(r"Requests/sec:\s+([\d.]+)"),
        "p50_ms": percentiles.get(50, 0.0),
        "p99_ms": percentiles.get(99, 0.0),
        "requests": int(number(r"(\d+) requests in")),
        "non_2xx": non_2xx,
        "socket_errors": socket_errors,
        "errors": non_2xx + sum(socket_errors.values()),
    }


LUA = """\
-- Written by bench/e2e.py: GET {path}, each request with the next session's cookie.
-- Thread k of {threads} takes cookies k, k + {threads}, ...: no two threads share a session.
cookies = {{
{cookies}
}}
local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end
function init(args)
  i = id or 0
end
function request()
  local cookie = cookies[i % #cookies + 1]
  i = i + {threads}
  return wrk.format("GET", "{path}", {{["Cookie"] = cookie}})
end
"""


def lua_script(where: Path, path: str, cookies: list[str], threads: int) -> Path:
    """Write a wrk script in which each thread cycles through its own share of ``cookies``."""
    lines = ",\n".join(f'  "{COOKIE}={c}"' for c in cookies)
    where.write_text(LUA.format(path=path, cookies=lines, threads=threads))
    return where


def run_wrk(
    wrk: str, port: int, script: Path, seconds: float, args: argparse.Namespace
) -> dict[str, Any]:
    command = [
        wrk,
        f"--threads={args.threads}",
        f"--connections={args.connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=5s",
        "--latency",
        f"--script={script}",
        f"http://127.0.0.1:{port}/",
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


# -- servers ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_command(server: str, port: int, uvicorn_as_is: bool = False) -> list[str]:
    if server == "falcon-asgi":
        # bench.e2e_apps runs uvicorn's own CLI with the fix of uvicorn issue 3149 (see there).
        runner = "uvicorn" if uvicorn_as_is else "bench.e2e_apps"
        return [
            sys.executable, "-m", runner, "--factory", "bench.e2e_apps:asgi",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "2",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "gunicorn", "--workers", "2", "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
        "bench.e2e_apps:wsgi()",
    ]  # fmt: skip


@contextlib.contextmanager
def serving(
    server: str,
    variant: str,
    url: str,
    table: str,
    floor_key: bytes,
    log: Path,
    uvicorn_as_is: bool = False,
) -> Iterator[int]:
    """Run one server on a free loopback port until the block ends; yield the port."""
    port = free_port()
    env = dict(
        os.environ,
        E2E_SERVER=server,
        E2E_VARIANT=variant,
        E2E_URL=url,
        E2E_TABLE=table,
        E2E_FLOOR_KEY=floor_key.hex(),
    )
    with log.open("wb") as out:
        process = subprocess.Popen(
            server_command(server, port, uvicorn_as_is),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while _get(port, "/ping")[0] != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{server} ({variant}) did not start:\n{log.read_text()[-3000:]}"
                )
            time.sleep(0.2)
        yield port
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _get(port: int, path: str, cookie: str | None = None) -> tuple[int, str | None]:
    """GET ``path``; return the status and the session cookie it set (0 if unreachable)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Cookie": f"{COOKIE}={cookie}"} if cookie else {})
        response = connection.getresponse()
        response.read()
        jar: SimpleCookie = SimpleCookie()
        for header in response.headers.get_all("Set-Cookie") or ():
            jar.load(header)
        morsel = jar.get(COOKIE)
        return response.status, morsel.value if morsel else None
    except OSError:
        return 0, None
    finally:
        connection.close()


# -- one (server, backend) cell ---------------------------------------------------------


def run_cell(
    wrk: str, server: str, backend: str, args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    """Serve every variant of one (server, backend) and measure each phase in rounds."""
    variants = [v for v in args.variants if not (server == "falcon-asgi" and v in WSGI_ONLY)]
    skipped = [v for v in args.variants if v not in variants]
    suffix = uuid.uuid4().hex[:8]
    floor_key = os.urandom(32)
    with contextlib.ExitStack() as stack:
        ports: dict[str, int] = {}
        cookies: dict[str, list[str]] = {}
        for variant in variants:
            table = f"e2e_{variant}_{suffix}"
            url = _url(backend, tmp, table)
            stack.callback(_drop, url, table)
            ready = prepare(variant, url, table, floor_key, args.sessions)
            log = tmp / f"{server}-{backend}-{variant}.log"
            ports[variant] = stack.enter_context(
                serving(server, variant, url, table, floor_key, log, args.uvicorn_as_is)
            )
            cookies[variant] = (
                ready if ready is not None else make_sessions(ports[variant], args.sessions)
            )
        cells = []
        for phase in args.phases:
            scripts = {
                v: lua_script(
                    tmp / f"{server}-{backend}-{v}-{phase}.lua",
                    f"/{phase}",
                    cookies[v],
                    args.threads,
                )
                for v in variants
            }
            if args.warmup:
                for variant in variants:
                    run_wrk(wrk, ports[variant], scripts[variant], args.warmup, args)
            rounds: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
            for number in range(args.rounds):
                order = variants[number % len(variants) :] + variants[: number % len(variants)]
                for variant in order:
                    result = run_wrk(wrk, ports[variant], scripts[variant], args.duration, args)
                    rounds[variant].append(result)
                    print(
                        f"  {phase} round {number + 1}: {variant:13} {result['rps']:>9,.0f} req/s "
                        f"p99 {result['p99_ms']:.1f} ms, {result['errors']} errors",
                        file=sys.stderr,
                    )
            cells += summarise(server, backend, phase, rounds)
            cells += [
                {"server": server, "backend": backend, "variant": v, "phase": phase, "na": True}
                for v in skipped
            ]
    return cells


def _url(backend: str, tmp: Path, table: str) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/{table}.db"  # a file per variant: no writer waits for another
    return URLS[backend]


def prepare(variant: str, url: str, table: str, floor_key: bytes, count: int) -> list[str] | None:
    """Create ``variant``'s table before its server starts; return the floor's cookies."""
    if variant == "storedsession":
        from storedsession import SessionStore

        store = SessionStore(url, table_name=table)
        store.create_table()
        store.close()
    elif variant == "beaker":
        from beaker.ext.database import DatabaseNamespaceManager

        # Beaker's own CREATE TABLE; its engine is the benchmark's, not a server's.
        manager = DatabaseNamespaceManager("e2e", url=sqlalchemy_url(url), table_name=table)
        manager.bind.dispose()
        DatabaseNamespaceManager.binds.clear()
        DatabaseNamespaceManager.tables.clear()
    elif variant == "floor":
        floor = floor_module.Floor(url, table)
        floor.aead = AESGCM(floor_key)
        public_ids = [secrets.token_urlsafe(32) for _ in range(count)]
        floor.add(public_ids, payload(1024))
        floor.conn.close()
        return public_ids
    elif variant == "bare":
        return [secrets.token_urlsafe(32) for _ in range(count)]  # cookies of the same size
    return None


def make_sessions(port: int, count: int) -> list[str]:
    """Start ``count`` sessions over HTTP (a request without a cookie that writes)."""
    cookies = []
    for _ in range(count):
        status, cookie = _get(port, "/new")
        if status != 200 or cookie is None:
            raise RuntimeError(f"GET /new answered {status} with cookie {cookie!r}")
        cookies.append(cookie)
    status, _ = _get(port, "/read", cookies[0])
    if status != 200:
        raise RuntimeError(f"GET /read with a new session's cookie answered {status}")
    return cookies


def _drop(url: str, table: str) -> None:
    conn, _ = floor_module.connect(url)
    try:
        conn.cursor().execute(f"DROP TABLE IF EXISTS {table}")
    finally:
        conn.close()


def summarise(
    server: str, backend: str, phase: str, rounds: dict[str, list[dict[str, Any]]]
) -> list[dict[str, Any]]:
    """Medians over rounds, and the medians of per-round ratios to floor, bare and Beaker."""
    out = []
    for variant, results in rounds.items():
        row: dict[str, Any] = {
            "server": server,
            "backend": backend,
            "variant": variant,
            "phase": phase,
            "rps": statistics.median(r["rps"] for r in results),
            "p50_ms": statistics.median(r["p50_ms"] for r in results),
            "p99_ms": statistics.median(r["p99_ms"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "rounds": results,
        }
        for base in ("floor", "bare", "beaker"):
            if base in rounds and base != variant:
                ratios = [
                    mine["rps"] / theirs["rps"] if theirs["rps"] else 0.0
                    for mine, theirs in zip(results, rounds[base], strict=True)
                ]
                row[f"ratio_to_{base}"] = statistics.median(ratios)
        out.append(row)
    return out


# -- the report -------------------------------------------------------------------------


def print_table(report: dict[str, Any]) -> None:
    settings, machine = report["settings"], report["machine"]
    print()
    print(
        f"storedsession end to end, {report['date']}, {machine['machine']}, "
        f"{machine['cpu_count']} cores, {machine['platform']}"
    )
    print(f"uptime before: {machine['uptime_before']}")
    print(f"uptime after:  {machine.get('uptime_after', '?')}")
    print(
        f"{settings['workers']} workers per server; wrk {settings['threads']} threads, "
        f"{settings['connections']} connections; {settings['rounds']} interleaved rounds of "
        f"{settings['duration_s']:g} s after {settings['warmup_s']:g} s of warm-up; "
        f"{settings['sessions']} sessions of 1 KB; medians over rounds"
    )
    print()
    header = (
        f"{'server':11} {'backend':8} {'variant':13} {'phase':5} {'req/s':>8} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'errors':>6} {'÷floor':>6} {'÷bare':>6}"
    )
    print(header)
    print("-" * len(header))
    for cell in report["cells"]:
        start = f"{cell['server']:11} {cell['backend']:8} {cell['variant']:13} {cell['phase']:5}"
        if cell.get("na"):
            print(f"{start} {'n/a':>8}")
            continue
        print(
            f"{start} {cell['rps']:>8,.0f} {cell['p50_ms']:>7.2f} {cell['p99_ms']:>7.2f} "
            f"{cell['errors']:>6} {_ratio(cell, 'floor')} {_ratio(cell, 'bare')}"
        )
    mine = [c for c in report["cells"] if c["variant"] == "storedsession" and not c.get("na")]
    _verdict(mine, "floor", lambda r: r >= TARGET, f"at or above {TARGET} x floor")
    _verdict(mine, "beaker", lambda r: r > 1, "ahead of Beaker")


def _ratio(cell: dict[str, Any], base: str) -> str:
    value = cell.get(f"ratio_to_{base}")
    return f"{value:>6.2f}" if value is not None else f"{'':>6}"


def _verdict(cells: list[dict[str, Any]], base: str, ok: Any, what: str) -> None:
    judged = [c for c in cells if f"ratio_to_{base}" in c]
    if not judged:
        return
    misses = [c for c in judged if not ok(c[f"ratio_to_{base}"])]
    print(f"\nstoredsession {what}: {len(judged) - len(misses)} of {len(judged)} cells")
    for c in misses:
        print(f"  not in {c['server']} {c['backend']} {c['phase']}: {c[f'ratio_to_{base}']:.2f}")


def versions(wrk: str, backends: list[str]) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in (
        "storedsession", "gunicorn", "uvicorn", "bottle", "falcon", "beaker", "sqlalchemy",
        "peewee", "psycopg2-binary", "pymysql",
    ):  # fmt: skip
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    shown = subprocess.run([wrk, "-v"], capture_output=True, text=True, timeout=10, check=False)
    out["wrk"] = (shown.stdout + shown.stderr).splitlines()[0].split(" Copyright")[0]
    import sqlite3

    out["sqlite"] = sqlite3.sqlite_version
    for backend, sql in (("postgres", "SHOW server_version"), ("mysql", "SELECT @@version")):
        if backend in backends:
            conn, _ = floor_module.connect(URLS[backend])
            try:
                cursor = conn.cursor()
                cursor.execute(sql)
                out[backend] = str(cursor.fetchone()[0])
            finally:
                conn.close()
    return out


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _generate_key() -> str:
    from storedsession import generate_key

    return generate_key()


def _write(report: dict[str, Any], where: str) -> None:
    if where:
        path = Path(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
