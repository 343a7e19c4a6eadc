"""What a save must do is decided once (``Session._plan``); a write's result is adopted whole."""

from __future__ import annotations

from typing import Any

import pytest

from storedsession import Outcome, SessionInterrupted, SessionStore, serialization
from storedsession.session import Action, Stored


def _stored_session(store: SessionStore, **data: Any) -> str:
    session = store.load(None)
    session.update(data)
    store.save(session)
    assert session.id is not None
    return session.id


def test_each_change_plans_its_own_action(store: SessionStore) -> None:
    new = store.load(None)
    assert new._plan() == (Action.NOTHING, None) and not new.modified
    new["a"] = 1
    assert new._plan() == (Action.INSERT, b'{"a":1}') and new.modified

    public_id = _stored_session(store, a=1, cart=[1])
    untouched = store.load(public_id)
    assert untouched._plan() == (Action.TOUCH, None) and not untouched.modified
    same = store.load(public_id)
    same["a"] = 1  # set, but to the value it had: serialized once to know
    assert same._plan() == (Action.TOUCH, b'{"a":1,"cart":[1]}') and not same.modified
    changed = store.load(public_id)
    changed["cart"].append(2)
    assert changed._plan() == (Action.DATA, b'{"a":1,"cart":[1,2]}') and changed.modified
    signed_in = store.load(public_id)
    signed_in.user_id = 7
    assert signed_in._plan()[0] is Action.METADATA and signed_in.modified
    remembered = store.load(public_id)
    remembered.set_expiry(3600)
    assert remembered._plan()[0] is Action.METADATA
    moved = store.load(public_id)
    moved.regenerate()
    assert moved._plan()[0] is Action.REGENERATE and moved.modified

    ended = store.load(public_id)
    ended.invalidate()
    assert ended._plan() == (Action.DELETE, None) and not ended.modified
    ended["b"] = 2
    assert ended._plan() == (Action.REPLACE, b'{"b":2}')
    assert store.save(ended) is Outcome.WRITTEN
    assert store.load(public_id).new and dict(store.load(ended.id)) == {"b": 2}


@pytest.mark.parametrize("change", ["insert", "data", "metadata", "regenerate", "replace"])
def test_a_save_serializes_once(store: SessionStore, monkeypatch, change: str) -> None:
    public_id = _stored_session(store, a=1)
    session = store.load(None if change == "insert" else public_id)
    if change == "metadata":
        session.user_id = "42"
    elif change == "regenerate":
        session.regenerate()
    elif change == "replace":
        session.invalidate()
    session["b"] = 2
    calls = []
    real = serialization.dumps
    monkeypatch.setattr(serialization, "dumps", lambda data: calls.append(1) or real(data))
    assert store.save(session) is Outcome.WRITTEN
    assert calls == [1]


def test_a_write_replaces_the_stored_value_whole(store: SessionStore) -> None:
    public_id = _stored_session(store, a=1)
    session = store.load(public_id)
    before = session._stored
    assert isinstance(before, Stored) and before.public_id == public_id
    assert (before.version, before.plaintext, before.user_id) == (1, b'{"a":1}', None)
    session["a"] = 2
    session.user_id = "42"
    store.save(session)
    after = session._stored
    assert after is not before and before.version == 1 and before.plaintext == b'{"a":1}'
    assert (after.version, after.plaintext, after.user_id) == (2, b'{"a":2}', "42")
    assert store.load(public_id)._stored == after


def test_a_merged_save_adopts_the_row_it_wrote(store: SessionStore) -> None:
    public_id = _stored_session(store, a=1)
    ours, theirs = store.load(public_id), store.load(public_id)
    theirs["t"] = 1
    theirs.user_id = "7"
    store.save(theirs)
    ours["o"] = 1
    assert store.save(ours) is Outcome.WRITTEN  # lost the race: merged and written
    assert ours._stored is not None and ours._stored.version == 3
    assert dict(ours) == {"a": 1, "t": 1, "o": 1} and ours.user_id == "7"
    assert store.load(public_id)._stored == ours._stored


def test_an_interrupted_retry_leaves_the_session_as_it_was(store: SessionStore) -> None:
    public_id = _stored_session(store, a=1)
    ours, theirs = store.load(public_id), store.load(public_id)
    ours["o"] = 1
    ours.user_id = "42"
    before, data = ours._stored, dict(ours)
    store.delete(theirs)  # the row goes: our versioned UPDATE matches nothing, the re-read neither
    with pytest.raises(SessionInterrupted):
        store.save(ours)
    assert ours._stored is before and dict(ours) == data and ours.user_id == "42"
    assert ours._plan()[0] is Action.METADATA
