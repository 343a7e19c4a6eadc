"""A user's sessions: list them, sign out one device, sign out everywhere else."""

from __future__ import annotations

import json

import bottle
import pytest

from storedsession import SessionInfo, SessionStore, signals
from storedsession.plugins.bottle import StoredSessionPlugin

from .support import fetch_rows
from .wire import wsgi_call


def _login(store: SessionStore, user_id, clock=None):
    session = store.load(None)
    session["n"] = 1
    session.user_id = user_id
    store.save(session)
    if clock is not None:
        clock.advance(1)
    return session


def test_user_id_is_text(store: SessionStore) -> None:
    session = _login(store, 42)
    assert session.user_id == "42"
    assert store.load(session.id).user_id == "42"


def test_sessions_for_lists_live_sessions_most_recent_first(make_store, clock) -> None:
    store = make_store(idle_timeout=600, touch_interval=0)
    first = _login(store, 1, clock)
    second = _login(store, "1", clock)
    _login(store, 2, clock)
    clock.advance(10)
    store.save(store.load(first.id))  # first is now the most recently seen
    listed = store.sessions_for(1)
    assert [info.handle for info in listed] == [first.handle, second.handle]
    assert all(isinstance(info, SessionInfo) for info in listed)
    assert listed[0].last_seen_at == clock.now and listed[0].created_at < clock.now
    clock.advance(595)
    assert [info.handle for info in store.sessions_for(1)] == [first.handle]


def test_revoke_one_device(store: SessionStore) -> None:
    mine = _login(store, 1)
    theirs = _login(store, 2)
    assert not store.revoke(theirs.handle, user_id=1)  # not mine to revoke
    assert not store.load(theirs.id).new
    assert store.revoke(mine.handle, user_id=1)
    assert store.load(mine.id).new
    assert not store.revoke(mine.handle)
    assert store.revoke(theirs.handle)
    assert fetch_rows(store) == []


def test_revoke_ignores_malformed_handles(store: SessionStore, count_queries) -> None:
    session = _login(store, 1)
    with count_queries(store) as q:
        for bad in ("", "x", session.id, session.handle.upper(), "' OR 1=1 --"):
            assert not store.revoke(bad)
    assert q.count == 0
    assert not store.load(session.id).new


def test_revoke_user_keeps_this_device(store: SessionStore) -> None:
    here = _login(store, 1)
    elsewhere = [_login(store, 1) for _ in range(3)]
    other_user = _login(store, 2)
    deleted_handles: list[str] = []
    signals.session_delete.connect(lambda sender, sid: deleted_handles.append(sid), weak=False)
    try:
        assert store.revoke_user(1, keep=here) == 3
    finally:
        signals.session_delete.receivers.clear()
    assert sorted(deleted_handles) == sorted(s.handle for s in elsewhere)
    assert not store.load(here.id).new
    assert all(store.load(s.id).new for s in elsewhere)
    assert not store.load(other_user.id).new
    assert store.revoke_user(1) == 1
    assert store.revoke_user(1) == 0


#: user_id values no backend can store: PostgreSQL refuses a NUL; a lone surrogate has no
#: UTF-8 form, so every driver fails to send it.
UNSTORABLE = ["a\x00b", "\x00", "\ud800", "x\udfffy"]


@pytest.mark.parametrize("bad", UNSTORABLE, ids=["nul", "only-nul", "surrogate", "low-surrogate"])
def test_a_user_id_no_database_can_store_is_refused_when_set(
    store: SessionStore, count_queries, bad
) -> None:
    stored_session = _login(store, "alice")
    for session in (store.load(None), store.load(stored_session.id)):
        before = session.user_id
        with count_queries(store) as q, pytest.raises(ValueError, match="user_id"):
            session.user_id = bad
        assert q.count == 0
        assert session.user_id == before
        session["n"] = 2
        store.save(session)  # the session itself is fine
        assert store.load(session.id).user_id == before
    # Lookups by such an id find nothing, before any SQL.
    with count_queries(store) as q:
        assert store.sessions_for(bad) == []
        assert store.revoke(stored_session.handle, user_id=bad) is False
        assert store.revoke_user(bad) == 0
    assert q.count == 0
    assert not store.load(stored_session.id).new


@pytest.mark.parametrize("bad", UNSTORABLE[::2], ids=["nul", "surrogate"])
def test_a_user_id_no_database_can_store_is_the_apps_to_refuse(store: SessionStore, bad) -> None:
    app = bottle.Bottle()
    app.config["catchall"] = False
    app.install(StoredSessionPlugin(store))

    @app.post("/signin")
    def sign_in(session):
        session["tried"] = True
        try:  # JSON carries both: "\u0000", and "\ud800" alone
            session.user_id = bottle.request.json["name"]
        except ValueError:
            bottle.abort(400, "That name cannot be used.")  # the app's business; not a 500
        return "signed in"

    body = json.dumps({"name": bad}).encode()
    headers = {"Content-Type": "application/json"}
    reply = wsgi_call(app, "/signin", method="POST", headers=headers, body=body)
    assert reply.status == 400
    assert [row[2] for row in fetch_rows(store)] == [None]  # saved, without a user
