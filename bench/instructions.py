"""Instructions per operation, counted by callgrind: a figure a loaded machine cannot blur.

    python -m bench.instructions [--backends sqlite,postgres,mysql] [--ops 300]
                                 [--keep DIR] [--valgrind valgrind]

For each backend it runs itself under ``valgrind --tool=callgrind`` and counts the
instructions this process executes (the client side only: the database server's work is
not in the figure) for ``--ops`` operations of each contender, after a warm-up of a fifth
as many, and prints instructions per operation:

- ``floor read`` / ``floor write``: ``bench/floor.py`` over its own raw connection;
- ``row, raw``: the store's own read done by hand as the floor does its own, over a raw
  connection of the same kind: hash the id, the store's SELECT of its seven columns (on
  MySQL and PostgreSQL five of them packed in one, as the store reads them),
  ``envelope.open`` (format 2 binds four of them) and the JSON parse. What it adds to
  ``floor read`` is the richer row; what ``read, held`` adds to it is the library's code;
- ``read`` / ``write``: the README's default path, a store built from a plain URL and
  nothing held by the caller (``store.load(id)``, then ``store.save(session)`` with no
  change, or with one key changed);
- ``read, held`` / ``write, held``: the same inside ``with store.connected():``;
- ``checkout``: ``with store.connected(): pass``, what the default path adds to each
  operation when it takes a connection and gives it back.

Each phase ends with a call of ``os.getppid()``, on which callgrind dumps its counters
(``--dump-before=getppid``), so that every phase has a file of its own. With ``--keep DIR``
the files stay in ``DIR`` (``callgrind.<backend>.<n>``, in the order printed) for
``callgrind_annotate --inclusive=yes DIR/callgrind.postgres.<n>``.

The store runs with a one-hour ``touch_interval``: under valgrind a run takes minutes,
and a read that refreshes its session's last-seen time (once a minute by default) would
count an ``UPDATE`` the ordinary read does not make. 1 KB sessions, as ``python -m bench``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from storedsession import SessionStore, generate_key, serialization

from . import floor as floor_module
from .__main__ import URLS, payload

LIVE = 50

#: The phases in the order they run; each is dumped to a file of its own.
PHASES = (
    "floor read",
    "row, raw",
    "read",
    "read, held",
    "floor write",
    "write",
    "write, held",
    "checkout",
)


def child(backend: str, ops: int, tmp: str) -> None:
    """Run every phase once; the parent reads callgrind's dump of each."""
    url = URLS[backend].format(tmp=tmp)
    suffix = uuid.uuid4().hex[:8]
    store = SessionStore(
        url,
        keys=[generate_key()],
        table_name=f"bench_ins_{suffix}",
        touch_interval=timedelta(hours=1),
    )
    store.create_table()
    floor = floor_module.Floor(url, f"bench_insf_{suffix}")
    data = payload(1024)
    try:
        public_ids = []
        for _ in range(LIVE):
            session = store.load(None)
            session.update(data)
            store.save(session)
            public_ids.append(session.id)
        floor.add(public_ids, data)
        state = {"i": 0}

        def next_id() -> str:
            state["i"] += 1
            return public_ids[state["i"] % LIVE]

        def read() -> None:
            session = store.load(next_id())
            assert session["user_id"] == 1234
            store.save(session)

        def write() -> None:
            session = store.load(next_id())
            session["counter"] += 1
            store.save(session)

        def checkout() -> None:
            with store.connected():
                pass

        def floor_read() -> None:
            assert floor.read(next_id()) is not None

        raw, _ = floor_module.connect(url)
        raw_cursor = raw.cursor()
        select, unpack, envelope = store._sql.select, store._sql.unpack, store.envelope

        def row_raw() -> None:
            handle = hashlib.sha256(next_id().encode()).hexdigest()
            raw_cursor.execute(select, (handle,))
            row = raw_cursor.fetchone()
            payload, user_id, created, _, _, idle, _ = row if unpack is None else unpack(row)
            _, plaintext = envelope.open(bytes(payload), handle, user_id, created, idle)
            assert serialization.loads(plaintext)["user_id"] == 1234

        def floor_write() -> None:
            floor.write(next_id(), "counter", state["i"])

        operations: dict[str, tuple[Callable[[], None], bool]] = {
            "floor read": (floor_read, False),
            "row, raw": (row_raw, False),
            "read": (read, False),
            "read, held": (read, True),
            "floor write": (floor_write, False),
            "write": (write, False),
            "write, held": (write, True),
            "checkout": (checkout, False),
        }
        for name in PHASES:
            op, held = operations[name]
            for _ in range(max(10, ops // 5)):  # warm-up: caches, the pool, the interpreter
                op()
            if held:
                with store.connected():
                    os.getppid()  # dump: what came before is not measured
                    for _ in range(ops):
                        op()
                    os.getppid()
            else:
                os.getppid()
                for _ in range(ops):
                    op()
                os.getppid()
        raw.close()
    finally:
        store.drop_table()
        store.close()
        floor.drop()


_TOTAL = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def count(backend: str, ops: int, out: Path, valgrind: str) -> dict[str, float]:
    """Run the child under callgrind; return instructions per operation of each phase."""
    base = out / f"callgrind.{backend}"
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            valgrind,
            "--tool=callgrind",
            "--dump-before=getppid",
            f"--callgrind-out-file={base}",
            sys.executable,
            "-m",
            "bench.instructions",
            "--child",
            backend,
            "--ops",
            str(ops),
            "--tmp",
            tmp,
        ]
        subprocess.run(command, check=True, stderr=subprocess.DEVNULL)
    # Dumps: 1 is the set-up; then each phase gives a warm-up dump and a measured one.
    totals = []
    for n in range(1, 2 * len(PHASES) + 1):
        text = Path(f"{base}.{n}").read_text()
        match = _TOTAL.search(text)
        assert match is not None, f"no totals in {base}.{n}"
        totals.append(int(match.group(1)))
    return {name: totals[2 * i + 1] / ops for i, name in enumerate(PHASES)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    parser.add_argument("--backends", default="sqlite,postgres,mysql")
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--keep", metavar="DIR", help="keep callgrind's files in DIR")
    parser.add_argument("--valgrind", default="valgrind")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.ops, args.tmp)
        return 0
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(args.keep or scratch)
        out.mkdir(parents=True, exist_ok=True)
        for backend in args.backends.split(","):
            print(f"{backend} …", file=sys.stderr)
            results[backend] = count(backend, args.ops, out, args.valgrind)
    print(f"\ninstructions per operation (client side), {args.ops} operations per phase\n")
    header = f"{'backend':9} {'phase':12} {'instructions':>12} {'÷ floor':>8}"
    print(header)
    print("-" * len(header))
    for backend, figures in results.items():
        for name in PHASES:
            base = "floor write" if "write" in name else "floor read"
            ratio = "" if name == "checkout" else f"{figures[name] / figures[base]:8.2f}"
            print(f"{backend:9} {name:12} {figures[name]:>12,.0f} {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
