"""Concurrent requests on one session: versioned writes, merges, no resurrection."""

from __future__ import annotations

import threading

import pytest

from storedsession import SessionConflict, SessionInterrupted, SessionStore, StoreUnavailable
from storedsession import table as table_module
from storedsession import writes as writes_module

from .support import backend_url, fetch_rows, stored


def test_different_keys_both_kept(store: SessionStore) -> None:
    public_id = stored(store, base=0)
    first, second = store.load(public_id), store.load(public_id)
    first["a"] = 1
    second["b"] = 2
    store.save(first)
    store.save(second)
    assert dict(store.load(public_id)) == {"base": 0, "a": 1, "b": 2}


def test_same_key_later_save_wins(store: SessionStore) -> None:
    public_id = stored(store, n=0)
    first, second = store.load(public_id), store.load(public_id)
    first["n"] = 1
    second["n"] = 2
    store.save(first)
    store.save(second)
    assert store.load(public_id)["n"] == 2


def test_a_deletion_not_seen_wins_over_a_change(store: SessionStore) -> None:
    public_id = stored(store, cart=[1], coupon="X")
    deleter, stale = store.load(public_id), store.load(public_id)
    del deleter["cart"]
    del deleter["coupon"]
    store.save(deleter)
    stale["cart"].append(2)  # changes a key the other request deleted
    stale["other"] = 1
    store.save(stale)
    assert dict(store.load(public_id)) == {"other": 1}


def test_stale_request_never_restores_a_deleted_key(store: SessionStore) -> None:
    public_id = stored(store, flash="hello", n=1)
    reader, stale = store.load(public_id), store.load(public_id)
    reader.pop("flash")
    store.save(reader)
    stale["n"] = 2  # stale still holds "flash" unchanged
    store.save(stale)
    assert dict(store.load(public_id)) == {"n": 2}


def test_merge_keeps_the_other_user_id_unless_changed_here(store: SessionStore) -> None:
    public_id = stored(store, a=0)
    login, stale = store.load(public_id), store.load(public_id)
    login.user_id = 42
    store.save(login)
    stale["a"] = 1
    store.save(stale)
    merged = store.load(public_id)
    assert merged.user_id == "42" and merged["a"] == 1


def test_save_after_a_delete_is_interrupted_not_resurrected(store: SessionStore, caplog) -> None:
    public_id = stored(store, a=1)
    logout, slow = store.load(public_id), store.load(public_id)
    store.delete(logout)
    slow["a"] = 2
    with caplog.at_level("WARNING", logger="storedsession.security"):
        with pytest.raises(SessionInterrupted):
            store.save(slow)
    assert fetch_rows(store) == []
    assert any("resurrect" in r.getMessage() for r in caplog.records)


def test_regenerate_after_a_delete_is_interrupted(store: SessionStore) -> None:
    public_id = stored(store, a=1)
    logout, login = store.load(public_id), store.load(public_id)
    store.delete(logout)
    login.regenerate()
    with pytest.raises(SessionInterrupted):
        store.save(login)
    assert fetch_rows(store) == []


def test_regenerate_merges_a_concurrent_change(store: SessionStore) -> None:
    public_id = stored(store, cart=[1])
    other, login = store.load(public_id), store.load(public_id)
    other["cart"].append(2)
    store.save(other)
    login.regenerate()
    login.user_id = 7
    store.save(login)
    assert login.id != public_id
    assert store.load(public_id).new
    fresh = store.load(login.id)
    assert fresh["cart"] == [1, 2] and fresh.user_id == "7"
    assert len(fetch_rows(store)) == 1


@pytest.mark.parametrize("in_transaction", [False, True], ids=["alone", "in_app_transaction"])
def test_regenerate_redraws_a_taken_id_never_writes_over_it(
    store: SessionStore, monkeypatch, in_transaction
) -> None:
    from storedsession import ids

    taken = stored(store, owner="first")
    moving = store.load(stored(store, owner="second"))
    draws = iter([taken, ids.new_public_id()])
    monkeypatch.setattr(ids, "new_public_id", lambda: next(draws))
    moving.regenerate()
    if in_transaction:
        # The taken id must not abort the application's transaction (PostgreSQL would).
        with store.connected(), store.database.atomic():
            store.save(moving)
            assert len(fetch_rows(store)) == 2
    else:
        store.save(moving)
    assert moving.id != taken
    assert store.load(taken)["owner"] == "first"
    assert store.load(moving.id)["owner"] == "second"
    assert len(fetch_rows(store)) == 2


def test_persistent_conflict_raises_instead_of_dropping(store, monkeypatch) -> None:
    monkeypatch.setattr(writes_module, "MAX_CONFLICT_RETRIES", 0)
    public_id = stored(store, n=0)
    winner, loser = store.load(public_id), store.load(public_id)
    winner["n"] = 1
    store.save(winner)
    loser["m"] = 1
    with pytest.raises(StoreUnavailable):
        store.save(loser)
    assert dict(store.load(public_id)) == {"n": 1}


@pytest.mark.slow
def test_eight_threads_on_one_session(make_store) -> None:
    store = make_store()
    public_id = stored(store, start=True)
    rounds = 5
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(number: int) -> None:
        try:
            barrier.wait()
            for step in range(rounds):
                session = store.load(public_id)
                session[f"t{number}"] = step
                store.save(session)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = store.load(public_id)
    assert dict(final) == {"start": True, **{f"t{n}": rounds - 1 for n in range(8)}}
    assert len(fetch_rows(store)) == 1


@pytest.mark.slow
def test_eight_threads_racing_a_delete(make_store) -> None:
    store = make_store()
    public_id = stored(store, start=True)
    outcomes: list[str] = []
    unexpected: list[BaseException] = []
    barrier = threading.Barrier(9)

    def writer(number: int) -> None:
        barrier.wait()
        for step in range(5):
            session = store.load(public_id)
            if session.new:
                outcomes.append("gone")
                return
            session[f"t{number}"] = step
            try:
                store.save(session)
            except SessionInterrupted:
                outcomes.append("interrupted")
                return
            except BaseException as exc:
                unexpected.append(exc)
                return

    def deleter() -> None:
        barrier.wait()
        store.delete(store.load(public_id))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    threads.append(threading.Thread(target=deleter))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert unexpected == []
    assert fetch_rows(store) == []  # never re-created, never duplicated


def test_reapply_rules() -> None:
    from storedsession.merge import reapply

    base = {"same": 1, "mine": 1, "gone_there": 1, "gone_here": 1, "num": 1}
    ours = {"same": 1, "mine": 2, "gone_there": 2, "num": 1.0, "added": 1}
    theirs = {"same": 1, "mine": 1, "gone_here": 1, "num": 1, "theirs": 1}
    assert reapply(base, ours, theirs) == {
        "same": 1,
        "mine": 2,
        "num": 1.0,
        "added": 1,
        "theirs": 1,
    }
    assert type(reapply(base, ours, theirs)["num"]) is float  # 1 -> 1.0 is a change


@pytest.mark.slow
def test_a_revoke_locked_out_past_every_retry_raises_session_conflict(
    tmp_path, table_name, keys, monkeypatch
) -> None:
    """MariaDB: each try meets a real lock wait timeout (1205) until the retries run out
    (the same for a save: tests/test_galera.py, on the plain server)."""
    monkeypatch.setattr(table_module, "MAX_CONFLICT_RETRIES", 1)
    url = backend_url("mysql", tmp_path)
    # One second of lock wait per try instead of the server's 50.
    store = SessionStore(
        f"{url}?init_command=SET innodb_lock_wait_timeout=1", keys=keys, table_name=table_name
    )
    store.create_table()
    blocker = SessionStore(url, keys=keys, table_name=table_name)
    try:
        signed_in = store.load(None)
        signed_in.user_id = "bob"
        store.save(signed_in)
        with blocker.connected(), blocker.database.atomic():
            blocker.database.execute_sql(
                f"SELECT sid FROM `{table_name}` WHERE sid = %s FOR UPDATE", (signed_in.handle,)
            ).fetchall()
            with pytest.raises(SessionConflict, match="1205") as info:
                store.revoke_user("bob")
        assert isinstance(info.value, StoreUnavailable)
        assert not store.load(signed_in.id).new  # nothing revoked
        assert store.revoke_user("bob") == 1  # and it works once the lock is gone
    finally:
        store.drop_table()
        store.close()
        blocker.close()
