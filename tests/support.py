"""Helpers shared by the tests (fixtures live in conftest.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import peewee

from storedsession import SessionStore


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 0, **kwargs: float) -> None:
        self.now += timedelta(seconds=seconds, **kwargs)


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
