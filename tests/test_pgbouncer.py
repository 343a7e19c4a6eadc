"""PgBouncer in transaction-pooling mode: clients far beyond its server pool, nothing lost.

Every test that takes the ``backend`` fixture also runs as ``pgbouncer``; these two check
that the bouncer really multiplexes, and load it with several processes of threads.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import psycopg2
import pytest

from storedsession import SessionStore

from .pgbouncer import POOL_SIZE
from .support import backend_url, stored

PROCESSES, THREADS, ROUNDS = 3, 8, 15


@pytest.fixture
def bouncer_url(tmp_path: Any) -> str:
    return backend_url("pgbouncer", tmp_path)


def test_clients_share_a_few_server_connections(bouncer_url) -> None:
    clients = [psycopg2.connect(bouncer_url) for _ in range(3 * POOL_SIZE)]
    try:
        pids = set()
        for client in clients:
            with client.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                pids.add(cursor.fetchone()[0])
            client.commit()
        assert 1 <= len(pids) <= POOL_SIZE
    finally:
        for client in clients:
            client.close()


def _worker(url: str, keys: list[str], table: str, shared: str, number: int, out: Any) -> None:
    store = SessionStore(url, keys=keys, table_name=table)
    errors: list[str] = []
    counts: list[int] = []

    def thread(index: int) -> None:
        key = f"p{number}t{index}"
        try:
            mine = stored(store, n=0)
            for n in range(1, ROUNDS + 1):
                session = store.load(mine)
                session["n"] += 1
                store.save(session)
                session = store.load(shared)
                session[key] = n
                store.save(session)
            counts.append(store.load(mine)["n"])
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    store.close()
    out.put({"errors": errors, "counts": counts})


@pytest.mark.slow
def test_processes_of_threads_far_beyond_the_pool_lose_nothing(
    bouncer_url, keys, table_name
) -> None:
    store = SessionStore(bouncer_url, keys=keys, table_name=table_name)
    store.create_table()
    try:
        shared = stored(store, start=True)
        context = multiprocessing.get_context("fork")
        out = context.Queue()
        workers = [
            context.Process(
                target=_worker, args=(bouncer_url, keys, table_name, shared, number, out)
            )
            for number in range(PROCESSES)
        ]
        for worker in workers:
            worker.start()
        reports = [out.get(timeout=180) for _ in workers]
        for worker in workers:
            worker.join(30)
        assert [r["errors"] for r in reports] == [[]] * PROCESSES
        assert sorted(c for r in reports for c in r["counts"]) == [ROUNDS] * PROCESSES * THREADS
        expected = {f"p{p}t{t}": ROUNDS for p in range(PROCESSES) for t in range(THREADS)}
        assert dict(store.load(shared)) == {"start": True, **expected}
    finally:
        store.drop_table()
        store.close()
