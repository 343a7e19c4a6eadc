"""The lifetime policy alone: expiry, liveness and the last-seen sanity rule, in epoch ms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from storedsession.lifetime import LAST_SEEN_LEEWAY_MS, Lifetime, utc

MINUTE = 60_000


def test_the_earlier_of_idle_and_absolute_ends_a_session() -> None:
    lifetime = Lifetime(timedelta(minutes=10), 3600, 60)
    assert (lifetime.idle, lifetime.absolute, lifetime.touch) == (10 * MINUTE, 60 * MINUTE, MINUTE)
    assert lifetime.expiry(0, 5 * MINUTE, None) == 15 * MINUTE
    assert lifetime.expiry(0, 55 * MINUTE, None) == 60 * MINUTE
    assert lifetime.expiry(0, 0, 120) == 2 * MINUTE  # the session's own idle timeout
    assert lifetime.expiry(0, 0, 0) == 10 * MINUTE  # 0: the store's, on the server
    assert Lifetime(None, None, 0).expiry(0, 0, None) is None


def test_a_session_lives_while_both_the_row_and_the_policy_agree() -> None:
    lifetime = Lifetime(600, None, 60)
    assert lifetime.alive(0, 0, None, None, 10 * MINUTE - 1)
    assert not lifetime.alive(0, 0, None, None, 10 * MINUTE)
    assert not lifetime.alive(0, 0, MINUTE, None, MINUTE)  # the stored expiry passed


def test_a_last_seen_time_must_be_possible() -> None:
    now = 10 * MINUTE
    assert Lifetime.plausible(0, 0, now) and Lifetime.plausible(0, now + LAST_SEEN_LEEWAY_MS, now)
    assert not Lifetime.plausible(1, 0, now)  # before the creation
    assert not Lifetime.plausible(0, now + LAST_SEEN_LEEWAY_MS + 1, now)


def test_the_clock_and_the_cookie_follow_the_policy() -> None:
    moment = datetime(2026, 1, 1, 12, 0)
    lifetime = Lifetime(600, None, 60, clock=lambda: moment)  # naive: taken as UTC
    now = lifetime.now()
    assert utc(now) == moment.replace(tzinfo=UTC)
    assert lifetime.seen_now(now + 5) == now + 5 and lifetime.seen_now(now - 5) == now
    assert lifetime.cookie_max_age(now + 1500, None) == 2  # rounded up
    assert lifetime.cookie_max_age(now - 1, 600) == 0
    assert lifetime.cookie_max_age(now + 1500, 0) is None  # a browser-session cookie
    assert lifetime.cookie_max_age(None, 600) is None


def test_a_touch_is_due_once_the_interval_has_passed() -> None:
    moment = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    lifetime = Lifetime(600, None, 60, clock=lambda: moment)
    now = lifetime.now()
    assert lifetime.touch_due(now - 10 * MINUTE, now - MINUTE + 1) is None  # 59.999 s ago
    assert lifetime.touch_due(now - 10 * MINUTE, now - MINUTE) == now
    # A session created ahead of this server's clock is touched at its creation, never before.
    assert Lifetime(600, None, 0, clock=lambda: moment).touch_due(now + 5, now + 5) == now + 5
    assert Lifetime(600, None, 0, clock=lambda: moment).touch_due(now, now) == now


@pytest.mark.parametrize("bad", [-1, "60", True])
def test_a_duration_that_is_not_one_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        Lifetime(bad, None, 60)  # type: ignore[arg-type]
