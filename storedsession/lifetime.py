"""How long a session lives: the idle and absolute timeouts, the touch interval, the clock.

Times are epoch milliseconds, as the table stores them; :func:`utc` turns one into the
datetime the public API shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

#: How far ahead of the store's clock a row's last-seen time may be (clocks of several
#: servers differ a little) before the row counts as edited.
LAST_SEEN_LEEWAY_MS = 5 * 60 * 1000


def utc(ms: int) -> datetime:
    """Return the epoch-milliseconds time ``ms`` as an aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def now_ms() -> int:
    """Return the system clock's time in epoch milliseconds."""
    return int(time.time() * 1000)


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """Normalise a duration given as seconds or a timedelta; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} takes seconds or a timedelta, not {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"{name} cannot be negative.")
    return value


def _ms(value: float | None) -> int | None:
    return None if value is None else int(value * 1000)


class Lifetime:
    """A store's lifetime policy: when a session expires and when "last seen" moves.

    ``idle`` and ``absolute`` are the store's timeouts in milliseconds (``None``: no
    limit), ``touch`` the least time between two "last seen" writes, ``clock`` returns
    the current UTC time (for tests; the system clock when ``None``). Raises
    ``TypeError``/``ValueError`` for a duration that is not one.
    """

    __slots__ = ("idle", "absolute", "touch", "_clock")

    def __init__(
        self,
        idle_timeout: float | timedelta | None,
        absolute_timeout: float | timedelta | None,
        touch_interval: float | timedelta,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.idle = _ms(seconds(idle_timeout, "idle_timeout"))
        self.absolute = _ms(seconds(absolute_timeout, "absolute_timeout"))
        self.touch = _ms(seconds(touch_interval, "touch_interval")) or 0
        self._clock = clock

    def now(self) -> int:
        """Return the current time in epoch milliseconds, from the clock."""
        if self._clock is None:
            return int(time.time() * 1000)  # now_ms(), inline: one call less per load
        moment = self._clock()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)

    def expiry(self, created: int, last_seen: int, session_idle: int | None) -> int | None:
        """Return when a session created and last seen then stops working, or ``None``."""
        # A session's own idle timeout of 0 or None means the store's, on the server.
        idle = session_idle * 1000 if session_idle else self.idle
        absolute = self.absolute
        if idle is None:
            return None if absolute is None else created + absolute
        if absolute is None:
            return last_seen + idle
        return min(last_seen + idle, created + absolute)

    def alive(
        self, created: int, last_seen: int, expires: int | None, idle: int | None, now: int
    ) -> bool:
        """Tell whether a stored session still works at ``now``."""
        # The stored expiry and today's configuration must both agree.
        if expires is not None and expires <= now:
            return False
        expiry = self.expiry(created, last_seen, idle)
        return expiry is None or expiry > now

    @staticmethod
    def plausible(created: int, last_seen: int, now: int) -> bool:
        """Tell whether a row's last-seen time can be true: not before its creation, and
        at most 5 minutes ahead of ``now``.

        Not sealed (a touch does not re-seal), so checked: an edited last-seen time
        could otherwise keep a session alive for ever.
        """
        return created <= last_seen <= now + LAST_SEEN_LEEWAY_MS

    def seen_now(self, created: int) -> int:
        """Return the last-seen time to write: now, but never before the creation.

        A row last seen before its creation reads as edited; a server whose clock runs a
        little behind the one that created the session must not make it so.
        """
        return max(self.now(), created)

    def touch_due(self, created: int, last_seen: int) -> int | None:
        """Return the last-seen time a touch writes now, or ``None`` while the touch
        interval since ``last_seen`` has not passed (the touch is not due).
        """
        seen = self.seen_now(created)
        return None if seen - last_seen < self.touch else seen

    def cookie_max_age(self, expires: int | None, session_idle: int | None) -> int | None:
        """Return the seconds a cookie should live, or ``None`` for a browser session."""
        if expires is None or session_idle == 0:
            return None
        return max(0, math.ceil((expires - self.now()) / 1000))
