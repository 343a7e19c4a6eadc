"""The session store: load, save and delete encrypted sessions in a Peewee database.

:class:`SessionStore` joins three collaborators: a :class:`~storedsession.table.SessionTable`
(the model, statements, connections, schema, expiry and keyless deletes), a
:class:`~storedsession.lifetime.Lifetime` (timeouts and clock) and an
:class:`~storedsession.crypto.Envelope` (the keys). It loads here, building a
:class:`~storedsession.session.Session` from one :class:`~storedsession.session.Stored`
value, and decides here what a save does; a :class:`~storedsession.writes.Writer` lands
the writes, and :mod:`storedsession.users` lists and revokes a user's sessions. What
needs no keys it hands to the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import peewee

from . import devices, expiry, ids, serialization, signals, users
from .aio import THREADS, Workers, offload
from .checks import is_whole
from .crypto import DecryptionFailed, Envelope
from .exceptions import ConfigurationError
from .keys import parse_keys
from .lifetime import Lifetime
from .logs import log, security_log
from .models import DEFAULT_TABLE
from .session import DELETE, INSERT, NOTHING, REPLACE, TOUCH, Plan, Session, Stored
from .table import DEFAULT_MAX_SIZE, SessionTable
from .users import SessionInfo
from .writes import DELETED, NOTHING_DONE, WRITTEN, Outcome, Writer

_new_tuple = tuple.__new__


class SessionStore:
    """Encrypted, database-backed sessions.

    ``database`` is a peewee ``Database`` or a URL that ``playhouse.db_url`` understands
    (``sqlite:///sessions.db``, ``postgresql://…``, ``mysql://…``, and their ``+pool``
    forms). ``keys`` is one key or a newest-first list (``STOREDSESSION_KEYS`` when
    omitted). Timeouts take seconds or a ``timedelta``; ``None`` means no limit.
    ``max_size`` bounds the serialized JSON of one session, in bytes. ``clock`` returns
    the current UTC time, for tests. ``legacy_envelopes=False`` refuses rows still in
    envelope format 1, whose columns are not authenticated (``storedsession stats`` tells
    when none is left; ``storedsession rotate-keys`` moves them). ``async_threads`` is how many
    worker threads (per process) run the database work of async callers: the async twins
    and the ASGI middleware.
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
        max_size: int = DEFAULT_MAX_SIZE,
        clock: Callable[[], datetime] | None = None,
        legacy_envelopes: bool = True,
        async_threads: int = THREADS,
    ) -> None:
        parsed_keys = parse_keys(keys)
        if not is_whole(max_size, 64):
            raise ConfigurationError("max_size must be a whole number of bytes, at least 64.")
        if not is_whole(async_threads, 1):
            raise ConfigurationError("async_threads must be a whole number, at least 1.")
        try:
            self.lifetime = Lifetime(idle_timeout, absolute_timeout, touch_interval, clock)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        self.max_size = max_size
        #: The :class:`SessionTable` under the store, which does all that needs no keys.
        self.table = SessionTable(database, table_name, sender=self)
        self.envelope = Envelope(parsed_keys, table_name, legacy=legacy_envelopes)
        self._writer = Writer(self.table, self.envelope, self.lifetime, max_size, self)
        #: The threads that the async twins and the ASGI middleware run database work in.
        self._workers = Workers(async_threads)
        # What load uses, one hop away (a load is counted in attribute hops).
        self._connection = self.table.connector
        self._sql = self.table.statements

    @property
    def database(self) -> peewee.Database:
        """The peewee database the table is in."""
        return self.table.database

    @property
    def model(self) -> Any:
        """The table's peewee model."""
        return self.table.model

    @property
    def table_name(self) -> str:
        """The table's name."""
        return self.table.table_name

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

        Safe to call from every worker at once (see :meth:`SessionTable.create_table
        <storedsession.table.SessionTable.create_table>`). On MySQL/MariaDB, raises
        :class:`ConfigurationError` when ``max_allowed_packet`` cannot carry ``max_size``.
        """
        self.table.create_table(self.max_size)

    def drop_table(self) -> None:
        """Drop the session table if it exists (every session ends)."""
        self.table.drop_table()

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
        unpack = self._sql.unpack
        payload, user_id, created, last_seen, expires, idle, version = (
            row if unpack is None else unpack(row)
        )
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
        # Positional, each name the field's, in the row's order, and through tuple.__new__:
        # keywords cost a NamedTuple a microsecond more on every load (measured here), and
        # its own __new__ is a Python function.
        stored = _new_tuple(
            Stored,
            (
                value,
                handle,
                user_id,
                created,
                last_seen,
                expires,
                idle,
                version,
                plaintext,
                metadata,
            ),
        )
        return Session._from_row(stored, data)

    # -- save and delete -------------------------------------------------------------
    def save(self, session: Session, client: devices.Client | None = None) -> Outcome:
        """Write what changed in ``session``, in as few queries as possible.

        A new empty session writes nothing; an unchanged one only moves "last seen" once
        per ``touch_interval``; a changed one is one versioned ``UPDATE`` (one ``INSERT``
        when new). Raises :class:`SessionInterrupted` when the session was deleted
        meanwhile, and never re-creates it.

        A save that signs the session in (it gets a user id, or is regenerated with one)
        sends ``signals.session_signed_in``, and, given ``client`` (what the web adapters
        pass: a callable returning the request's raw user agent and address, called only
        then), records those in place of any earlier ones, encrypted with the session.
        """
        return self._save(session, session._plan(), client)

    def _save(self, session: Session, plan: Plan, client: devices.Client | None) -> Outcome:
        """Save ``session`` as ``plan`` says: its ``_plan()``, made once by the caller (the
        web layer makes it to choose the thread), or ``(NOTHING, None)`` where
        :meth:`_writes_nothing` found that the save runs no statement."""
        action, plaintext = plan
        if action is TOUCH:
            stored = session._stored
            assert stored is not None
            seen = self.lifetime.touch_due(stored.created, stored.last_seen)
            return NOTHING_DONE if seen is None else self._writer.touch(session, seen)
        if action is NOTHING:
            return NOTHING_DONE
        if action is DELETE:
            self.delete(session)
            return DELETED
        assert plaintext is not None
        writer = self._writer
        writer.sized(plaintext)
        signed_in = session._record_client(client)
        if action is INSERT or action is REPLACE:
            writer.create(session, plaintext, replace=action is REPLACE)
        else:
            writer.write(session, plaintext, action)
        # The user id as stored: a merge may have taken another request's.
        if signed_in and session.user_id is not None and signals.session_signed_in.receivers:
            signals.session_signed_in.send(self, sid=session.handle, user_id=session.user_id)
        return WRITTEN

    def _writes_nothing(self, session: Session, plan: Plan) -> bool:
        """Tell whether saving ``session`` as ``plan`` would run no statement: nothing to
        write, or an unchanged session whose touch is not due."""
        action = plan[0]
        if action is NOTHING:
            return True
        if action is not TOUCH:
            return False
        stored = session._stored
        assert stored is not None
        return self.lifetime.touch_due(stored.created, stored.last_seen) is None

    def delete(self, session: Session) -> None:
        """Delete the session's row now and leave ``session`` new and empty."""
        handles = session._handles()
        if handles:
            self.table.delete(handles)
        session._deleted()

    # -- a user's sessions ---------------------------------------------------------
    def sessions_for(self, user_id: str | int) -> list[SessionInfo]:
        """List the user's live sessions, most recently seen first.

        Each row is decrypted for its device details; a row that does not open (altered,
        moved, or its columns edited) is left out and logged, as a load would ignore it.
        """
        return users.sessions_for(self.table, self.envelope, self.lifetime, user_id)

    def revoke(self, handle: str, user_id: str | int | None = None) -> bool:
        """Delete one session by its handle ("sign out that device").

        With ``user_id``, only if the session belongs to that user. Returns whether a
        session was deleted. A session that ``regenerate()`` moved to a new id meanwhile
        (the revoke waited for the move, or the handle was listed just before it) is
        followed: the moved row names the handle it came from in its sealed metadata.
        """
        return users.revoke(self.table, self.envelope, handle, user_id)

    def revoke_user(self, user_id: str | int, keep: Session | None = None) -> int:
        """Delete all of the user's sessions but ``keep`` ("sign out everywhere else").

        Returns how many it deleted. No session of the user survives, even one that a
        concurrent ``regenerate()`` is moving to a new id: see
        :meth:`SessionTable.revoke_user <storedsession.table.SessionTable.revoke_user>`,
        which does it without keys.
        """
        return self.table.revoke_user(user_id, None if keep is None else keep.handle)

    # -- expiry ----------------------------------------------------------------------
    def expire(
        self,
        batch_size: int = expiry.MAX_BATCH,
        *,
        max_load: float = expiry.FULL_LOAD,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Delete expired sessions in short batches, by the store's clock; return how many.

        Safe beside live traffic; the options are :meth:`SessionTable.expire
        <storedsession.table.SessionTable.expire>`'s.
        """
        return self.table.expire(
            batch_size,
            max_load=max_load,
            max_seconds=max_seconds,
            progress=progress,
            now=self.lifetime.now(),
        )

    def sweep(
        self,
        batch_size: int = expiry.MAX_BATCH,
        *,
        max_load: float = expiry.FULL_LOAD,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> expiry.SweepResult:
        """Like :meth:`expire`, and also tell whether it finished before ``max_seconds``."""
        return self.table.sweep(
            batch_size,
            max_load=max_load,
            max_seconds=max_seconds,
            progress=progress,
            now=self.lifetime.now(),
        )

    def count_expired(self) -> int:
        """Return how many stored sessions :meth:`expire` would delete now."""
        return self.table.count_expired(self.lifetime.now())

    # -- connections -----------------------------------------------------------------
    def connected(self) -> AbstractContextManager[peewee.Database]:
        """Hold one connection for several operations: ``with store.connected(): ...``."""
        return self._connection()

    def close(self) -> None:
        """Close the database if the store built it from a URL (pools close all), and stop
        the store's worker threads once their jobs are done."""
        self._workers.shutdown()
        self.table.close()

    # -- async twins ---------------------------------------------------------------
    aload = offload(load)
    asave = offload(save)
    adelete = offload(delete)
    aexpire = offload(expire)
    acreate_table = offload(create_table)
    asessions_for = offload(sessions_for)
    arevoke = offload(revoke)
    arevoke_user = offload(revoke_user)
