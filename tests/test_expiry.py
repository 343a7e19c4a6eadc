"""Expiry: idle, absolute and per-session timeouts at load time; batched cleanup."""

from __future__ import annotations

from datetime import timedelta

import pytest

from storedsession import signals

from .support import fetch_rows, stored


def test_idle_timeout(make_store, clock) -> None:
    store = make_store(idle_timeout=600, touch_interval=0)
    sid = stored(store)
    clock.advance(599)
    session = store.load(sid)
    assert not session.new
    store.save(session)  # an unchanged session is touched: "last seen" moves
    clock.advance(599)
    assert not store.load(sid).new
    clock.advance(2)
    assert store.load(sid).new


def test_absolute_timeout_caps_even_active_sessions(make_store, clock) -> None:
    store = make_store(idle_timeout=600, absolute_timeout=timedelta(hours=1), touch_interval=0)
    sid = stored(store)
    for _ in range(5):
        clock.advance(500)
        session = store.load(sid)
        assert not session.new
        store.save(session)  # touch
    clock.advance(3600 - 2500)
    assert store.load(sid).new


def test_no_limits(make_store, clock) -> None:
    store = make_store(idle_timeout=None, absolute_timeout=None)
    sid = stored(store)
    session = store.load(sid)
    assert session.expires_at is None and store.cookie_max_age(session) is None
    clock.advance(days=3650)
    assert not store.load(sid).new
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
    sid = stored(generous)
    strict = make_store(idle_timeout=60)
    clock.advance(120)
    assert strict.load(sid).new
    assert not generous.load(sid).new


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
    assert all(store.load(sid).new for sid in old)
    assert all(not store.load(sid).new for sid in young)
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


def test_expired_rows_never_load_before_cleanup(make_store, clock) -> None:
    store = make_store(idle_timeout=60)
    sid = stored(store)
    clock.advance(61)
    assert store.load(sid).new
    assert len(fetch_rows(store)) == 1  # still there, until expire()


def test_same_answer_in_any_timezone(make_store, clock, monkeypatch) -> None:
    import time

    store = make_store(idle_timeout=600)
    sid = stored(store)
    for tz in ("UTC", "America/New_York", "Asia/Kolkata", "Pacific/Kiritimati"):
        monkeypatch.setenv("TZ", tz)
        time.tzset()
        session = store.load(sid)
        assert not session.new
        assert session.created_at == clock.now
    monkeypatch.undo()
    time.tzset()


def test_expire_shrinks_batches_that_take_too_long(make_store, clock) -> None:
    store = make_store(idle_timeout=60)
    for _ in range(20):
        stored(store)
    clock.advance(61)
    batches: list[int] = []
    # Every batch takes longer than a nanosecond: each halves the next, down to 1.
    assert store.expire(batch_size=8, batch_seconds=1e-9, progress=batches.append) == 20
    assert batches == [8, 4, 2, 1, 1, 1, 1, 1, 1]
    assert store.count_expired() == 0
