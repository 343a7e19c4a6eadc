"""Connections, counted on the server: a store built from a plain URL keeps and reuses them.

PostgreSQL counts every session a database ever had (``pg_stat_database.sessions``), so
each test gets a database of its own. MariaDB limits how often an account may connect
(``MAX_CONNECTIONS_PER_HOUR``), so each test gets an account of its own, limited to the
number of connections the store may open: one more open fails the test with a 503.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest
from playhouse import db_url

from storedsession import ConfigurationError, SessionStore

from .fronts import FRONTS, build
from .support import backend_url, stored


class Server:
    """A database or account of the test's own on a real server, whose opens are counted."""

    def __init__(self, backend: str, admin_url: str) -> None:
        self.backend = backend
        self.admin = db_url.connect(admin_url)
        self.name = f"ss_conn_{uuid.uuid4().hex[:12]}"
        self._parts = urlsplit(admin_url)
        self.limit: int | None = None
        self._url = ""

    def url(self, limit: int, query: str = "") -> str:
        """A plain URL of the test's own; on MariaDB the account may connect ``limit`` times."""
        self.limit = limit
        parts = self._parts
        with self.admin.connection_context():
            if self.backend == "postgres":
                self.admin.execute_sql(f'CREATE DATABASE "{self.name}"')
                parts = parts._replace(path=f"/{self.name}")
            else:
                self.admin.execute_sql(
                    f"CREATE USER '{self.name}'@'127.0.0.1' WITH MAX_CONNECTIONS_PER_HOUR {limit}"
                )
                self.admin.execute_sql(f"GRANT ALL ON test.* TO '{self.name}'@'127.0.0.1'")
                parts = parts._replace(netloc=f"{self.name}@{parts.hostname}:{parts.port or 3306}")
        self._url = urlunsplit(parts._replace(query=""))
        return urlunsplit(parts._replace(query=query))

    def opened(self) -> int:
        """How many connections the test's database had (PostgreSQL only)."""
        assert self.backend == "postgres"
        with self.admin.connection_context():
            self.admin.execute_sql("SELECT pg_stat_clear_snapshot()")
            row = self.admin.execute_sql(
                "SELECT sessions FROM pg_stat_database WHERE datname = %s", (self.name,)
            ).fetchone()
        return int(row[0])

    def assert_opened(self, at_most: int, exactly: bool = False) -> None:
        """The store opened at most (or exactly) ``at_most`` connections, as the server saw."""
        if self.backend == "postgres":
            opened = self.opened()
            assert (opened == at_most) if exactly else (1 <= opened <= at_most), opened
            return
        # MariaDB refused any open beyond the limit (the store would have answered 503);
        # with ``exactly``, the account has no open left, so the store used them all.
        assert self.limit == at_most
        if exactly:
            probe = db_url.connect(self._url)
            with pytest.raises(peewee.OperationalError, match="max_connections_per_hour"):
                probe.connect()

    def drop(self) -> None:
        with self.admin.connection_context():
            if self.backend == "postgres":
                self.admin.execute_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            else:
                self.admin.execute_sql(f"DROP USER IF EXISTS '{self.name}'@'127.0.0.1'")


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Server]:
    counted = Server(request.param, backend_url(request.param, tmp_path))
    yield counted
    counted.drop()


@pytest.fixture
def make(server: Server, keys: list[str], table_name: str) -> Iterator[Callable[..., SessionStore]]:
    """Build the store the way the README does: a plain URL, nothing else."""
    built: list[SessionStore] = []

    def build(limit: int, query: str = "") -> SessionStore:
        store = SessionStore(server.url(limit, query), keys=keys, table_name=table_name)
        store.create_table()
        built.append(store)
        return store

    yield build
    for store in built:
        store.drop_table()
        store.close()


def test_sequential_loads_and_saves_use_one_connection(make, server) -> None:
    store = make(limit=1)
    for _ in range(50):
        public_id = stored(store, n=0)
        session = store.load(public_id)
        session["n"] += 1
        store.save(session)
        assert dict(store.load(public_id)) == {"n": 1}
    server.assert_opened(1, exactly=True)


def test_threads_open_at_most_one_connection_each(make, server) -> None:
    threads, rounds = 4, 25
    store = make(limit=threads)
    public_ids = [stored(store, n=0) for _ in range(threads)]
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(public_id: str) -> None:
        try:
            start.wait(10)
            for _ in range(rounds):
                session = store.load(public_id)
                session["n"] += 1
                store.save(session)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(p,)) for p in public_ids]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert [store.load(p)["n"] for p in public_ids] == [rounds] * threads
    server.assert_opened(threads)


def test_the_pool_size_from_the_url_caps_the_connections(make, server) -> None:
    """Eight threads on a pool of two: they wait for each other, never open a third."""
    store = make(limit=2, query="max_connections=2")
    public_id = stored(store, start=True)
    errors: list[BaseException] = []

    def work(key: str) -> None:  # keys of their own: concurrent saves keep every change
        try:
            for n in range(1, 11):
                session = store.load(public_id)
                session[key] = n
                store.save(session)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert errors == []
    assert dict(store.load(public_id)) == {"start": True, **{f"t{i}": 10 for i in range(8)}}
    server.assert_opened(2)


@pytest.mark.parametrize("front", FRONTS)
def test_sequential_adapter_requests_use_one_connection(make, server, front) -> None:
    store = make(limit=1)
    app = build(front, store)
    first = app.get("/count")
    assert first.status == 200
    cookie = first.session_pair()
    for _ in range(59):
        assert app.get("/count", cookie=cookie).status == 200
    assert store.load(cookie.partition("=")[2])["n"] == 60
    server.assert_opened(1, exactly=True)


def test_sqlite_keeps_one_connection_per_thread(tmp_path, keys, table_name) -> None:
    store = SessionStore(f"sqlite:///{tmp_path}/s.db", keys=keys, table_name=table_name)
    store.create_table()
    try:
        public_id = stored(store, n=0)
        connection = store.database.connection()
        for _ in range(20):
            session = store.load(public_id)
            session["n"] += 1
            store.save(session)
            assert store.database.connection() is connection
        seen: list[Any] = []

        def other_thread() -> None:
            store.load(public_id)
            seen.append(store.database.connection())

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join(10)
        assert seen and seen[0] is not connection
    finally:
        store.drop_table()
        store.close()


def test_an_option_the_mysql_driver_does_not_take_is_refused_when_built(tmp_path, keys) -> None:
    url = backend_url("mysql", tmp_path) + "?api_token=s3cretCANARY"
    with pytest.raises(ConfigurationError, match="api_token") as caught:
        SessionStore(url, keys=keys)
    assert "s3cretCANARY" not in str(caught.value)
