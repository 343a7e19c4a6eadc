"""Load, save and delete: the store's basic contract on every backend."""

from __future__ import annotations

import pytest

from storedsession import (
    Outcome,
    SerializationError,
    Session,
    SessionStore,
    SessionTooLarge,
    generate_key,
)

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


def test_stored_row_holds_no_public_id_and_no_plaintext(store: SessionStore) -> None:
    session = store.load(None)
    session["secret"] = "plaintext-canary-7731"
    session.user_id = 7
    store.save(session)
    rows = fetch_rows(store)
    assert len(rows) == 1
    dump = repr(rows).encode() + b"".join(
        bytes(v) for v in rows[0] if isinstance(v, bytes | memoryview | bytearray)
    )
    assert session.id.encode() not in dump
    assert b"plaintext-canary-7731" not in dump
    assert session.handle.encode() in dump  # only the hash is stored


def test_a_stored_hashed_id_sent_as_cookie_finds_nothing(store: SessionStore) -> None:
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    assert store.load(session.handle).new
    assert store.load(session.id.swapcase()).new


@pytest.mark.parametrize("size", [1024, 200 * 1024, "max"])
def test_payload_sizes_round_trip(store: SessionStore, size) -> None:
    length = store.max_size if size == "max" else size
    session = store.load(None)
    session["blob"] = ""
    overhead = len(b'{"blob":""}')
    session["blob"] = "x" * (length - overhead)
    store.save(session)
    loaded = store.load(session.id)
    assert loaded["blob"] == session["blob"]
    if size == "max":
        loaded["blob"] += "y"
        with pytest.raises(SessionTooLarge) as info:
            store.save(loaded)
        assert info.value.size == length + 1
        assert store.load(session.id)["blob"] == session["blob"]  # nothing was written


@pytest.mark.parametrize(
    "value", [(1, 2), {1: "a"}, float("nan"), float("inf"), b"bytes", {"a", "b"}, object()]
)
def test_values_json_would_change_are_refused_naming_the_key(store: SessionStore, value) -> None:
    session = store.load(None)
    session["fine"] = [1, "two", {"three": 3.0}]
    session["bad_key"] = value
    with pytest.raises(SerializationError) as info:
        store.save(session)
    assert info.value.key == "bad_key" and "bad_key" in str(info.value)
    assert fetch_rows(store) == []


def test_datetime_is_refused(store: SessionStore) -> None:
    from datetime import datetime

    session = store.load(None)
    session["when"] = datetime(2026, 1, 1)
    with pytest.raises(SerializationError, match="'when'"):
        store.save(session)


def test_nested_in_place_change_is_saved(store: SessionStore) -> None:
    session = store.load(None)
    session["cart"] = [{"sku": "a", "qty": 1}]
    store.save(session)
    loaded = store.load(session.id)
    assert not loaded.modified
    loaded["cart"][0]["qty"] += 1
    loaded["cart"].append({"sku": "b", "qty": 1})
    assert loaded.modified
    store.save(loaded)
    assert store.load(session.id)["cart"] == [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}]


def test_setting_the_same_value_is_not_a_change(store: SessionStore, count_queries) -> None:
    session = store.load(None)
    session["a"] = {"b": [1, 2]}
    store.save(session)
    loaded = store.load(session.id)
    loaded["a"] = {"b": [1, 2]}
    assert not loaded.modified
    with count_queries(store) as q:
        assert store.save(loaded) is Outcome.NOTHING
    assert q.count == 0


def test_query_counts_per_case(store: SessionStore, count_queries, clock) -> None:
    with count_queries(store) as q:
        new = store.load(None)
        new["n"] = 1
        store.save(new)
    assert q.count == 1, q.statements  # new session: one INSERT

    with count_queries(store) as q:
        read = store.load(new.id)
        assert read["n"] == 1
        assert store.save(read) is Outcome.NOTHING
    assert q.count == 1, q.statements  # read-only: one SELECT

    with count_queries(store) as q:
        write = store.load(new.id)
        write["n"] += 1
        assert store.save(write) is Outcome.WRITTEN
    assert q.count == 2, q.statements  # write: SELECT + conditional UPDATE

    clock.advance(61)
    with count_queries(store) as q:
        touched = store.load(new.id)
        assert store.save(touched) is Outcome.TOUCHED
    assert q.count == 2, q.statements  # past touch_interval: SELECT + "last seen" UPDATE

    with count_queries(store) as q:
        regen = store.load(new.id)
        regen.regenerate()
        assert store.save(regen) is Outcome.WRITTEN
    assert q.count == 2, q.statements  # SELECT + one UPDATE moving the row to its new id

    with count_queries(store) as q:
        logout = store.load(regen.id)
        logout.invalidate()
        assert store.save(logout) is Outcome.DELETED
    assert q.count == 2, q.statements  # SELECT + DELETE
    assert fetch_rows(store) == []


def test_touch_moves_last_seen_only_after_the_interval(store: SessionStore, clock) -> None:
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    first_seen = session.last_seen_at
    clock.advance(59)
    assert store.save(store.load(session.id)) is Outcome.NOTHING
    clock.advance(2)
    touched = store.load(session.id)
    assert store.save(touched) is Outcome.TOUCHED
    assert touched.last_seen_at > first_seen
    assert store.load(session.id).last_seen_at == touched.last_seen_at


def test_touch_of_a_vanished_row_is_a_silent_no_op(store: SessionStore, clock) -> None:
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    loaded = store.load(session.id)
    store.delete(store.load(session.id))
    clock.advance(3600)
    assert store.save(loaded) is Outcome.NOTHING
    assert fetch_rows(store) == []


def test_timestamps_are_aware_utc(store: SessionStore, clock) -> None:
    session = store.load(None)
    assert session.created_at is None and session.expires_at is None
    session["a"] = 1
    store.save(session)
    loaded = store.load(session.id)
    assert loaded.created_at == clock.now
    assert loaded.created_at.tzinfo is not None and loaded.created_at.utcoffset().seconds == 0
    assert loaded.expires_at == clock.now + store.idle_timeout


def test_tampered_and_swapped_rows_read_empty(store: SessionStore, caplog) -> None:
    a, b = store.load(None), store.load(None)
    a["who"], b["who"] = "alice", "bob"
    store.save(a)
    store.save(b)
    model = store.model
    with store.connected():
        payload_b = model.get(model.sid == b.handle).payload
        model.update(payload=payload_b).where(model.sid == a.handle).execute()
    with caplog.at_level("WARNING", logger="storedsession.security"):
        assert len(store.load(a.id)) == 0  # b's ciphertext does not open in a's row
    assert store.load(b.id)["who"] == "bob"
    flipped = bytearray(payload_b)
    flipped[-1] ^= 1
    with store.connected():
        model.update(payload=bytes(flipped)).where(model.sid == b.handle).execute()
    assert len(store.load(b.id)) == 0
    assert sum("decrypt" in r.getMessage() for r in caplog.records) >= 2


def test_key_rotation_keeps_everyone_signed_in(make_store, keys) -> None:
    old_store = make_store()
    session = old_store.load(None)
    session["user"] = 1
    old_store.save(session)
    new_key = generate_key()
    rotated = make_store(keys=[new_key, *keys])
    loaded = rotated.load(session.id)
    assert loaded["user"] == 1
    loaded["user"] = 2
    rotated.save(loaded)
    new_only = make_store(keys=[new_key])
    assert new_only.load(session.id)["user"] == 2
    assert len(old_store.load(session.id)) == 0  # the old key alone no longer reads it


def test_store_delete_removes_the_row_at_once(store: SessionStore) -> None:
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    public_id = session.id
    store.delete(session)
    assert session.new and len(session) == 0
    assert store.load(public_id).new
    assert fetch_rows(store) == []


def test_invalidate_then_new_data_starts_a_fresh_session(store: SessionStore) -> None:
    session = store.load(None)
    session["user"] = 1
    store.save(session)
    old_id = session.id
    loaded = store.load(old_id)
    loaded.invalidate()
    loaded["flash"] = "signed out"
    assert store.save(loaded) is Outcome.WRITTEN
    assert loaded.id != old_id
    assert store.load(old_id).new
    assert dict(store.load(loaded.id)) == {"flash": "signed out"}
    assert len(fetch_rows(store)) == 1


def test_unknown_id_is_never_adopted(store: SessionStore) -> None:
    from storedsession import ids

    unknown = ids.new_public_id()
    session = store.load(unknown)
    assert session.new and session.id is None
    session["a"] = 1
    store.save(session)
    assert session.id != unknown
    assert store.load(unknown).new


def test_colliding_fresh_id_is_redrawn_never_written_over(store: SessionStore, monkeypatch):
    from storedsession import ids

    first = store.load(None)
    first["owner"] = "first"
    store.save(first)
    draws = iter([first.id, first.id, ids.new_public_id()])
    monkeypatch.setattr(ids, "new_public_id", lambda: next(draws))
    second = store.load(None)
    second["owner"] = "second"
    store.save(second)
    assert second.id != first.id
    assert store.load(first.id)["owner"] == "first"
    assert store.load(second.id)["owner"] == "second"


def test_session_repr_shows_no_id_or_values(store: SessionStore) -> None:
    session = store.load(None)
    session["secret"] = "value-canary"
    store.save(session)
    text = repr(store.load(session.id))
    assert session.id not in text and "value-canary" not in text and "secret" not in text


@pytest.mark.parametrize("how", ["get", "values", "items", "setdefault", "dict", "pop_default"])
def test_in_place_changes_through_any_accessor_are_saved(store: SessionStore, how) -> None:
    session = store.load(None)
    session["cart"] = ["a"]
    session["n"] = 1
    store.save(session)
    loaded = store.load(session.id)
    if how == "get":
        loaded.get("cart").append("b")
    elif how == "values":
        next(v for v in loaded.values() if isinstance(v, list)).append("b")
    elif how == "items":
        dict(loaded.items())["cart"].append("b")
    elif how == "setdefault":
        loaded.setdefault("cart", []).append("b")
    elif how == "dict":
        dict(loaded)["cart"].append("b")
    else:
        loaded.pop("missing", loaded["cart"]).append("b")
    assert loaded.modified
    assert store.save(loaded) is Outcome.WRITTEN
    assert store.load(session.id)["cart"] == ["a", "b"]


def test_reading_scalars_needs_no_serialization(store: SessionStore, monkeypatch) -> None:
    from storedsession import serialization

    session = store.load(None)
    session["n"] = 1
    session["cart"] = ["a"]
    store.save(session)
    loaded = store.load(session.id)
    assert loaded["n"] == 1 and "cart" in loaded and len(loaded) == 2
    calls = []
    real = serialization.dumps
    monkeypatch.setattr(serialization, "dumps", lambda data: calls.append(1) or real(data))
    assert not loaded.modified
    assert store.save(loaded) is Outcome.NOTHING
    assert calls == []


def test_ciphertext_copied_to_another_table_with_the_same_keys_reads_empty(
    make_store, table_name, caplog
) -> None:
    first = make_store()
    second = make_store(table_name=table_name + "_b")
    session = first.load(None)
    session["who"] = "alice"
    first.save(session)
    with first.connected():
        row = first.model.get(first.model.sid == session.handle)
    with second.connected():  # the same row, byte for byte, in the other table
        second.model.insert(
            sid=row.sid,
            payload=row.payload,
            user_id=row.user_id,
            created_at=row.created_at,
            last_seen_at=row.last_seen_at,
            expires_at=row.expires_at,
            idle_timeout=row.idle_timeout,
            version=row.version,
        ).execute()
    with caplog.at_level("WARNING", logger="storedsession.security"):
        assert len(second.load(session.id)) == 0
    assert any("decrypt" in r.getMessage() for r in caplog.records)
    assert first.load(session.id)["who"] == "alice"


@pytest.mark.parametrize(
    ("idle_timeout", "absolute_timeout", "own_idle"),
    [(None, None, None), (600, None, 0), (None, 3600, 300), (600, 3600, None)],
    ids=["no-expiry", "browser-cookie", "own-idle", "both-limits"],
)
def test_every_column_reads_back_as_written(
    make_store, idle_timeout, absolute_timeout, own_idle
) -> None:
    # NULL expiry and idle timeout included: MySQL reads five of the columns packed in
    # one text column and PostgreSQL in one array, which must give back None, 0 and
    # every integer as they were.
    store = make_store(idle_timeout=idle_timeout, absolute_timeout=absolute_timeout)
    session = store.load(None)
    session["a"] = 1
    session.user_id = "bob"
    if own_idle is not None:
        session.set_expiry(own_idle)
    store.save(session)
    assert store.load(session.id)._stored == session._stored
    # A save that lost a race re-reads the row (under a lock) and merges onto it.
    mine, theirs = store.load(session.id), store.load(session.id)
    theirs["b"] = 2
    store.save(theirs)
    mine["c"] = 3
    store.save(mine)
    latest = store.load(session.id)
    assert dict(latest) == {"a": 1, "b": 2, "c": 3}
    assert latest._stored == mine._stored and latest.idle_timeout == session.idle_timeout
