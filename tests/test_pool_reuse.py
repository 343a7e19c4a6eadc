"""The pools' quick checkout and return: what they reuse unchecked, and what they leave to
peewee's pool (a stale connection, an open transaction), on real servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from storedsession.database import open_database
from storedsession.pools import RECENT, MySQLPool, PostgresPool

from .support import backend_url

SERVER_BACKENDS = ["postgres", "mysql"]


@pytest.fixture(params=SERVER_BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path) -> str:
    return backend_url(request.param, tmp_path)


def _server_id(db: PostgresPool | MySQLPool) -> int:
    sql = "SELECT pg_backend_pid()" if isinstance(db, PostgresPool) else "SELECT CONNECTION_ID()"
    return int(db.execute_sql(sql).fetchone()[0])


def _in_transaction(db: PostgresPool | MySQLPool) -> bool:
    conn = db.connection()
    if isinstance(db, PostgresPool):
        return conn.get_transaction_status() != 0  # psycopg2's TRANSACTION_STATUS_IDLE
    return bool(conn.server_status & 1)  # SERVER_STATUS_IN_TRANS


@pytest.fixture
def pool(url: str) -> Iterator[PostgresPool | MySQLPool]:
    db, _ = open_database(url)
    assert isinstance(db, PostgresPool | MySQLPool)
    yield db
    db.close_all()


def test_a_connection_handed_back_moments_ago_is_the_one_handed_out(pool) -> None:
    pool.connect()
    first = _server_id(pool)
    pool.close()
    for _ in range(20):
        pool.connect()
        assert _server_id(pool) == first
        pool.close()
    assert len(pool._in_use) == 0 and len(pool._connections) == 1


def test_a_stale_connection_is_replaced_even_within_the_recent_window(pool) -> None:
    pool._stale_timeout = RECENT / 4
    pool.connect()
    first = _server_id(pool)
    pool.close()
    time.sleep(RECENT / 2)  # stale, though handed back less than RECENT ago
    pool.connect()
    assert _server_id(pool) != first
    pool.close()
    assert len(pool._connections) == 1  # the stale one was closed, not kept


def test_a_connection_handed_back_in_a_transaction_is_rolled_back(pool) -> None:
    pool.connect()
    first = _server_id(pool)
    pool.execute_sql("BEGIN")  # the driver's transaction, not peewee's
    assert _in_transaction(pool)
    pool.close()
    pool.connect()
    assert _server_id(pool) == first
    assert not _in_transaction(pool)
    pool.close()


def test_a_connection_the_server_ended_is_replaced_after_the_recent_window(pool) -> None:
    pool.connect()
    first = _server_id(pool)
    pool.close()
    killer, _ = open_database(
        backend_url("postgres" if isinstance(pool, PostgresPool) else "mysql", None)
    )
    with killer.connection_context():
        if isinstance(pool, PostgresPool):
            killer.execute_sql("SELECT pg_terminate_backend(%s)", (first,))
        else:
            killer.execute_sql(f"KILL {first}")
    killer.close_all()
    time.sleep(RECENT + 0.2)  # idle: checked with a round trip, found dead, replaced
    pool.connect()
    assert _server_id(pool) != first
    pool.close()


def test_a_thread_waiting_for_a_full_pool_wakes_when_a_connection_comes_back(url) -> None:
    pool, _ = open_database(url + "?max_connections=1")
    assert isinstance(pool, PostgresPool | MySQLPool)
    try:
        pool.connect()
        got: list[float] = []

        def wait_for_it() -> None:
            pool.connect()
            got.append(time.monotonic())
            pool.close()

        waiter = threading.Thread(target=wait_for_it)
        waiter.start()
        deadline = time.monotonic() + 5
        while not pool._pool_available._waiters and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pool._pool_available._waiters, "the second thread never waited"
        returned = time.monotonic()
        pool.close()  # the quick return: it must wake the waiter, not leave it to time out
        waiter.join(5)
        assert got and got[0] - returned < 0.5  # peewee's wait would time out after 1 s
    finally:
        pool.close_all()
