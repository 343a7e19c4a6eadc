"""What causal reads cost on a Galera cluster: µs per session load, with and without.

    .venv/bin/python scripts/galera_read_cost.py            # starts a cluster of its own
    .venv/bin/python scripts/galera_read_cost.py URL URL URL  # or uses a running one

Loads one session through node 2, alternating load by load between a store as built
(``wsrep_sync_wait`` set) and one whose connection switched it off, so that machine noise
hits both alike; first on an idle cluster, then while threads save other sessions through
nodes 1 and 3 (a causal read then also waits for node 2 to apply what they committed).
Prints the median µs per load of each.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storedsession import SessionStore, generate_key
from storedsession.pools import GALERA_SYNC_WAIT
from tests.galera import Cluster

LOADS = 3000


def _measure(causal: SessionStore, plain: SessionStore, sid: str) -> tuple[float, float]:
    """Median µs per load with and without the wait, the two interleaved load by load."""
    samples: tuple[list[float], list[float]] = ([], [])
    with causal.connected(), plain.connected() as database:
        database.execute_sql("SET SESSION wsrep_sync_wait = 0")
        pairs = [(causal, samples[0]), (plain, samples[1])]
        for _ in range(LOADS):
            pairs.reverse()  # each goes first half of the time
            for store, into in pairs:
                started = time.perf_counter()
                store.load(sid)
                into.append(time.perf_counter() - started)
    return statistics.median(samples[0]) * 1e6, statistics.median(samples[1]) * 1e6


def main(urls: list[str]) -> None:
    keys, table = [generate_key()], f"ss_cost_{uuid.uuid4().hex[:12]}"
    stores = [SessionStore(url, keys=keys, table_name=table) for url in urls]
    stores[0].create_table()
    try:
        session = stores[0].load(None)
        session.update(user=1, cart=[1, 2, 3], csrf="x" * 43)
        stores[0].save(session)
        assert session.id is not None
        causal = stores[1]
        plain = SessionStore(urls[1], keys=keys, table_name=table)
        stores.append(plain)
        idle = _measure(causal, plain, session.id)

        stop, saves = threading.Event(), [0]

        def writer(store: SessionStore) -> None:
            own = store.load(None)
            own["n"] = 0
            store.save(own)
            while not stop.is_set():
                own["n"] += 1
                store.save(own)
                saves[0] += 1

        threads = [threading.Thread(target=writer, args=(s,)) for s in (stores[0], stores[2])]
        for thread in threads:
            thread.start()
        started = time.monotonic()
        try:
            busy = _measure(causal, plain, session.id)
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        rate = saves[0] / (time.monotonic() - started)
        print(f"Median µs per load on node 2 ({LOADS} loads each, interleaved):")
        for label, (waited, unwaited) in (("idle cluster", idle), (f"{rate:.0f} saves/s", busy)):
            print(
                f"  {label:>16}: wsrep_sync_wait={GALERA_SYNC_WAIT} {waited:6.0f}"
                f"   wsrep_sync_wait=0 {unwaited:6.0f}   cost {waited - unwaited:+6.0f}"
            )
    finally:
        stores[0].drop_table()
        for store in stores:
            store.close()


if __name__ == "__main__":
    if len(sys.argv) == 4:
        main(sys.argv[1:])
    else:
        cluster = Cluster(tempfile.mkdtemp(prefix="ss-galera-cost-"))
        try:
            main(cluster.start())
        finally:
            cluster.stop()
