"""The session store: load, save and delete encrypted sessions in a Peewee database."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, NoReturn, ParamSpec, TypeVar

import peewee

from . import ids, serialization, signals
from .crypto import OVERHEAD, DecryptionFailed, Envelope
from .database import Connector, is_mysql, is_sqlite, open_database
from .exceptions import (
    ConfigurationError,
    SessionInterrupted,
    SessionTooLarge,
    StoreUnavailable,
)
from .keys import parse_keys
from .models import DEFAULT_TABLE, build_model, check_table_name
from .session import Session, seconds
from .sql import Statements

security_log = logging.getLogger("storedsession.security")

P = ParamSpec("P")
R = TypeVar("R")

#: How often a save re-reads and re-applies its changes after losing a race.
MAX_CONFLICT_RETRIES = 16
#: How often a freshly drawn id is redrawn when it is taken (never, in practice).
MAX_ID_DRAWS = 4


class Outcome(Enum):
    """What :meth:`SessionStore.save` did, which tells the web layer what cookie to send."""

    NOTHING = "nothing"  #: nothing written; send no cookie
    TOUCHED = "touched"  #: "last seen" moved; refresh the cookie
    WRITTEN = "written"  #: inserted or updated; send the cookie
    DELETED = "deleted"  #: the session is gone; send a deletion cookie


@dataclass(frozen=True)
class SessionInfo:
    """One live session of a user, as listed by :meth:`SessionStore.sessions_for`."""

    handle: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime | None


_STORED_STATE = (
    "_public_id", "_handle", "_version", "_created", "_last_seen", "_expires", "_loaded",
    "_loaded_user_id", "_loaded_idle", "_regenerate",
)


class _Conflict(Exception):
    """Internal: a versioned write matched no row."""


class _NoKeys:
    """The envelope of a store built by :meth:`SessionStore.without_keys`: it refuses."""

    def _refuse(self, *args: object) -> NoReturn:
        raise ConfigurationError(
            "This store was built without keys, for the chores that never read a payload "
            "(create_table, expire, count_expired); reading or writing sessions needs keys."
        )

    seal = open = needs_rotation = _refuse


#: The ``keys=`` of a store built by :meth:`SessionStore.without_keys`.
_WITHOUT_KEYS: Any = object()


def _ms(value: float | None) -> int | None:
    return None if value is None else int(value * 1000)


def _utc(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _offload(method: Callable[P, R]) -> Callable[P, Any]:
    @functools.wraps(method)
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(method, *args, **kwargs)

    twin.__doc__ = f"Async twin of ``{method.__name__}``, run in a worker thread."
    return twin


class SessionStore:
    """Encrypted, database-backed sessions.

    ``database`` is a peewee ``Database`` or a URL that ``playhouse.db_url`` understands
    (``sqlite:///sessions.db``, ``postgresql://…``, ``mysql://…``, and their ``+pool``
    forms). ``keys`` is one key or a newest-first list (``STOREDSESSION_KEYS`` when
    omitted). Timeouts take seconds or a ``timedelta``; ``None`` means no limit.
    ``max_size`` bounds the serialized JSON of one session, in bytes. ``clock`` returns
    the current UTC time, for tests.
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
    ) -> None:
        keyless = keys is _WITHOUT_KEYS
        parsed_keys = () if keyless else parse_keys(keys)
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 64:
            raise ConfigurationError("max_size must be a whole number of bytes, at least 64.")
        try:
            self._idle = _ms(seconds(idle_timeout, "idle_timeout"))
            self._absolute = _ms(seconds(absolute_timeout, "absolute_timeout"))
            self._touch_ms = _ms(seconds(touch_interval, "touch_interval")) or 0
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(str(exc)) from None
        self.max_size = max_size
        self.table_name = table_name
        check_table_name(table_name)
        self.database, self.owns_database = open_database(database)
        self.model = build_model(self.database, table_name)
        self.envelope: Envelope | _NoKeys = (
            _NoKeys() if keyless else Envelope(parsed_keys, table_name)
        )
        self._connection = Connector(self.database, table_name)
        self._sql = Statements.build(self.database, table_name)
        self._clock = clock
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
        return None if self._idle is None else timedelta(milliseconds=self._idle)

    @property
    def absolute_timeout(self) -> timedelta | None:
        """The absolute timeout counted from creation, or ``None``."""
        return None if self._absolute is None else timedelta(milliseconds=self._absolute)

    def now(self) -> int:
        """Return the current time in epoch milliseconds, from the store's clock."""
        if self._clock is None:
            return int(time.time() * 1000)
        moment = self._clock()
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return int(moment.timestamp() * 1000)

    def _expiry(self, created: int, last_seen: int, session_idle: int | None) -> int | None:
        # A session's own idle timeout of 0 or None means the store's, on the server.
        idle = session_idle * 1000 if session_idle else self._idle
        absolute = self._absolute
        if idle is None:
            return None if absolute is None else created + absolute
        if absolute is None:
            return last_seen + idle
        return min(last_seen + idle, created + absolute)

    def _alive(self, created: int, last_seen: int, expires: int | None, idle: int | None,
               now: int) -> bool:
        # The stored expiry and today's configuration must both agree.
        if expires is not None and expires <= now:
            return False
        expiry = self._expiry(created, last_seen, idle)
        return expiry is None or expiry > now

    def cookie_max_age(self, session: Session) -> int | None:
        """Seconds the cookie should live: the session's remaining lifetime, or ``None``.

        ``None`` means a browser-session cookie: no limit at all, or ``set_expiry(0)``.
        """
        if session._expires is None or session._idle == 0:
            return None
        return max(0, math.ceil((session._expires - self.now()) / 1000))

    # -- schema --------------------------------------------------------------------
    def create_table(self) -> None:
        """Create the session table and its indexes if they do not exist."""
        with self._connection():
            self.model.create_table(safe=True)
            self._check_packet()

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
        undecryptable id gives a new session. Raises :class:`StoreUnavailable` when the
        database fails, so that a session is never silently dropped.
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
        if not self._alive(created, last_seen, expires, idle, self.now()):
            security_log.info("Ignored an expired session.")
            return Session()
        try:
            plaintext = self.envelope.open(bytes(payload), handle)
            data = serialization.loads(plaintext)
        except DecryptionFailed as exc:
            security_log.warning("A stored session could not be decrypted: %s.", exc)
            return Session()
        except ValueError:
            security_log.warning("A stored session decrypted to something that is not JSON.")
            return Session()
        return Session._from_row(data, plaintext, value, handle, version, created, last_seen,
                                 expires, user_id, idle)

    # -- save ----------------------------------------------------------------------
    def _plaintext(self, session: Session) -> bytes:
        plaintext = serialization.dumps(session._data)
        if len(plaintext) > self.max_size:
            raise SessionTooLarge(len(plaintext), self.max_size)
        return plaintext

    def save(self, session: Session) -> Outcome:
        """Write what changed in ``session``, in as few queries as possible.

        A new empty session writes nothing; an unchanged one only moves "last seen" once
        per ``touch_interval``; a changed one is one versioned ``UPDATE`` (one ``INSERT``
        when new). Raises :class:`SessionInterrupted` when the session was deleted
        meanwhile, and never re-creates it.
        """
        if session.new:
            if not session._data and session._user_id is None:
                if session._doomed is None:
                    return Outcome.NOTHING
                self.delete(session)
                return Outcome.DELETED
            plaintext = self._plaintext(session)
            with self._connection():
                self._check_packet()
                if session._doomed is None:
                    self._insert(session, plaintext)
                else:
                    with self._transaction():
                        self._delete_handles([session._doomed])
                        self._insert(session, plaintext)
                    session._doomed = None
            return Outcome.WRITTEN
        metadata_changed = (session._user_id != session._loaded_user_id
                            or session._idle != session._loaded_idle)
        if session._regenerate or metadata_changed or session._dirty or session._exposed:
            # Serialize once: the same bytes tell whether anything changed and get written.
            plaintext = self._plaintext(session)
            if session._regenerate:
                self._write(session, plaintext, self._regenerate_once)
                return Outcome.WRITTEN
            if metadata_changed or plaintext != session._loaded:
                self._write(session, plaintext, self._update_once)
                return Outcome.WRITTEN
        return self._touch(session)

    def _transaction(self) -> Any:
        if is_sqlite(self.database):
            # Take the write lock up front, so the busy timeout applies to it.
            return self.database.atomic("IMMEDIATE")
        return self.database.atomic()

    def _insert(self, session: Session, plaintext: bytes) -> None:
        """Insert the session under a freshly drawn id, then let it take that id."""
        now = self.now()
        created = session._created if session._created is not None else now
        expires = self._expiry(created, now, session._idle)
        for _ in range(MAX_ID_DRAWS):
            public_id = ids.new_public_id()
            handle = ids.handle_for(public_id)
            params = (handle, self.envelope.seal(plaintext, handle), session._user_id,
                      created, now, expires, session._idle)
            try:
                cursor = self.database.execute_sql(self._sql.insert, params)
            except peewee.IntegrityError:
                if self._sql.insert_ignores_conflict:
                    raise
                continue  # MySQL: the id is taken; this statement alone failed
            if cursor.rowcount == 1:
                break
            # 0 rows: ON CONFLICT DO NOTHING met a stored id; never write over it
        else:
            raise StoreUnavailable("Could not draw an unused session id; try again.")
        session._public_id, session._handle, session._version = public_id, handle, 1
        session._created, session._last_seen, session._expires = created, now, expires
        session._loaded, session._regenerate = plaintext, False
        session._loaded_user_id, session._loaded_idle = session._user_id, session._idle
        if signals.session_write.receivers:
            signals.session_write.send(self, sid=handle)

    def _write(self, session: Session, plaintext: bytes,
               attempt: Callable[[Session, bytes], None]) -> None:
        with self._connection():
            self._check_packet()
            try:
                attempt(session, plaintext)
                return
            except _Conflict:
                pass
            # Lost a race: re-read and re-apply under a row lock, so that no other writer
            # can move the version before this one writes (optimistic retries alone
            # starve a request when several write the same session at once).
            for tries in range(MAX_CONFLICT_RETRIES):
                try:
                    with self._transaction():
                        plaintext = self._merge_latest(session, lock=True)
                        attempt(session, plaintext)
                    return
                except _Conflict:
                    time.sleep(random.uniform(0, 0.002 * (tries + 1)))  # noqa: S311 - jitter
        raise StoreUnavailable(
            "The session kept changing under this request and could not be saved; "
            "try again."
        )

    def _update_once(self, session: Session, plaintext: bytes) -> None:
        now = self.now()
        handle = session._handle
        assert handle is not None and session._created is not None
        expires = self._expiry(session._created, now, session._idle)
        sealed = self.envelope.seal(plaintext, handle)
        params: tuple[Any, ...]
        if session._user_id != session._loaded_user_id or session._idle != session._loaded_idle:
            sql, params = self._sql.update, (sealed, session._user_id, now, expires,
                                             session._idle, handle, session._version)
        else:
            sql, params = self._sql.update_data, (sealed, now, expires, handle, session._version)
        if self.database.execute_sql(sql, params).rowcount != 1:
            raise _Conflict
        session._version += 1
        session._last_seen, session._expires, session._loaded = now, expires, plaintext
        session._loaded_user_id, session._loaded_idle = session._user_id, session._idle
        if signals.session_write.receivers:
            signals.session_write.send(self, sid=handle)

    def _regenerate_once(self, session: Session, plaintext: bytes) -> None:
        old = {name: getattr(session, name) for name in _STORED_STATE}
        try:
            with self._transaction():
                self._insert(session, plaintext)
                cursor = self.database.execute_sql(
                    self._sql.delete_version, (old["_handle"], old["_version"]))
                if cursor.rowcount != 1:
                    raise _Conflict
        except BaseException:
            for name, value in old.items():  # rolled back: the old row is still ours
                setattr(session, name, value)
            raise
        if signals.session_delete.receivers:
            signals.session_delete.send(self, sid=old["_handle"])

    def _merge_latest(self, session: Session, lock: bool = False) -> bytes:
        """Re-read a session that another request saved first and re-apply our changes.

        With ``lock``, the row stays locked until the caller's transaction ends.
        """
        handle = session._handle
        assert handle is not None and session._loaded is not None
        sql = self._sql.select_for_update if lock else self._sql.select
        row = self.database.execute_sql(sql, (handle,)).fetchone()
        if row is None:
            security_log.warning("Blocked a save that would have resurrected a deleted session.")
            raise SessionInterrupted()
        base = serialization.loads(session._loaded)
        ours = session._data
        mine_user, mine_idle = session._user_id, session._idle
        user_changed = mine_user != session._loaded_user_id
        idle_changed = mine_idle != session._loaded_idle
        try:
            latest_plain = self.envelope.open(bytes(row[0]), handle)
            theirs = serialization.loads(latest_plain)
        except (DecryptionFailed, ValueError):
            raise StoreUnavailable(
                "The session was changed by another request in a form this store cannot "
                "read (check the keys); nothing was saved."
            ) from None
        encode = json.dumps
        for key in base.keys() | ours.keys():
            if key not in ours:
                theirs.pop(key, None)
            elif key not in base or (key in theirs and encode(base[key]) != encode(ours[key])):
                theirs[key] = ours[key]
            # else: unchanged here, or deleted there (a deletion we did not see wins)
        _, user_id, created, last_seen, expires, idle, version = row
        session._data = theirs
        session._loaded = latest_plain
        session._version = version
        session._created, session._last_seen, session._expires = created, last_seen, expires
        session._loaded_user_id, session._loaded_idle = user_id, idle
        session._user_id = mine_user if user_changed else user_id
        session._idle = mine_idle if idle_changed else idle
        return self._plaintext(session)

    def _touch(self, session: Session) -> Outcome:
        now = self.now()
        assert session._last_seen is not None and session._created is not None
        if now - session._last_seen < self._touch_ms:
            return Outcome.NOTHING
        expires = self._expiry(session._created, now, session._idle)
        if self._connection.rowcount(self._sql.touch, (now, expires, session._handle)) != 1:
            return Outcome.NOTHING  # deleted meanwhile: nothing to refresh
        session._last_seen, session._expires = now, expires
        return Outcome.TOUCHED

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
        handles = [h for h in (session._handle, session._doomed) if h is not None]
        if handles:
            with self._connection():
                self._delete_handles(handles)
        session._reset()
        session._doomed = None
        session._invalidated = True

    def expire(self, batch_size: int = 1000, *, pause: float = 0.0,
               progress: Callable[[int], None] | None = None) -> int:
        """Delete expired sessions in batches of ``batch_size`` and return how many.

        Rows are chosen by their stored expiry through its index, against the time the
        sweep began, so a session used during the sweep is never deleted. ``pause``
        seconds pass between batches, leaving room for live traffic.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError("batch_size must be a positive whole number.")
        cutoff = self.now()
        total = 0
        while True:
            with self._connection():
                deleted = self.database.execute_sql(
                    self._sql.expire_batch, (cutoff, batch_size)).rowcount
            if deleted <= 0:
                break
            total += deleted
            if progress is not None:
                progress(deleted)
            if pause:
                time.sleep(pause)
        if signals.sessions_expired.receivers:
            signals.sessions_expired.send(self, count=total)
        return total

    def count_expired(self) -> int:
        """Return how many stored sessions :meth:`expire` would delete now."""
        with self._connection():
            return int(self.database.execute_sql(
                self._sql.count_expired, (self.now(),)).fetchone()[0])

    # -- users ---------------------------------------------------------------------
    def sessions_for(self, user_id: str | int) -> list[SessionInfo]:
        """List the user's live sessions, most recently seen first."""
        model, now = self.model, self.now()
        query = (model.select(model.sid, model.created_at, model.last_seen_at,
                              model.expires_at, model.idle_timeout)
                 .where(model.user_id == str(user_id))
                 .order_by(model.last_seen_at.desc())
                 .tuples())
        with self._connection():
            rows = list(query)
        return [
            SessionInfo(handle, _utc(created), _utc(seen), _utc(expires))  # type: ignore[arg-type]
            for handle, created, seen, expires, idle in rows
            if self._alive(created, seen, expires, idle, now)
        ]

    def revoke(self, handle: str, user_id: str | int | None = None) -> bool:
        """Delete one session by its handle ("sign out that device").

        With ``user_id``, only if the session belongs to that user. Returns whether a
        session was deleted.
        """
        if not ids.is_handle(handle):
            return False
        model = self.model
        query = model.delete().where(model.sid == handle)
        if user_id is not None:
            query = query.where(model.user_id == str(user_id))
        with self._connection():
            deleted = query.execute()
        if deleted and signals.session_delete.receivers:
            signals.session_delete.send(self, sid=handle)
        return bool(deleted)

    def revoke_user(self, user_id: str | int, keep: Session | None = None) -> int:
        """Delete all of the user's sessions but ``keep`` ("sign out everywhere else")."""
        model = self.model
        condition = model.user_id == str(user_id)
        if keep is not None and keep.handle is not None:
            condition &= model.sid != keep.handle
        with self._connection(), self._transaction():
            handles = [h for (h,) in model.select(model.sid).where(condition).tuples()]
            deleted = self._delete_handles(handles)
        return deleted

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
    aload = _offload(load)
    asave = _offload(save)
    adelete = _offload(delete)
    aexpire = _offload(expire)
    asessions_for = _offload(sessions_for)
    arevoke = _offload(revoke)
    arevoke_user = _offload(revoke_user)
    acreate_table = _offload(create_table)
