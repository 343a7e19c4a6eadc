"""One contract, every database: fixtures that run tests on SQLite, PostgreSQL and MariaDB.

Server URLs come from ``STOREDSESSION_TEST_POSTGRES`` and ``STOREDSESSION_TEST_MYSQL``
(defaults: the local servers). The backend ``pgbouncer`` is that PostgreSQL again behind a
PgBouncer in transaction-pooling mode that the run starts for itself (tests/pgbouncer.py).
An unreachable server skips its tests, unless ``STOREDSESSION_REQUIRE_ALL_BACKENDS=1`` is
set (CI), which makes them fail. Every test gets a table of its own, dropped afterwards,
so runs can overlap. ``front`` runs a web test on each adapter (tests/fronts.py). Helpers
live in tests/support.py: conftest.py imports from it, never the reverse.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from storedsession import SessionStore, generate_key

from .fronts import FRONTS, Front, build
from .support import BACKENDS, FakeClock, QueryCounter, backend_url, stop_pgbouncer


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_pgbouncer()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The name of the backend under test."""
    return request.param


@pytest.fixture
def database_url(backend: str, tmp_path: Any) -> str:
    """A URL of the backend under test."""
    return backend_url(backend, tmp_path)


@pytest.fixture
def table_name() -> str:
    """A table name no other test or run uses."""
    return f"ss_test_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def keys() -> list[str]:
    return [generate_key()]


@pytest.fixture
def make_store(
    database_url: str, table_name: str, keys: list[str], clock: FakeClock
) -> Iterator[Callable[..., SessionStore]]:
    """Build stores on the test's table (created once, dropped at the end)."""
    built: list[SessionStore] = []

    def make(**options: Any) -> SessionStore:
        options.setdefault("keys", keys)
        options.setdefault("table_name", table_name)
        options.setdefault("clock", clock)
        store = SessionStore(options.pop("database", database_url), **options)
        store.create_table()
        built.append(store)
        return store

    yield make
    for store in built:
        try:
            store.drop_table()
        finally:
            store.close()


@pytest.fixture
def store(make_store: Callable[..., SessionStore]) -> SessionStore:
    return make_store()


@pytest.fixture
def count_queries() -> Callable[[Any], QueryCounter]:
    """``with count_queries(store) as q: ...; assert q.count == 1``."""

    def counter(store_or_database: Any) -> QueryCounter:
        database = getattr(store_or_database, "database", store_or_database)
        return QueryCounter(database)

    return counter


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, store: SessionStore) -> Front:
    """Bottle, Falcon WSGI or Falcon ASGI with the adapter on ``store`` (tests/fronts.py)."""
    return build(request.param, store)
