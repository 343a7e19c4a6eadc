"""What the store trusts is authenticated: a row's columns edited without the keys read empty.

Each test edits a row the way someone with write access to the table but without the keys
could (plain SQL), then loads it through the store, on every backend.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from typing import Any

import pytest

from storedsession import Session, SessionStore, generate_key
from storedsession.maintenance import rotate_keys
from storedsession.writes import Outcome

from .support import FakeClock, fetch_rows, stored
from .vectors import generate

SECURITY = "storedsession.security"


def sql(store: SessionStore, statement: str, *params: Any) -> int:
    """Run one statement on the session table (``{t}`` is its name, ``?`` a parameter)."""
    database = store.database
    table = database.quote[0] + store.table_name + database.quote[1]
    text = statement.replace("{t}", table).replace("?", database.param)
    with store.connected():
        return int(database.execute_sql(text, params).rowcount)


def column(store: SessionStore, handle: str | None, name: str) -> Any:
    [row] = [row for row in fetch_rows(store) if row[0] == handle]
    names = ["sid", "payload", "user_id", "created_at", "last_seen_at", "expires_at"]
    names += ["idle_timeout", "version"]
    value = row[names.index(name)]
    return bytes(value) if name == "payload" else value


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SECURITY and r.levelno >= logging.WARNING
    ]


def signed_in(store: SessionStore, user_id: str, **data: Any) -> Session:
    session = store.load(None)
    session.update(data or {"role": "user"})
    session.user_id = user_id
    store.save(session)
    return session


def seal_v1(key: str, store: SessionStore, handle: str, plaintext: bytes) -> bytes:
    """A payload in format 1, as releases before format 2 wrote it."""
    salt, nonce = os.urandom(16), os.urandom(12)
    return generate.seal_v1(key, salt, nonce, store.table_name, handle, plaintext)


def to_format_1(store: SessionStore, key: str, session: Session, data: dict[str, Any]) -> None:
    """Rewrite a stored session's payload in format 1, as an older release left it."""
    payload = seal_v1(key, store, session.handle or "", generate._json(data))
    assert sql(store, "UPDATE {t} SET payload = ? WHERE sid = ?", payload, session.handle) == 1


# -- columns edited without keys -------------------------------------------------------
def test_a_user_id_swapped_in_by_sql_reads_empty_and_is_logged(store, caplog) -> None:
    admin = signed_in(store, "1", role="admin")
    mallory = signed_in(store, "666", role="user")
    anonymous = stored(store, cart=[1])
    sql(store, "UPDATE {t} SET user_id = ? WHERE sid = ?", "1", mallory.handle)
    anonymous_handle = store.load(anonymous).handle
    sql(store, "UPDATE {t} SET user_id = ? WHERE sid = ?", "1", anonymous_handle)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        for public_id in (mallory.id, anonymous):
            loaded = store.load(public_id)
            assert loaded.new and len(loaded) == 0 and loaded.user_id is None
    assert len(warnings_of(caplog)) == 2
    assert all("could not be decrypted" in message for message in warnings_of(caplog))
    assert store.load(admin.id).user_id == "1"  # the real session is untouched
    assert column(store, mallory.handle, "user_id") == "1"  # left for expiry, not deleted


def test_a_user_id_cleared_by_sql_reads_empty(store, caplog) -> None:
    session = signed_in(store, "42")
    sql(store, "UPDATE {t} SET user_id = NULL WHERE sid = ?", session.handle)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(session.id).new
    assert warnings_of(caplog)


@pytest.mark.parametrize("shift", [-1, -86_400_000], ids=["1ms-earlier", "a-day-earlier"])
def test_a_creation_time_moved_reads_empty(store, caplog, shift) -> None:
    session = signed_in(store, "42")
    sql(store, "UPDATE {t} SET created_at = created_at + ? WHERE sid = ?", shift, session.handle)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(session.id).new
    assert any("could not be decrypted" in message for message in warnings_of(caplog))


def test_a_creation_time_moved_later_with_its_last_seen_reads_empty(store, clock, caplog) -> None:
    session = signed_in(store, "42")
    clock.advance(3600)
    later = store.now()  # an hour of absolute lifetime gained, last-seen kept sane
    sql(
        store,
        "UPDATE {t} SET created_at = ?, last_seen_at = ? WHERE sid = ?",
        later,
        later,
        session.handle,
    )
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(session.id).new
    assert any("could not be decrypted" in message for message in warnings_of(caplog))


@pytest.mark.parametrize("stretched", [86_400, None, 0], ids=["a-day", "store-default", "zero"])
def test_an_idle_timeout_stretched_reads_empty(store, caplog, stretched) -> None:
    session = signed_in(store, "42")
    session.set_expiry(60)
    store.save(session)
    assert column(store, session.handle, "idle_timeout") == 60
    sql(store, "UPDATE {t} SET idle_timeout = ? WHERE sid = ?", stretched, session.handle)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(session.id).new
    assert warnings_of(caplog)


def test_a_stored_expiry_stretched_changes_nothing(store, clock) -> None:
    """The stored expiry is not sealed, and never the only judge: configuration agrees."""
    session = signed_in(store, "42")
    sql(store, "UPDATE {t} SET expires_at = NULL WHERE sid = ?", session.handle)
    clock.advance(store.idle_timeout.total_seconds() + 1)
    assert store.load(session.id).new


@pytest.mark.parametrize("ahead, loads", [(299, True), (300, True), (301, False), (86_400, False)])
def test_last_seen_ahead_of_the_clock_by_more_than_five_minutes_reads_empty(
    store, clock, caplog, ahead, loads
) -> None:
    session = signed_in(store, "42")
    sql(
        store,
        "UPDATE {t} SET last_seen_at = ? WHERE sid = ?",
        store.now() + ahead * 1000,
        session.handle,
    )
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        loaded = store.load(session.id)
    assert loaded.new is not loads
    if not loads:
        assert any("last-seen" in message for message in warnings_of(caplog))
        assert column(store, session.handle, "user_id") == "42"  # left in place


def test_last_seen_before_creation_reads_empty(store, caplog) -> None:
    session = signed_in(store, "42")
    sql(store, "UPDATE {t} SET last_seen_at = created_at - 1 WHERE sid = ?", session.handle)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(session.id).new
    assert any("last-seen" in message for message in warnings_of(caplog))


def test_every_write_that_changes_user_id_or_idle_reseals(store, clock) -> None:
    """Login, logout of the user id, set_expiry, regenerate and a merge all stay readable."""
    public_id = stored(store, n=0)
    session = store.load(public_id)
    session.user_id = 7
    session.set_expiry(600)
    assert store.save(session) is Outcome.WRITTEN
    stale = store.load(public_id)
    changed = store.load(public_id)
    changed.user_id = "8"
    store.save(changed)
    stale["n"] = 1  # lost the race to a change of user_id: merged, then sealed anew
    store.save(stale)
    merged = store.load(public_id)
    assert dict(merged) == {"n": 1} and merged.user_id == "8" and merged.idle_timeout == 600
    merged.set_expiry(None)
    merged.regenerate()
    store.save(merged)
    again = store.load(merged.id)
    assert again.user_id == "8" and again.idle_timeout is None and dict(again) == {"n": 1}
    again.user_id = None
    store.save(again)
    assert store.load(merged.id).user_id is None
    clock.advance(120)
    touched = store.load(merged.id)
    assert store.save(touched) is Outcome.TOUCHED  # a touch changes no sealed column
    assert dict(store.load(merged.id)) == {"n": 1}


def test_columns_of_the_wrong_type_read_empty(tmp_path, keys, caplog) -> None:
    """SQLite keeps text put into an integer column as text; a load must not raise."""
    store = SessionStore(f"sqlite:///{tmp_path}/typed.db", keys=keys)
    store.create_table()
    edits = [("created_at", "soon"), ("idle_timeout", "long"), ("payload", "text")]
    for column_name, value in edits:
        session = signed_in(store, "42")
        sql(store, f"UPDATE {{t}} SET {column_name} = ? WHERE sid = ?", value, session.handle)
        with caplog.at_level(logging.WARNING, logger=SECURITY):
            assert store.load(session.id).new
    assert len(warnings_of(caplog)) == len(edits)
    store.close()


# -- format 1 ----------------------------------------------------------------------------
def test_a_format_1_row_loads_and_its_next_write_moves_it_to_format_2(
    make_store, keys, caplog
) -> None:
    store = make_store()
    session = signed_in(store, "42", cart=[1, 2])
    to_format_1(store, keys[0], session, {"cart": [1, 2]})
    assert column(store, session.handle, "payload")[0] == 1
    loaded = store.load(session.id)
    assert dict(loaded) == {"cart": [1, 2]} and loaded.user_id == "42"
    assert store.save(loaded) is Outcome.NOTHING  # a read writes nothing
    assert column(store, session.handle, "payload")[0] == 1
    loaded["cart"].append(3)
    store.save(loaded)
    assert column(store, session.handle, "payload")[0] == 2
    assert dict(store.load(session.id)) == {"cart": [1, 2, 3]}
    # Now sealed to its columns, like any format-2 row.
    sql(store, "UPDATE {t} SET user_id = ? WHERE sid = ?", "1", session.handle)
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert store.load(session.id).new


def test_format_1_columns_are_not_authenticated(make_store, keys) -> None:
    """The reason to rotate: a format-1 row still takes an edited user_id."""
    store = make_store()
    session = signed_in(store, "666")
    to_format_1(store, keys[0], session, {"role": "user"})
    sql(store, "UPDATE {t} SET user_id = ? WHERE sid = ?", "1", session.handle)
    assert store.load(session.id).user_id == "1"
    strict = make_store(legacy_envelopes=False)
    assert strict.load(session.id).new


def test_legacy_envelopes_false_refuses_format_1_and_logs(make_store, keys, caplog) -> None:
    store = make_store()
    strict = make_store(legacy_envelopes=False)
    session = signed_in(store, "42")
    current = signed_in(store, "43")
    to_format_1(store, keys[0], session, {"role": "user"})
    with caplog.at_level(logging.WARNING, logger=SECURITY):
        assert strict.load(session.id).new
    assert any("legacy_envelopes=False" in message for message in warnings_of(caplog))
    assert strict.load(current.id).user_id == "43"  # format 2 opens as usual
    assert store.load(session.id).user_id == "42"  # the row is left in place


def test_rotation_moves_every_format_1_row_even_under_the_newest_key(make_store, keys) -> None:
    new_key = generate_key()
    old = make_store()
    rotating = make_store(keys=[new_key, *keys])
    legacy_old = signed_in(old, "1")  # format 1, old key
    to_format_1(old, keys[0], legacy_old, {"role": "user"})
    legacy_new = signed_in(rotating, "2")  # format 1, already under the newest key
    to_format_1(rotating, new_key, legacy_new, {"role": "user"})
    current = signed_in(rotating, "3")  # format 2, newest key: nothing to do
    moved = signed_in(old, "4")  # format 2, old key
    moved.set_expiry(600)
    old.save(moved)
    before = {row[0]: row for row in fetch_rows(old)}
    report = rotate_keys(rotating)
    assert (report.rotated, report.current, report.unreadable) == (3, 1, 0)
    after = {row[0]: row for row in fetch_rows(old)}
    assert all(bytes(row[1])[0] == 2 for row in after.values())
    assert all(after[handle][-1] == before[handle][-1] for handle in before)  # no version moved
    strict = make_store(keys=[new_key], legacy_envelopes=False)
    for session, user in [(legacy_old, "1"), (legacy_new, "2"), (current, "3"), (moved, "4")]:
        loaded = strict.load(session.id)
        assert loaded.user_id == user and dict(loaded) == {"role": "user"}
    assert strict.load(moved.id).idle_timeout == 600  # re-sealed with its own columns
    again = rotate_keys(rotating)
    assert (again.rotated, again.current) == (0, 4)


# -- the metadata map --------------------------------------------------------------------
def test_the_metadata_map_is_carried_from_load_to_save(make_store, keys, clock) -> None:
    store = make_store()
    session = signed_in(store, "42", n=0)
    metadata = {"user_agent": "Firefox", "ip": "::1"}
    payload = generate.seal_v2(
        keys[0],
        os.urandom(16),
        os.urandom(12),
        store.table_name,
        session.handle or "",
        "42",
        column(store, session.handle, "created_at"),
        None,
        metadata,
        {"n": 0},
    )
    sql(store, "UPDATE {t} SET payload = ? WHERE sid = ?", payload, session.handle)
    loaded = store.load(session.id)
    assert loaded._meta == metadata and dict(loaded) == {"n": 0}
    loaded["n"] = 1
    store.save(loaded)  # an update
    stale = store.load(session.id)
    other = store.load(session.id)
    other["m"] = 1
    store.save(other)
    stale["n"] = 2
    store.save(stale)  # a merge
    regenerated = store.load(session.id)
    regenerated.regenerate()
    store.save(regenerated)  # a new id, which also names the one it left (for revoke)
    final = store.load(regenerated.id)
    assert final._meta == {**metadata, "moved_from": session.handle}
    assert dict(final) == {"n": 2, "m": 1}
    final.invalidate()
    assert final._meta == {}  # a new session starts without any


def test_in_a_merge_the_metadata_map_goes_with_the_user_id(store) -> None:
    """The device details belong to the request that set the user id (no public API yet)."""
    public_id = stored(store, n=0)
    login, other = store.load(public_id), store.load(public_id)
    login.user_id = "42"
    login._meta = {"user_agent": "the login's browser"}
    other["m"] = 1
    store.save(other)
    store.save(login)  # lost the race: merged, keeps its user id and its map
    merged = store.load(public_id)
    assert merged.user_id == "42" and merged._meta == {"user_agent": "the login's browser"}
    stale, newer = store.load(public_id), store.load(public_id)
    newer.user_id = "43"
    newer._meta = {"user_agent": "another browser"}
    store.save(newer)
    stale["n"] = 1  # changed no user id: takes the stored map with the stored user id
    store.save(stale)
    final = store.load(public_id)
    assert final.user_id == "43" and final._meta == {"user_agent": "another browser"}
    assert dict(final) == {"n": 1, "m": 1}


def test_an_untouched_read_costs_no_serialization(store, monkeypatch) -> None:
    from storedsession import serialization

    public_id = stored(store, cart=[1, 2])
    calls: list[int] = []
    real = serialization.dumps
    monkeypatch.setattr(serialization, "dumps", lambda data: calls.append(1) or real(data))
    loaded = store.load(public_id)
    assert loaded["cart"] == [1, 2]
    assert store.save(loaded) is Outcome.NOTHING
    assert calls == [1]  # the one comparison an exposed container needs, no more


# -- what remains (SECURITY.md, "What it does not protect against") ---------------------
def test_what_remains_last_seen_moved_keeps_a_session_up_to_the_absolute_timeout(
    make_store, clock
) -> None:
    """Last-seen and the stored expiry are not sealed: moved on and on, they last until the
    absolute timeout, never past it."""
    store = make_store(idle_timeout=600, absolute_timeout=3600)
    session = signed_in(store, "42")
    touch = "UPDATE {t} SET last_seen_at = ?, expires_at = NULL WHERE sid = ?"
    for _ in range(5):  # 50 minutes with no request, past the 10-minute idle timeout
        clock.advance(600)
        sql(store, touch, store.now(), session.handle)
    assert store.load(session.id).user_id == "42"
    clock.advance(600)  # one hour after creation
    sql(store, touch, store.now(), session.handle)
    assert store.load(session.id).new


def test_what_remains_an_older_row_written_back_opens(store) -> None:
    """A row put back whole, with its older columns, is the older session again."""
    session = signed_in(store, "42", cart=[1])
    [old] = [row for row in fetch_rows(store) if row[0] == session.handle]
    session["cart"] = []
    session.user_id = None
    store.save(session)
    sql(
        store,
        "UPDATE {t} SET payload = ?, user_id = ?, created_at = ?, idle_timeout = ?, "
        "version = ? WHERE sid = ?",
        bytes(old[1]),
        old[2],
        old[3],
        old[6],
        old[7],
        session.handle,
    )
    loaded = store.load(session.id)
    assert dict(loaded) == {"cart": [1]} and loaded.user_id == "42"


def test_a_server_whose_clock_is_a_little_behind_never_makes_a_row_look_edited(
    make_store, clock
) -> None:
    """Created on a server 2 s ahead, written at once on one that is not: it still loads."""
    ahead = FakeClock()
    ahead.now = clock.now + timedelta(seconds=2)
    creator, writer = make_store(clock=ahead), make_store()
    session = signed_in(creator, "42", n=0)
    loaded = writer.load(session.id)
    loaded["n"] = 1
    writer.save(loaded)  # an update, a second "before" the session was created
    assert dict(writer.load(session.id)) == {"n": 1}
    regenerated = writer.load(session.id)
    regenerated.regenerate()
    writer.save(regenerated)
    assert writer.load(regenerated.id).user_id == "42"
    slow = make_store(clock=clock, touch_interval=0)
    slow.save(slow.load(regenerated.id))  # a touch: moves "last seen" no further back
    created = column(slow, regenerated.handle, "created_at")
    assert column(slow, regenerated.handle, "last_seen_at") == created
    assert creator.load(regenerated.id).user_id == "42"
