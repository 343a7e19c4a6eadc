"""Load, save and delete: the store's basic contract on every backend."""

from __future__ import annotations

import pytest

from storedsession import Outcome, Session, SessionStore

from .support import fetch_rows


def test_new_session_round_trips(store: SessionStore) -> None:
    session = store.load(None)
    assert session.new and session.id is None and session.handle is None
    session["user"] = {"name": "Zoë", "roles": ["admin"]}
    assert store.save(session) is Outcome.WRITTEN
    assert not session.new and session.id is not None
    loaded = store.load(session.id)
    assert dict(loaded) == {"user": {"name": "Zoë", "roles": ["admin"]}}
    assert loaded.handle == session.handle
    assert not loaded.modified


def test_empty_new_session_writes_nothing(store: SessionStore, count_queries) -> None:
    session = store.load(None)
    with count_queries(store) as q:
        assert store.save(session) is Outcome.NOTHING
    assert q.count == 0
    assert fetch_rows(store) == []


@pytest.mark.parametrize("value", [None, "", "short", "A" * 44, "A" * 42 + "B", "é" * 43])
def test_bad_ids_load_empty_without_a_query(store, count_queries, value) -> None:
    with count_queries(store) as q:
        session = store.load(value)
    assert q.count == 0
    assert isinstance(session, Session) and session.new and len(session) == 0
