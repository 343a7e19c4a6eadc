"""How a save lands: one INSERT or one versioned UPDATE, a merge when another request
saved first, a new id at login, a throttled "last seen" otherwise.

Every statement that writes ``user_id``, ``idle_timeout`` or a new row writes a payload
sealed to those very values (and to the creation time) beside them; the "last seen" touch
changes none of them and re-seals nothing. The metadata map travels with the session and,
in a merge, with the user id: a request that changed the user id (or regenerated a
signed-in session) keeps its own map. A save that signs the session in records the
client's details in the map (:mod:`storedsession.devices`); an anonymous session keeps none.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any

import peewee

from . import devices, ids, serialization, signals
from .aio import offload
from .crypto import DecryptionFailed, KeyNotConfigured
from .database import describe, is_sqlite, is_write_conflict
from .exceptions import (
    SessionConflict,
    SessionInterrupted,
    SessionTooLarge,
    StoreUnavailable,
    UnknownKey,
)
from .logs import security_log
from .merge import reapply
from .session import Session

if TYPE_CHECKING:
    from .crypto import Envelope, NoKeys
    from .database import Connector
    from .sql import Statements


#: The metadata key in which a row moved by ``regenerate()`` names the handle it left, so
#: that a ``revoke`` of that handle still finds the session (see ``UserSessions.revoke``).
MOVED_FROM = "moved_from"

#: How often a save re-reads and re-applies its changes after losing a race.
MAX_CONFLICT_RETRIES = 16
#: Seconds after which a save stops retrying a write conflict the database reported.
MAX_CONFLICT_SECONDS = 10.0
#: How often a freshly drawn id is redrawn when it is taken (never, in practice).
MAX_ID_DRAWS = 4


class Outcome(Enum):
    """What :meth:`SessionStore.save` did, which tells the web layer what cookie to send."""

    NOTHING = "nothing"  #: nothing written; send no cookie
    TOUCHED = "touched"  #: "last seen" moved; refresh the cookie
    WRITTEN = "written"  #: inserted or updated; send the cookie
    DELETED = "deleted"  #: the session is gone; send a deletion cookie


#: Everything a save may change in a session: what a rolled-back attempt puts back.
_SESSION_STATE = Session.__slots__


def _restore(session: Session, kept: list[Any] | None) -> None:
    if kept is not None:
        for name, value in zip(_SESSION_STATE, kept, strict=True):
            setattr(session, name, value)


class _Conflict(Exception):
    """Internal: a versioned write matched no row."""


def _unsettled(cause: BaseException | None = None) -> SessionConflict:
    reported = "" if cause is None else f" The database reported: {describe(cause)}."
    return SessionConflict(
        "The session kept changing under this request and could not be saved; try again." + reported
    )


def _signs_in(session: Session) -> bool:
    """Tell whether saving ``session`` gives it a user: a new user id, or regenerate() with one."""
    user = session._user_id
    return user is not None and (session._regenerate or user != session._loaded_user_id)


class SessionWrites:
    """The writing half of :class:`~storedsession.SessionStore`."""

    if TYPE_CHECKING:
        database: peewee.Database
        envelope: Envelope | NoKeys
        max_size: int
        _connection: Connector
        _sql: Statements
        _touch_ms: int

        def now(self) -> int: ...
        def _expiry(self, created: int, last_seen: int, session_idle: int | None) -> int | None: ...
        def _check_packet(self) -> None: ...
        def _delete_handles(self, handles: Sequence[str]) -> int: ...
        def delete(self, session: Session) -> None: ...

    def _plaintext(self, session: Session) -> bytes:
        plaintext = serialization.dumps(session._data)
        if len(plaintext) > self.max_size:
            raise SessionTooLarge(len(plaintext), self.max_size)
        return plaintext

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
        if session.new:
            if not session._data and session._user_id is None:
                if session._doomed is None:
                    return Outcome.NOTHING
                self.delete(session)
                return Outcome.DELETED
            plaintext = self._plaintext(session)
            signed_in = session._user_id is not None
            if signed_in and client is not None:
                session._meta = devices.recorded(session._meta, client)
            with self._connection():
                self._check_packet()
                if session._doomed is None:
                    self._insert(session, plaintext)
                else:
                    with self._transaction():
                        self._delete_handles([session._doomed])
                        self._insert(session, plaintext)
                    session._doomed = None
            if signed_in:
                self._signed_in(session)
            return Outcome.WRITTEN
        metadata_changed = (
            session._user_id != session._loaded_user_id or session._idle != session._loaded_idle
        )
        if session._regenerate or metadata_changed or session._dirty or session._exposed:
            # Serialize once: the same bytes tell whether anything changed and get written.
            plaintext = self._plaintext(session)
            signed_in = _signs_in(session)
            if signed_in:
                if client is not None:
                    session._meta = devices.recorded(session._meta, client)
            elif session._user_id is None and session._meta:
                session._meta = devices.without_client(session._meta)  # signed out
            if session._regenerate:
                self._write(session, plaintext, self._regenerate_once)
            elif metadata_changed or plaintext != session._loaded:
                self._write(session, plaintext, self._update_once)
            else:
                return self._touch(session)
            if signed_in:
                self._signed_in(session)
            return Outcome.WRITTEN
        return self._touch(session)

    def _signed_in(self, session: Session) -> None:
        # The user id as stored: a merge may have taken another request's.
        if session._user_id is not None and signals.session_signed_in.receivers:
            signals.session_signed_in.send(self, sid=session._handle, user_id=session._user_id)

    def _transaction(self) -> Any:
        if is_sqlite(self.database):
            # Take the write lock up front, so the busy timeout applies to it.
            return self.database.atomic("IMMEDIATE")
        return self.database.atomic()

    def _insert(self, session: Session, plaintext: bytes) -> None:
        """Insert the session under a freshly drawn id, then let it take that id."""
        now = self.now()
        created = session._created if session._created is not None else now
        now = max(now, created)  # see _seen_now
        expires = self._expiry(created, now, session._idle)
        for _ in range(MAX_ID_DRAWS):
            public_id = ids.new_public_id()
            handle = ids.handle_for(public_id)
            params = (
                handle,
                self.envelope.seal(
                    plaintext, handle, session._user_id, created, session._idle, session._meta
                ),
                session._user_id,
                created,
                now,
                expires,
                session._idle,
            )
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

    def _write(
        self,
        session: Session,
        plaintext: bytes,
        attempt: Callable[[Session, bytes], None],
    ) -> None:
        """Write with ``attempt``; after losing a race, re-read, re-apply and try again.

        A race is lost when a versioned statement matches no row (another request saved
        first), or when the database reports a write conflict (:func:`is_write_conflict`:
        Galera reports a transaction that failed certification at COMMIT as a deadlock).
        The first attempt is one statement; a retry runs in a transaction that fails
        leaves ``session`` as this request left it, so that no retry mistakes a write
        that was rolled back for one that landed.
        """
        with self._connection():
            self._check_packet()
            kept: list[Any] | None = None
            started = time.monotonic()
            try:
                for tries in range(MAX_CONFLICT_RETRIES + 1):
                    try:
                        if tries == 0:
                            attempt(session, plaintext)  # one statement: nothing to undo
                            return
                        if kept is None:
                            kept = [getattr(session, name) for name in _SESSION_STATE]
                        # Re-read and re-apply under a row lock, so that no other writer on
                        # this server can move the version before this one writes
                        # (optimistic retries alone starve a request when several write
                        # the same session at once). Galera's lock is the node's own:
                        # another node's write shows as a write conflict.
                        with self._transaction():
                            if tries:
                                plaintext = self._merge_latest(session, lock=True)
                            attempt(session, plaintext)
                        return
                    except _Conflict:
                        pass
                    except Exception as exc:
                        # A lock wait that timed out took its full timeout: retried only
                        # if the server's timeout is short.
                        if not is_write_conflict(exc):
                            raise
                        if time.monotonic() - started > MAX_CONFLICT_SECONDS:
                            raise _unsettled(exc) from exc
                    _restore(session, kept)
                    if tries:
                        time.sleep(random.uniform(0, 0.002 * tries))  # noqa: S311 - jitter
            except BaseException:
                _restore(session, kept)
                raise
        raise _unsettled()

    def _seen_now(self, session: Session) -> int:
        """Return the last-seen time to write: now, but never before the creation.

        A row last seen before its creation reads as edited; a server whose clock runs a
        little behind the one that created the session must not make it so.
        """
        assert session._created is not None
        return max(self.now(), session._created)

    def _update_once(self, session: Session, plaintext: bytes) -> None:
        now = self._seen_now(session)
        handle = session._handle
        assert handle is not None and session._created is not None
        expires = self._expiry(session._created, now, session._idle)
        # Sealed to the columns this statement leaves in the row: changed ones are written
        # beside it, unchanged ones are the row's (the version proves it).
        sealed = self.envelope.seal(
            plaintext, handle, session._user_id, session._created, session._idle, session._meta
        )
        params: tuple[Any, ...]
        if session._user_id != session._loaded_user_id or session._idle != session._loaded_idle:
            sql, params = (
                self._sql.update,
                (sealed, session._user_id, now, expires, session._idle, handle, session._version),
            )
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
        """Move the row to a freshly drawn id: one versioned ``UPDATE`` of its key.

        A move, not an INSERT of a new row and a DELETE of the old one, because a concurrent
        ``revoke_user`` must find the session wherever it is (see ``revoke_user``): with a
        new row, a revoke that waited for the old one finds it gone, and the new row is not
        in the snapshot it reads; an updated row is followed. Also one statement, not three.
        """
        now = self._seen_now(session)
        old_handle = session._handle
        assert old_handle is not None and session._created is not None
        public_id = ids.new_public_id()
        handle = ids.handle_for(public_id)
        expires = self._expiry(session._created, now, session._idle)
        # Sealed to the new id and the columns the move leaves in the row (created_at stays).
        metadata = session._meta
        if session._user_id is not None:  # only a user's sessions are revoked by handle
            metadata = {**metadata, MOVED_FROM: old_handle}
        sealed = self.envelope.seal(
            plaintext, handle, session._user_id, session._created, session._idle, metadata
        )
        params: tuple[Any, ...] = (
            handle,
            sealed,
            session._user_id,
            now,
            expires,
            session._idle,
            old_handle,
            session._version,
        )
        if self._sql.insert_ignores_conflict:  # these dialects also guard the move in SQL
            params += (handle,)
        try:
            moved = self.database.execute_sql(self._sql.regenerate, params).rowcount == 1
        except peewee.IntegrityError:
            moved = False  # MySQL: the drawn id is taken (only this statement failed)
        if not moved:
            # Another request saved first, the row is gone, or (never, in practice) the
            # drawn id is taken: re-read under a lock and retry with a new draw.
            raise _Conflict
        session._public_id, session._handle, session._version = public_id, handle, 1
        session._last_seen, session._expires, session._meta = now, expires, metadata
        session._loaded, session._regenerate = plaintext, False
        session._loaded_user_id, session._loaded_idle = session._user_id, session._idle
        if signals.session_write.receivers:
            signals.session_write.send(self, sid=handle)
        if signals.session_delete.receivers:
            signals.session_delete.send(self, sid=old_handle)

    def _merge_latest(self, session: Session, lock: bool = False) -> bytes:
        """Re-read a session that another request saved first and re-apply our changes.

        With ``lock``, the row stays locked until the caller's transaction ends.
        """
        handle = session._handle
        assert handle is not None and session._loaded is not None
        sql = self._sql.select_for_update if lock else self._sql.select
        row = self.database.execute_sql(sql, (handle,)).fetchone()
        if row is None:
            security_log.warning(
                "Blocked a save that would have resurrected a session deleted while a "
                "request used it."
            )
            raise SessionInterrupted()
        mine_user, mine_idle = session._user_id, session._idle
        user_changed = mine_user != session._loaded_user_id
        idle_changed = mine_idle != session._loaded_idle
        payload, user_id, created, last_seen, expires, idle, version = row
        try:
            their_meta, latest_plain = self.envelope.open(
                bytes(payload), handle, user_id, created, idle
            )
            theirs = serialization.loads(latest_plain)
        except KeyNotConfigured:
            raise UnknownKey(
                "Another process rewrote the session under a key this store does not have; "
                "nothing was saved. Give every process the same keys."
            ) from None
        except (DecryptionFailed, ValueError, TypeError):
            raise StoreUnavailable(
                "The session was changed by another request in a form this store cannot "
                "read (check the keys); nothing was saved."
            ) from None
        merged = reapply(serialization.loads(session._loaded), session._data, theirs)
        session._data = merged
        session._loaded = latest_plain
        session._version = version
        session._created, session._last_seen, session._expires = created, last_seen, expires
        session._loaded_user_id, session._loaded_idle = user_id, idle
        session._user_id = mine_user if user_changed else user_id
        session._idle = mine_idle if idle_changed else idle
        # The device details belong to whoever signed the session in last.
        if not (user_changed or (session._regenerate and mine_user is not None)):
            session._meta = their_meta
        if session._user_id is None and session._meta:
            session._meta = devices.without_client(session._meta)
        return self._plaintext(session)

    def _touch(self, session: Session) -> Outcome:
        now = self._seen_now(session)
        assert session._last_seen is not None and session._created is not None
        if now - session._last_seen < self._touch_ms:
            return Outcome.NOTHING
        expires = self._expiry(session._created, now, session._idle)
        if self._connection.rowcount(self._sql.touch, (now, expires, session._handle)) != 1:
            return Outcome.NOTHING  # deleted meanwhile: nothing to refresh
        session._last_seen, session._expires = now, expires
        return Outcome.TOUCHED

    asave = offload(save)
