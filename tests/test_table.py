"""SessionTable: the work that needs no keys, on the rows a store wrote."""

from __future__ import annotations

import pytest

from storedsession import ConfigurationError, SessionStore, SessionTable

from .support import FakeClock, backend_url, stored


def test_a_table_without_keys_counts_expires_and_revokes_what_a_store_wrote(
    make_store, clock: FakeClock, database_url: str, table_name: str
) -> None:
    store: SessionStore = make_store(idle_timeout=600, touch_interval=0)
    old = [stored(store) for _ in range(2)]
    clock.advance(300)
    mine, theirs = store.load(None), store.load(None)
    for session in (mine, theirs):
        session["a"] = 1
        session.user_id = "alice"
        store.save(session)
    table = SessionTable(database_url, table_name)
    try:
        later = store.now() + 400_000  # the first two are 700 s old then, the others 400 s
        assert table.count_expired(now=later) == 2
        # By the system clock, months after the fake one: every row has expired.
        assert table.count_expired() == 4
        assert table.revoke_user("alice", keep=mine.handle) == 1
        assert table.expire(now=later) == 2
        assert [store.load(public_id).new for public_id in old] == [True, True]
        assert store.load(theirs.id).new
        assert not store.load(mine.id).new
        assert mine.handle is not None
        assert table.delete([mine.handle, mine.handle]) == 1
        assert store.load(mine.id).new
    finally:
        table.close()


def test_a_store_counts_and_expires_through_its_table_by_its_own_clock(
    make_store, clock: FakeClock
) -> None:
    store: SessionStore = make_store(idle_timeout=600)
    stored(store)
    assert store.table.count_expired() == 1  # by the system clock, months after the fake one
    assert store.count_expired() == 0
    assert store.expire() == 0
    clock.advance(601)
    assert store.count_expired() == 1
    assert store.expire() == 1
    assert store.table.count_expired() == 0


def test_mysql_table_checks_the_packet_for_the_size_it_is_given(tmp_path, table_name) -> None:
    table = SessionTable(backend_url("mysql", tmp_path), table_name)
    try:
        with pytest.raises(ConfigurationError, match="max_allowed_packet"):
            table.create_table(max_size=64 * 1024 * 1024)
        table.create_table()  # the default 1 MiB fits the server's default packet
    finally:
        table.drop_table()
        table.close()
