"""Helpers shared by the tests: backends, a clock, a query counter, rows as stored, a
count of a function's calls and of the jobs a store gives its threads.

Fixtures live in conftest.py, which imports from here (never the reverse); test modules
import helpers from here, never from conftest.py or from one another.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import peewee
import pytest
from playhouse import db_url

from storedsession import SessionStore
from storedsession.aio import Workers

from .pgbouncer import PgBouncer

SERVER_URLS = {
    "postgres": os.environ.get(
        "STOREDSESSION_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
    ),
    "mysql": os.environ.get("STOREDSESSION_TEST_MYSQL", "mysql://root@127.0.0.1:3306/test"),
}
BACKENDS = ("sqlite", "postgres", "mysql", "pgbouncer")
REQUIRE_ALL = os.environ.get("STOREDSESSION_REQUIRE_ALL_BACKENDS") == "1"
_reachable: dict[str, str | None] = {}
_bouncer = PgBouncer(SERVER_URLS["postgres"])


def stop_pgbouncer() -> None:
    """Stop the PgBouncer a ``pgbouncer`` test started (at the end of the run)."""
    _bouncer.stop()


def _probe(backend: str) -> str | None:
    """Return why ``backend`` cannot be used, or None when it answers."""
    if backend not in _reachable:
        try:
            if backend == "pgbouncer":
                SERVER_URLS["pgbouncer"] = _bouncer.start()
            database = db_url.connect(SERVER_URLS[backend])
            database.connect()
            database.execute_sql("SELECT 1")
            database.close()
            _reachable[backend] = None
        except Exception as exc:
            _reachable[backend] = f"{backend} is not reachable: {type(exc).__name__}: {exc}"
    return _reachable[backend]


def backend_url(backend: str, tmp_path: Any) -> str:
    """Return a database URL for ``backend``, skipping (or failing in CI) if it is down."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/sessions.db"
    problem = _probe(backend)
    if problem:
        if REQUIRE_ALL:
            pytest.fail(problem + " (STOREDSESSION_REQUIRE_ALL_BACKENDS=1)")
        pytest.skip(problem)
    return SERVER_URLS[backend]


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **kwargs: float) -> None:
        self.now += timedelta(seconds=seconds, **kwargs)


T = TypeVar("T")


class CountingWorkers(Workers):
    """A store's worker threads that count the jobs they are given: as ``store._workers``,
    how often a request went to a worker thread."""

    def __init__(self) -> None:
        super().__init__(threads=1)
        self.jobs = 0

    async def run(self, function: Callable[..., T], /, *args: Any) -> T:
        self.jobs += 1
        return await super().run(function, *args)


@contextmanager
def calls_of(function: Callable[..., Any]) -> Iterator[list[int]]:
    """Record the thread of each call of ``function`` in this thread and in the threads
    started meanwhile (a worker pool's): a profile hook sees every call of its code,
    however the caller refers to it, and changes nothing it calls."""
    code = function.__code__  # type: ignore[attr-defined]
    threads: list[int] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is code:
            threads.append(threading.get_ident())

    before, before_threads = sys.getprofile(), threading.getprofile()
    sys.setprofile(hook)
    threading.setprofile(hook)
    try:
        yield threads
    finally:
        sys.setprofile(before)
        threading.setprofile(before_threads)  # type: ignore[arg-type]


class QueryCounter:
    """Counts the statements a peewee database runs (peewee's query hooks)."""

    def __init__(self, database: peewee.Database) -> None:
        self.database = database
        self.statements: list[str] = []

    def _hook(self, event: Any) -> None:
        self.statements.append(event.sql)

    def __enter__(self) -> QueryCounter:
        self.statements.clear()
        self.database.query_hooks.append(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self.database.query_hooks.remove(self._hook)

    @property
    def count(self) -> int:
        return len(self.statements)


def fetch_rows(store: SessionStore) -> list[tuple[Any, ...]]:
    """Every stored row, as the database holds it."""
    table = store.database.quote[0] + store.table_name + store.database.quote[1]
    with store.connected():
        return list(store.database.execute_sql(f"SELECT * FROM {table}").fetchall())


def stored(store: SessionStore, **data: Any) -> str:
    """Save a new session holding ``data`` (``{"a": 1}`` when empty); return its public id."""
    session = store.load(None)
    session.update(data or {"a": 1})
    store.save(session)
    assert session.id is not None
    return session.id


def connection_given_back(store: SessionStore) -> bool:
    """Whether this thread holds no connection: a pool has it back, SQLite keeps its own.

    A URL-built SQLite database keeps one connection per thread open (reopening re-runs
    the pragmas), so there "given back" means no transaction is left open on it.
    """
    if store.database.is_closed():
        return True
    return store._connection.keep_open and not store.database.in_transaction()
