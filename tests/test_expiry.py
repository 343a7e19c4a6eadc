"""Expiry: idle, absolute and per-session timeouts at load time; batched cleanup."""

from __future__ import annotations

import secrets
import threading
import time
from datetime import timedelta
from typing import Any

import peewee
import pytest
from playhouse import db_url

from storedsession import SessionStore, expiry, ids, signals

from .support import FakeClock, fetch_rows, stored


def test_idle_timeout(make_store, clock) -> None:
    store = make_store(idle_timeout=600, touch_interval=0)
    public_id = stored(store)
    clock.advance(599)
    session = store.load(public_id)
    assert not session.new
    store.save(session)  # an unchanged session is touched: "last seen" moves
    clock.advance(599)
    assert not store.load(public_id).new
    clock.advance(2)
    assert store.load(public_id).new


def test_absolute_timeout_caps_even_active_sessions(make_store, clock) -> None:
    store = make_store(idle_timeout=600, absolute_timeout=timedelta(hours=1), touch_interval=0)
    public_id = stored(store)
    for _ in range(5):
        clock.advance(500)
        session = store.load(public_id)
        assert not session.new
        store.save(session)  # touch
    clock.advance(3600 - 2500)
    assert store.load(public_id).new


def test_no_limits(make_store, clock) -> None:
    store = make_store(idle_timeout=None, absolute_timeout=None)
    public_id = stored(store)
    session = store.load(public_id)
    assert session.expires_at is None and store.cookie_max_age(session) is None
    clock.advance(days=3650)
    assert not store.load(public_id).new
    assert store.expire() == 0


def test_set_expiry_remember_me(make_store, clock) -> None:
    store = make_store(idle_timeout=600, absolute_timeout=timedelta(days=30))
    session = store.load(None)
    session["a"] = 1
    session.set_expiry(timedelta(days=7))
    store.save(session)
    assert store.cookie_max_age(session) == 7 * 86400
    clock.advance(days=6)
    assert not store.load(session.id).new
    clock.advance(days=2)
    assert store.load(session.id).new


def test_set_expiry_zero_is_a_browser_session_with_the_store_idle_timeout(make_store, clock):
    store = make_store(idle_timeout=600)
    session = store.load(None)
    session["a"] = 1
    session.set_expiry(0)
    store.save(session)
    assert store.cookie_max_age(session) is None
    loaded = store.load(session.id)
    assert loaded.idle_timeout == 0
    clock.advance(601)
    assert store.load(session.id).new


def test_set_expiry_none_returns_to_default_and_is_saved(make_store, clock) -> None:
    store = make_store(idle_timeout=600)
    session = store.load(None)
    session["a"] = 1
    session.set_expiry(10_000)
    store.save(session)
    loaded = store.load(session.id)
    loaded.set_expiry(None)
    assert loaded.modified
    store.save(loaded)
    clock.advance(601)
    assert store.load(session.id).new


def test_set_expiry_rejects_nonsense() -> None:
    from storedsession import Session

    session = Session()
    with pytest.raises(ValueError):
        session.set_expiry(-1)
    with pytest.raises(TypeError):
        session.set_expiry("1 day")


def test_cookie_max_age_follows_remaining_lifetime(make_store, clock) -> None:
    store = make_store(idle_timeout=600, absolute_timeout=1000)
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    assert store.cookie_max_age(session) == 600
    clock.advance(500)
    loaded = store.load(session.id)
    assert store.cookie_max_age(loaded) == 100
    store.save(loaded)  # touch: idle would allow 600 more, absolute only 500
    assert store.cookie_max_age(loaded) == 500


def test_a_tightened_configuration_applies_at_load(make_store, clock) -> None:
    generous = make_store(idle_timeout=timedelta(days=14))
    public_id = stored(generous)
    strict = make_store(idle_timeout=60)
    clock.advance(120)
    assert strict.load(public_id).new
    assert not generous.load(public_id).new


def test_expire_removes_exactly_the_expired_rows(make_store, clock) -> None:
    store = make_store(idle_timeout=600)
    old = [stored(store) for _ in range(7)]
    clock.advance(300)
    young = [stored(store) for _ in range(3)]
    clock.advance(301)
    counted = []
    signals.sessions_expired.connect(lambda sender, count: counted.append(count), weak=False)
    try:
        assert store.count_expired() == 7
        assert store.expire(batch_size=2) == 7
    finally:
        signals.sessions_expired.receivers.clear()
    assert counted == [7]
    assert len(fetch_rows(store)) == 3
    assert all(store.load(public_id).new for public_id in old)
    assert all(not store.load(public_id).new for public_id in young)
    assert store.expire() == 0


def test_expire_reports_batches_and_rejects_bad_batch_sizes(make_store, clock) -> None:
    store = make_store(idle_timeout=60)
    for _ in range(5):
        stored(store)
    clock.advance(61)
    batches: list[int] = []
    assert store.expire(batch_size=2, progress=batches.append) == 5
    assert batches == [2, 2, 1]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError):
            store.expire(batch_size=bad)
    for load in (0, -0.5, 1.01, float("nan"), True, "1"):
        with pytest.raises(ValueError, match="max_load"):
            store.expire(max_load=load)
    for limit in (0, -1, float("inf"), "5"):
        with pytest.raises(ValueError, match="max_seconds"):
            store.expire(max_seconds=limit)
    assert store.count_expired() == 0  # a refused sweep deletes nothing, a good one all


def test_expired_rows_never_load_before_cleanup(make_store, clock) -> None:
    store = make_store(idle_timeout=60)
    public_id = stored(store)
    clock.advance(61)
    assert store.load(public_id).new
    assert len(fetch_rows(store)) == 1  # still there, until expire()


def test_same_answer_in_any_timezone(make_store, clock, monkeypatch) -> None:
    import time

    store = make_store(idle_timeout=600)
    public_id = stored(store)
    for tz in ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Kiritimati"):
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        session = store.load(public_id)
        assert not session.new
        assert session.created_at == clock.now
    monkeypatch.undo()
    time.tzset()


class FakeTimer:
    """The sweep's monotonic time: it moves only when a batch deletes or the sweep rests.

    A query hook makes every batch's DELETE take ``fixed + per_row * rows`` seconds.
    """

    def __init__(self, fixed: float = 0.0, per_row: float = 0.0) -> None:
        self.now = 1000.0
        self.fixed, self.per_row = fixed, per_row
        self.rests: list[float] = []
        self.busy = 0.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.rests.append(seconds)
        self.now += seconds

    def hook(self, event: Any) -> None:
        sql, params = event.sql, event.params or ()
        if not sql.startswith("DELETE") or "expires_at <=" not in sql:
            return
        # How many rows the batch asks for: its LIMIT (the second parameter) or, on MySQL,
        # the ids it lists after the cutoff.
        rows = params[1] if "LIMIT" in sql else len(params) - 1
        took = self.fixed + self.per_row * rows
        self.now += took
        self.busy += took


@pytest.fixture
def timer(monkeypatch) -> FakeTimer:
    fake = FakeTimer()
    monkeypatch.setattr(expiry, "monotonic", fake.monotonic)
    monkeypatch.setattr(expiry, "sleep", fake.sleep)
    return fake


def add_expired(store: SessionStore, count: int, clock: FakeClock) -> None:
    """Insert ``count`` rows that expired a minute ago (sweeps never read payloads)."""
    now = store.now()
    rows = [
        {
            "sid": secrets.token_hex(32),
            "payload": b"sealed",
            "created_at": now - 3_600_000,
            "last_seen_at": now - 3_600_000,
            "expires_at": now - 60_000,
        }
        for _ in range(count)
    ]
    with store.connected():
        for start in range(0, count, 500):
            store.model.insert_many(rows[start : start + 500]).execute()


def budget(store: SessionStore, max_load: float = 1.0) -> float:
    alone = expiry.SQLITE_BATCH_SECONDS if store.database.param == "?" else expiry.BATCH_SECONDS
    # Sharing the database with traffic, every batch is short (see SHARED_BATCH_SECONDS).
    return alone if max_load == 1 else min(alone, expiry.SHARED_BATCH_SECONDS)


def test_batches_shrink_to_their_time_budget(make_store, clock, timer) -> None:
    store = make_store()
    add_expired(store, 300, clock)
    # A row costs a fiftieth of the budget: 50 rows fill it.
    timer.per_row = budget(store) / 50
    store.database.query_hooks.append(timer.hook)
    batches: list[int] = []
    assert store.expire(progress=batches.append) == 300
    assert batches == [100, 50, 50, 50, 50]
    assert timer.rests == []  # max_load=1: no rest between batches


def test_batches_grow_to_their_time_budget_up_to_batch_size(make_store, clock, timer) -> None:
    store = make_store()
    add_expired(store, 1500, clock)
    timer.per_row = budget(store) / 500  # 500 rows fill the budget; batches double to it
    store.database.query_hooks.append(timer.hook)
    batches: list[int] = []
    assert store.expire(progress=batches.append) == 1500
    assert batches == [100, 200, 400, 500, 300]
    batches.clear()
    add_expired(store, 700, clock)
    assert store.expire(batch_size=250, progress=batches.append) == 700
    assert batches == [100, 200, 250, 150]


def test_a_fixed_cost_per_batch_never_shrinks_batches_to_nothing(make_store, clock, timer):
    store = make_store()
    add_expired(store, 400, clock)
    # Each statement takes twice the budget whatever its size (a slow commit): batches
    # shrink, but not below MIN_BATCH, for smaller ones would only pay that cost more often.
    timer.fixed = 2 * budget(store)
    store.database.query_hooks.append(timer.hook)
    batches: list[int] = []
    assert store.expire(progress=batches.append) == 400
    assert batches[:2] == [100, 50] and batches == sorted(batches, reverse=True)
    assert batches[-4:-1] == [expiry.MIN_BATCH] * 3


@pytest.mark.parametrize("load", [0.5, 0.25, 0.1])
def test_max_load_is_the_share_of_time_spent_deleting(make_store, clock, timer, load) -> None:
    store = make_store()
    add_expired(store, 400, clock)
    shared = budget(store, load)
    timer.per_row = shared / 100  # 100 rows a batch, each taking the shared budget
    store.database.query_hooks.append(timer.hook)
    started = timer.now
    assert store.expire(max_load=load) == 400
    # Every batch but the empty last one is followed by its time * (1 - F) / F of rest.
    assert len(timer.rests) == 4
    assert timer.rests == pytest.approx([shared * (1 - load) / load] * 4)
    busy_until_last_rest = timer.now - started - (timer.busy - 4 * shared)
    assert 4 * shared / busy_until_last_rest == pytest.approx(load)


def test_max_seconds_stops_cleanly_and_counts_what_it_removed(make_store, clock, timer) -> None:
    store = make_store()
    add_expired(store, 1000, clock)
    shared = budget(store, 0.5)
    timer.per_row = shared / 100  # 100 rows a batch, each taking the budget
    store.database.query_hooks.append(timer.hook)
    counted: list[int] = []
    signals.sessions_expired.connect(lambda sender, count: counted.append(count), weak=False)
    try:
        # Three and a half batches' worth of seconds, half of them resting: 2 batches.
        result = store.sweep(max_load=0.5, max_seconds=3.5 * shared)
    finally:
        signals.sessions_expired.receivers.clear()
    assert result == (200, False)
    assert counted == [200]
    assert store.count_expired() == 800  # left for the next sweep
    assert timer.rests[-1] == pytest.approx(0.5 * shared)  # no rest past the deadline
    assert store.sweep() == (800, True)


@pytest.mark.parametrize("refresh", [True, False], ids=["refreshed", "rewritten"])
def test_a_row_changed_while_the_sweep_waits_for_it(make_store, clock, backend, refresh) -> None:
    """A request that refreshes a session after a batch chose it wins over the batch; a
    change that leaves it expired (a key rotation) does not save it."""
    store = make_store(idle_timeout=600)
    changed, doomed = ids.handle_for(stored(store)), ids.handle_for(stored(store))
    clock.advance(601)
    other = _second_connection(store)
    table = store.database.quote[0] + store.table_name + store.database.quote[1]
    p = other.param
    result: list[Any] = []
    try:
        other.execute_sql("BEGIN IMMEDIATE" if backend == "sqlite" else "BEGIN")
        if refresh:  # another host, whose clock is behind, refreshes the session
            other.execute_sql(
                f"UPDATE {table} SET expires_at = {p} WHERE sid = {p}",
                (store.now() + 600_000, changed),
            )
        else:  # every expired row, so that a batch may find none it can delete
            for handle in (changed, doomed):
                other.execute_sql(
                    f"UPDATE {table} SET version = version + 1 WHERE sid = {p}", (handle,)
                )
        sweeper = threading.Thread(target=lambda: result.append(store.expire()))
        sweeper.start()
        _wait_until_blocked(other, backend, store.table_name)
        other.execute_sql("COMMIT")
        sweeper.join(30)
    finally:
        other.close()
    if refresh:
        assert result == [1]
        assert [row[0] for row in fetch_rows(store)] == [changed] != [doomed]
    else:
        assert result == [2]  # PostgreSQL: by a later batch, the first having passed them over
        assert fetch_rows(store) == []


def _second_connection(store: SessionStore) -> peewee.Database:
    """A connection of its own to the store's database, outside the store's pool."""
    database = store.database
    if isinstance(database, peewee.SqliteDatabase):
        other = peewee.SqliteDatabase(database.database, timeout=10)
    elif isinstance(database, peewee.MySQLDatabase):
        other = db_url.connect(_url(database, "mysql"))
    else:
        other = db_url.connect(_url(database, "postgresql"))
    other.connect()
    return other


def _url(database: peewee.Database, scheme: str) -> str:
    params = database.connect_params
    user = params.get("user", "")
    host = params.get("host", "127.0.0.1")
    port = params.get("port")
    return f"{scheme}://{user}@{host}{':' + str(port) if port else ''}/{database.database}"


def _wait_until_blocked(other: peewee.Database, backend: str, table: str) -> None:
    """Wait until a statement on ``table`` waits for a row lock (SQLite: a moment)."""
    if backend == "sqlite":  # its busy handler cannot be observed: give it time to start
        time.sleep(0.3)
        return
    if backend == "mysql":
        query = (
            "SELECT COUNT(*) FROM information_schema.innodb_trx "
            "WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE %s"
        )
    else:
        query = (
            "SELECT COUNT(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE %s AND pid <> pg_backend_pid()"
        )
    deadline = time.monotonic() + 20
    while other.execute_sql(query, (f"%{table}%",)).fetchone()[0] == 0:
        assert time.monotonic() < deadline, "the sweep never waited for the lock"
        if backend in ("postgres", "pgbouncer"):  # a transaction sees one snapshot of stats
            other.execute_sql("SELECT pg_stat_clear_snapshot()")
            time.sleep(0.01)
        else:  # InnoDB refreshes innodb_trx only after 0.1 s without a read of it
            time.sleep(0.15)


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_a_deadlock_is_retried_not_fatal(make_store, clock, backend) -> None:
    """A real deadlock between a batch and another transaction: the batch is retried."""
    store = make_store(idle_timeout=600)
    low, high = ids.handle_for(stored(store)), ids.handle_for(stored(store))
    clock.advance(601)
    live = [ids.handle_for(stored(store)) for _ in range(30)]
    # A batch locks its rows in primary key order (MySQL) or physical order (PostgreSQL:
    # insertion order, in a fresh table): "low" is the one it locks first.
    if backend == "mysql" and low > high:
        low, high = high, low
    failures: list[BaseException] = []

    def record(event: Any) -> None:
        if event.exception is not None:
            failures.append(event.exception)

    store.database.query_hooks.append(record)
    other = _second_connection(store)
    table = store.database.quote[0] + store.table_name + store.database.quote[1]
    bump = f"UPDATE {table} SET version = version + 1 WHERE sid = {other.param}"
    result: list[Any] = []
    try:
        other.execute_sql("BEGIN")
        # Weigh the other transaction down with changed rows, so that MariaDB picks the
        # batch as the deadlock's victim (PostgreSQL picks the batch, which waited first).
        for handle in live:
            other.execute_sql(bump, (handle,))
        other.execute_sql(bump, (high,))
        sweeper = threading.Thread(target=lambda: result.append(store.expire()))
        sweeper.start()
        _wait_until_blocked(other, backend, store.table_name)  # holding low, waiting for high
        other.execute_sql(bump, (low,))  # and now each waits for the other
        other.execute_sql("COMMIT")
        sweeper.join(60)
    finally:
        other.close()
    assert any(expiry.transient(exc) for exc in failures), failures  # it did deadlock
    assert result == [2]
    assert sorted(row[0] for row in fetch_rows(store)) == sorted(live)


@pytest.mark.parametrize("backend", ["mysql"])
def test_a_mostly_expired_innodb_table_is_walked_in_key_order(
    make_store, clock, monkeypatch, count_queries
) -> None:
    monkeypatch.setattr(expiry, "WALK_MIN_ROWS", 50)
    store = make_store(idle_timeout=600)
    add_expired(store, 300, clock)
    live = [ids.handle_for(stored(store)) for _ in range(20)]
    with store.connected():
        store.database.execute_sql(f"ANALYZE TABLE `{store.table_name}`").fetchall()
    batches: list[int] = []
    with count_queries(store) as queries:
        assert store.expire(batch_size=40, progress=batches.append) == 300
    assert any("FORCE INDEX (PRIMARY)" in sql for sql in queries.statements)
    assert sum(batches) == 300 and max(batches) <= 40
    assert sorted(row[0] for row in fetch_rows(store)) == sorted(live)
    # Few expired among many live rows: by expiry, through its index.
    add_expired(store, 30, clock)
    add_live = [ids.handle_for(stored(store)) for _ in range(300)]
    with store.connected():
        store.database.execute_sql(f"ANALYZE TABLE `{store.table_name}`").fetchall()
    with count_queries(store) as queries:
        assert store.expire() == 30
    assert not any("FORCE INDEX" in sql for sql in queries.statements)
    assert len(fetch_rows(store)) == len(live) + len(add_live)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_sweeps_checkpoint_on_their_own_commits_then_restore(store, clock) -> None:
    add_expired(store, 50, clock)
    setting = "PRAGMA wal_autocheckpoint"
    seen: list[int] = []

    def during_deletes(event: Any) -> None:
        if event.sql.startswith("DELETE"):
            seen.append(store.database.execute_sql(setting).fetchone()[0])

    with store.connected():
        assert store.database.execute_sql(setting).fetchone()[0] == 1000
        store.database.query_hooks.append(during_deletes)
        assert store.expire() == 50
        store.database.query_hooks.clear()
        assert seen and set(seen) == {500}  # the sweep's commits reach the threshold first
        assert store.database.execute_sql(setting).fetchone()[0] == 1000  # restored
