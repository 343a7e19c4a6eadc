"""What client work between round trips costs in time: ``python -m bench.roundtrip``.

    python -m bench.roundtrip [--backends postgres,mysql] [--ops 3000] [--blocks 7]

On a database server, a session read is a round trip plus the client's own work. This
runs the floor's ``SELECT`` (``bench/floor.py``, one persistent raw connection) in a
loop, with a busy wait of 0, 5, 13, 25 and 50 µs of client work after each query, and
prints microseconds per query (the best and the median of ``--blocks`` blocks of
``--ops`` queries, the waits interleaved block by block) and what each wait added to the
time of a query with none. Where a wait of N µs adds more than N, the round trip itself
got slower while the client worked: the server's process, idle longer, took longer to
wake. That is why, on the servers, a contender that does more work per read trails the
floor by more than its own work (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

from . import floor as floor_module
from .__main__ import URLS, payload

WAITS_US = (0, 5, 13, 25, 50)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def measure(url: str, ops: int, blocks: int) -> dict[int, list[float]]:
    """Return, for each wait, the µs per query of every block."""
    floor = floor_module.Floor(url, f"bench_roundtrip_{uuid.uuid4().hex[:8]}")
    try:
        public_id = "p" * 43
        floor.add([public_id], payload(1024))
        times: dict[int, list[float]] = {wait: [] for wait in WAITS_US}
        for _ in range(blocks):
            for wait in WAITS_US:
                seconds = wait / 1e6
                started = time.perf_counter()
                for _ in range(ops):
                    floor.read(public_id)
                    if seconds:
                        _spin(seconds)
                times[wait].append((time.perf_counter() - started) / ops * 1e6)
        return times
    finally:
        floor.drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="postgres,mysql")
    parser.add_argument("--ops", type=int, default=3000)
    parser.add_argument("--blocks", type=int, default=7)
    args = parser.parse_args()
    print(f"{'backend':10} {'wait µs':>7} {'best µs':>8} {'median µs':>9} {'added µs':>8}")
    for backend in args.backends.split(","):
        times = measure(URLS[backend], args.ops, args.blocks)
        base = statistics.median(times[0])
        for wait, values in times.items():
            median = statistics.median(values)
            added = "" if wait == 0 else f"{median - base:8.1f}"
            print(f"{backend:10} {wait:7d} {min(values):8.1f} {median:9.1f} {added:>8}")


if __name__ == "__main__":
    main()
