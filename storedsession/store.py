"""The session store: load, save and delete encrypted sessions in a Peewee database.

:class:`SessionStore` joins the table (its model, statements and connections), a
:class:`~storedsession.lifetime.Lifetime` (timeouts and clock) and an envelope (the
keys). It loads here, building a :class:`~storedsession.session.Session` from one
:class:`~storedsession.session.Stored` value; it writes through
:class:`~storedsession.writes.SessionWrites` and lists and revokes a user's sessions
through :class:`~storedsession.users.UserSessions`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import peewee

from . import expiry, ids, serialization, signals
from .aio import offload
from .crypto import OVERHEAD, DecryptionFailed, Envelope, NoKeys
from .database import Connector, is_mysql, open_database
from .exceptions import ConfigurationError, StoreUnavailable
from .keys import parse_keys
from .lifetime import Lifetime
from .logs import log, security_log
from .models import DEFAULT_TABLE, build_model, check_table_name
from .session import Session, Stored
from .sql import Statements
from .users import UserSessions
from .writes import SessionWrites

#: How often :meth:`SessionStore.create_table` tries when other processes create at once.
CREATE_ATTEMPTS = 5

#: The ``keys=`` of a store built by :meth:`SessionStore.without_keys`.
_WITHOUT_KEYS: Any = object()


class SessionStore(SessionWrites, UserSessions):
    """Encrypted, database-backed sessions.

    ``database`` is a peewee ``Database`` or a URL that ``playhouse.db_url`` understands
    (``sqlite:///sessions.db``, ``postgresql://…``, ``mysql://…``, and their ``+pool``
    forms). ``keys`` is one key or a newest-first list (``STOREDSESSION_KEYS`` when
    omitted). Timeouts take seconds or a ``timedelta``; ``None`` means no limit.
    ``max_size`` bounds the serialized JSON of one session, in bytes. ``clock`` returns
    the current UTC time, for tests. ``legacy_envelopes=False`` refuses rows still in
    envelope format 1, whose columns are not authenticated (``storedsession stats`` tells
    when none is left; ``storedsession rotate-keys`` moves them).
    """

    def __init__(
        self,
        database: str | peewee.Database,
        *,
        keys: str | Sequence[str] | None = None,
        table_name: str = DEFAULT_TABLE,
        idle_timeout: float | timedelta | None = timedelta(days=14),
        absolute_timeout: float | timedelta | None = timedelta(days=30),
        touch_interval: float | timedelta = 60,
        max_size: int = 1024 * 1024,
        clock: Callable[[], datetime] | None = None,
        legacy_envelopes: bool = True,
    ) -> None:
        keyless = keys is _WITHOUT_KEYS
        parsed_keys = () if keyless else parse_keys(keys)
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 64:
            raise ConfigurationError("max_size must be a whole number of bytes, at least 64.")
        try:
            self.lifetime = Lifetime(idle_timeout, absolute_timeout, touch_interval, clock)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        self.max_size = max_size
        self.table_name = table_name
        check_table_name(table_name)
        self.database, self.owns_database = open_database(database)
        self.model = build_model(self.database, table_name)
        self.envelope: Envelope | NoKeys = (
            NoKeys() if keyless else Envelope(parsed_keys, table_name, legacy=legacy_envelopes)
        )
        self._connection = Connector(self.database, table_name)
        self._sql = Statements.build(self.database, table_name)
        self._packet_checked = not is_mysql(self.database)

    @classmethod
    def without_keys(
        cls, database: str | peewee.Database, *, table_name: str = DEFAULT_TABLE
    ) -> SessionStore:
        """Return a store for the chores that never read a payload, built without keys.

        It can create the table, expire and count sessions (what ``storedsession init``,
        ``expire`` and ``stats`` do); loading or saving through it raises
        :class:`ConfigurationError`.
        """
        return cls(database, keys=_WITHOUT_KEYS, table_name=table_name)

    # -- configuration -------------------------------------------------------------
    @property
    def idle_timeout(self) -> timedelta | None:
        """The default idle timeout, or ``None``."""
        idle = self.lifetime.idle
        return None if idle is None else timedelta(milliseconds=idle)

    @property
    def absolute_timeout(self) -> timedelta | None:
        """The absolute timeout counted from creation, or ``None``."""
        absolute = self.lifetime.absolute
        return None if absolute is None else timedelta(milliseconds=absolute)

    def now(self) -> int:
        """Return the current time in epoch milliseconds, from the store's clock."""
        return self.lifetime.now()

    def cookie_max_age(self, session: Session) -> int | None:
        """Seconds the cookie should live: the session's remaining lifetime, or ``None``.

        ``None`` means a browser-session cookie: no limit at all, or ``set_expiry(0)``.
        """
        stored = session._stored
        expires = None if stored is None else stored.expires
        return self.lifetime.cookie_max_age(expires, session.idle_timeout)

    # -- schema --------------------------------------------------------------------
    def create_table(self) -> None:
        """Create the session table and its indexes if they do not exist.

        Safe to call from every worker at once (gunicorn without ``--preload`` imports the
        app in each): ``IF NOT EXISTS`` is not atomic on PostgreSQL (a duplicate key in
        ``pg_type``) nor for MySQL's indexes (error 1061), and on SQLite the loser is told
        the database is busy while the winner's table is not yet committed (so it looks
        missing); the loser of that race tries again and then finds everything in place.
        """
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with self._connection():
                    self.model.create_table(safe=True)
                    self._check_packet()
                return
            except StoreUnavailable:  # TableMissing included, see above
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 - jitter, not a secret

    def drop_table(self) -> None:
        """Drop the session table if it exists (every session ends)."""
        with self._connection():
            self.model.drop_table(safe=True)

    def _check_packet(self) -> None:
        if self._packet_checked:
            return
        row = self.database.execute_sql("SELECT @@max_allowed_packet").fetchone()
        # A binary parameter may double in size once escaped on the wire.
        needed = 2 * (self.max_size + OVERHEAD) + 64 * 1024
        if row and int(row[0]) < needed:
            raise ConfigurationError(
                f"max_size={self.max_size} needs the MySQL/MariaDB setting "
                f"max_allowed_packet of at least {needed} bytes; the server has {row[0]}. "
                "Raise max_allowed_packet or lower max_size."
            )
        self._packet_checked = True

    # -- load ----------------------------------------------------------------------
    def load(self, value: str | None) -> Session:
        """Return the live session whose public id is ``value``, or a new empty one.

        Never raises for bad input: a missing, malformed, unknown, expired or
        undecryptable id gives a new session, and so does a row whose columns were
        edited without the keys (format 2 seals them; a last-seen time before the
        creation or more than 5 minutes ahead of the clock counts as edited). Raises
        :class:`StoreUnavailable` when the database fails, so that a session is never
        silently dropped.
        """
        if value is None:
            return Session()
        if not ids.is_public_id(value):
            security_log.warning("Ignored a malformed session id.")
            return Session()
        handle = ids.handle_for(value)
        row = self._connection.fetchone(self._sql.select, (handle,))
        if signals.session_read.receivers:
            signals.session_read.send(self, sid=handle)
        if row is None:
            security_log.info("Ignored an unknown session id.")
            return Session()
        payload, user_id, created, last_seen, expires, idle, version = row
        lifetime = self.lifetime
        now = lifetime.now()
        try:
            if not lifetime.plausible(created, last_seen, now):
                security_log.warning(
                    "Ignored a stored session whose last-seen time is before its creation "
                    "or more than 5 minutes ahead of this store's clock."
                )
                return Session()
            if not lifetime.alive(created, last_seen, expires, idle, now):
                log.debug("Ignored an expired session.")
                return Session()
            metadata, plaintext = self.envelope.open(bytes(payload), handle, user_id, created, idle)
            data = serialization.loads(plaintext)
        except DecryptionFailed as exc:
            security_log.warning("A stored session could not be decrypted: %s.", exc)
            return Session()
        except ValueError:
            security_log.warning("A stored session decrypted to something that is not JSON.")
            return Session()
        except TypeError:  # SQLite keeps text written into an integer or a blob column
            security_log.warning("A stored session has a column of the wrong type.")
            return Session()
        # Positional, each name the field's, in the row's order: keywords cost a NamedTuple
        # a microsecond more on every load (measured here).
        stored = Stored(
            value, handle, user_id, created, last_seen, expires, idle, version, plaintext, metadata
        )
        return Session._from_row(stored, data)

    # -- delete and expire ---------------------------------------------------------
    def _delete_handles(self, handles: Sequence[str]) -> int:
        deleted = 0
        for handle in handles:
            if self.database.execute_sql(self._sql.delete, (handle,)).rowcount:
                deleted += 1
                if signals.session_delete.receivers:
                    signals.session_delete.send(self, sid=handle)
        return deleted

    def delete(self, session: Session) -> None:
        """Delete the session's row now and leave ``session`` new and empty."""
        handles = session._handles()
        if handles:
            with self._connection():
                self._delete_handles(handles)
        session._deleted()

    def expire(
        self,
        batch_size: int = expiry.MAX_BATCH,
        *,
        max_load: float = 1.0,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete expired sessions in short batches; return how many.

        Rows are chosen by their stored expiry through its index, against the time the
        sweep began, so a session used during the sweep is never deleted. Each batch is
        sized to take about 10 ms (2 ms on SQLite), at most ``batch_size`` rows, and the
        next starts at once: ``max_load`` (in (0, 1]) is the share of wall time spent
        deleting, for a sweep beside heavy traffic (below 1, batches take about 2 ms on
        every backend: :data:`~storedsession.expiry.SHARED_BATCH_SECONDS`); after
        ``max_seconds`` no new batch starts, and the rest waits for the next sweep. A
        deadlock or lock wait timeout is retried. ``progress`` is called with the size of
        each batch.
        """
        return self.sweep(
            batch_size, max_load=max_load, max_seconds=max_seconds, progress=progress
        ).removed

    def sweep(
        self,
        batch_size: int = expiry.MAX_BATCH,
        *,
        max_load: float = 1.0,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> expiry.SweepResult:
        """Like :meth:`expire`, and also tell whether it finished before ``max_seconds``."""
        expiry.check_options(batch_size, max_load, max_seconds)
        cutoff = self.now()
        with self._connection():  # one connection for the sweep, not one per batch
            result = expiry.sweep(
                self.database,
                self._sql,
                cutoff,
                batch_size=batch_size,
                max_load=max_load,
                max_seconds=max_seconds,
                progress=progress,
            )
        if signals.sessions_expired.receivers:
            signals.sessions_expired.send(self, count=result.removed)
        return result

    def count_expired(self) -> int:
        """Return how many stored sessions :meth:`expire` would delete now."""
        with self._connection():
            return int(
                self.database.execute_sql(self._sql.count_expired, (self.now(),)).fetchone()[0]
            )

    # -- connections -----------------------------------------------------------------
    def connected(self) -> AbstractContextManager[peewee.Database]:
        """Hold one connection for several operations: ``with store.connected(): ...``."""
        return self._connection()

    def close(self) -> None:
        """Close the database if the store built it from a URL (pools close all)."""
        if self.owns_database:
            close_all = getattr(self.database, "close_all", None)
            if close_all is not None:
                close_all()
            if not self.database.is_closed():
                self.database.close()

    # -- async twins ---------------------------------------------------------------
    aload = offload(load)
    adelete = offload(delete)
    aexpire = offload(expire)
    acreate_table = offload(create_table)
