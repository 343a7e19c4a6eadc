"""How a save lands: one INSERT or one versioned UPDATE, a merge when another request
saved first, a new id at login, a throttled "last seen" otherwise.

:meth:`Session._plan` decides which (an :class:`~storedsession.session.Action`), the
store's ``save`` dispatches on it, and the :class:`Writer` it holds runs the statements:
each returns the :class:`~storedsession.session.Stored` value it left in the row, which
the session adopts whole, and a retry that was rolled back restores the session's
snapshot, so nothing here assigns a session's fields.

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
from enum import Enum
from typing import TYPE_CHECKING, Any

import peewee

from . import ids, serialization, signals
from .crypto import DecryptionFailed, KeyNotConfigured
from .database import describe, is_write_conflict
from .exceptions import (
    SessionConflict,
    SessionInterrupted,
    SessionTooLarge,
    StoreUnavailable,
    UnknownKey,
)
from .logs import security_log
from .session import METADATA, REGENERATE, Action, Session, Stored
from .table import MAX_CONFLICT_RETRIES, SessionTable

if TYPE_CHECKING:
    from .crypto import Envelope
    from .lifetime import Lifetime


#: The metadata key in which a row moved by ``regenerate()`` names the handle it left, so
#: that a ``revoke`` of that handle still finds the session (see :func:`.users.revoke`).
MOVED_FROM = "moved_from"

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


# Returned and compared on every save: an enum member is a descriptor lookup (0.17 µs
# each, measured here on Python 3.11), a module name 0.01 µs.
NOTHING_DONE, TOUCHED, WRITTEN, DELETED = (
    Outcome.NOTHING,
    Outcome.TOUCHED,
    Outcome.WRITTEN,
    Outcome.DELETED,
)


class _Conflict(Exception):
    """Internal: a versioned write matched no row."""


def _unsettled(cause: BaseException | None = None) -> SessionConflict:
    reported = "" if cause is None else f" The database reported: {describe(cause)}."
    return SessionConflict(
        "The session kept changing under this request and could not be saved; try again." + reported
    )


class Writer:
    """How a :class:`~storedsession.SessionStore`'s saves land on its table.

    Holds what each statement uses (the connector, the statements, the envelope, the
    lifetime) as its own attributes, set once: a save is counted in attribute hops.
    ``sender`` is what its signals name as their sender.
    """

    def __init__(
        self,
        table: SessionTable,
        envelope: Envelope,
        lifetime: Lifetime,
        max_size: int,
        sender: object,
    ) -> None:
        self.table = table
        self.envelope = envelope
        self.lifetime = lifetime
        self.max_size = max_size
        self.sender = sender
        self._connection = table.connector
        self._sql = table.statements
        self._check_packet = table.check_packet

    def sized(self, plaintext: bytes) -> bytes:
        """Return ``plaintext``, or raise :class:`SessionTooLarge` if over ``max_size``."""
        if len(plaintext) > self.max_size:
            raise SessionTooLarge(len(plaintext), self.max_size)
        return plaintext

    def create(self, session: Session, plaintext: bytes, replace: bool) -> None:
        """Insert a new session; with ``replace``, delete the rows it was invalidated from."""
        with self._connection():
            self._check_packet(self.max_size)
            if replace:
                with self.table.transaction():
                    self.table.delete(session._handles())
                    stored = self._insert(session, plaintext)
            else:
                stored = self._insert(session, plaintext)
        session._settle(stored)

    def _insert(self, session: Session, plaintext: bytes) -> Stored:
        """Insert the session under a freshly drawn id; return the stored value."""
        now = self.lifetime.now()
        user_id, idle, meta = session.user_id, session.idle_timeout, session._meta
        expires = self.lifetime.expiry(now, now, idle)
        for _ in range(MAX_ID_DRAWS):
            public_id = ids.new_public_id()
            handle = ids.handle_for(public_id)
            sealed = self.envelope.seal(plaintext, handle, user_id, now, idle, meta)
            params = (handle, sealed, user_id, now, now, expires, idle)
            try:
                cursor = self._connection.execute(self._sql.insert, params)
            except peewee.IntegrityError:
                if self._sql.insert_ignores_conflict:
                    raise
                continue  # MySQL: the id is taken; this statement alone failed
            if cursor.rowcount == 1:
                break
            # 0 rows: ON CONFLICT DO NOTHING met a stored id; never write over it
        else:
            raise StoreUnavailable("Could not draw an unused session id; try again.")
        if signals.session_write.receivers:
            signals.session_write.send(self.sender, sid=handle)
        return Stored(public_id, handle, user_id, now, now, expires, idle, 1, plaintext, meta)

    def _attempt(self, session: Session, plaintext: bytes, action: Action) -> Stored:
        if action is REGENERATE:
            return self._regenerate_once(session, plaintext)
        return self._update_once(session, plaintext, columns=action is METADATA)

    def write(self, session: Session, plaintext: bytes, action: Action) -> None:
        """Write as ``action`` says; after losing a race, re-read, re-apply and try again.

        A race is lost when a versioned statement matches no row (another request saved
        first), or when the database reports a write conflict (:func:`is_write_conflict`:
        Galera reports a transaction that failed certification at COMMIT as a deadlock).
        The first attempt is one statement; a retry runs in a transaction that fails
        leaves ``session`` as this request left it, so that no retry mistakes a write
        that was rolled back for one that landed.
        """
        with self._connection():
            self._check_packet(self.max_size)
            kept = None
            started = time.monotonic()
            try:
                for tries in range(MAX_CONFLICT_RETRIES + 1):
                    try:
                        if tries == 0:  # one statement: nothing to undo
                            session._settle(self._attempt(session, plaintext, action))
                            return
                        if kept is None:
                            kept = session._snapshot()
                        # Re-read and re-apply under a row lock, so that no other writer on
                        # this server can move the version before this one writes
                        # (optimistic retries alone starve a request when several write
                        # the same session at once). Galera's lock is the node's own:
                        # another node's write shows as a write conflict.
                        with self.table.transaction():
                            plaintext = self._merge_latest(session, lock=True)
                            stored = self._attempt(session, plaintext, action)
                        session._settle(stored)  # committed
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
                    if kept is not None:
                        session._restore(kept)
                        time.sleep(random.uniform(0, 0.002 * tries))  # noqa: S311 - jitter
            except BaseException:
                if kept is not None:
                    session._restore(kept)
                raise
        raise _unsettled()

    def _update_once(self, session: Session, plaintext: bytes, columns: bool) -> Stored:
        """Write the payload with one versioned ``UPDATE``; with ``columns``, the user id
        and idle timeout too."""
        stored = session._stored
        assert stored is not None
        now = self.lifetime.seen_now(stored.created)
        user_id, idle, meta = session.user_id, session.idle_timeout, session._meta
        expires = self.lifetime.expiry(stored.created, now, idle)
        # Sealed to the columns this statement leaves in the row: changed ones are written
        # beside it, unchanged ones are the row's (the version proves it).
        sealed = self.envelope.seal(plaintext, stored.handle, user_id, stored.created, idle, meta)
        params: tuple[Any, ...]
        if columns:
            sql = self._sql.update
            params = (sealed, user_id, now, expires, idle, stored.handle, stored.version)
        else:
            sql = self._sql.update_data
            params = (sealed, now, expires, stored.handle, stored.version)
        if self._connection.execute(sql, params).rowcount != 1:
            raise _Conflict
        if signals.session_write.receivers:
            signals.session_write.send(self.sender, sid=stored.handle)
        # Built whole rather than with _replace(), which costs a few µs more per write.
        return Stored(
            stored.public_id,
            stored.handle,
            user_id,
            stored.created,
            now,
            expires,
            idle,
            stored.version + 1,
            plaintext,
            meta,
        )

    def _regenerate_once(self, session: Session, plaintext: bytes) -> Stored:
        """Move the row to a freshly drawn id: one versioned ``UPDATE`` of its key.

        A move, not an INSERT of a new row and a DELETE of the old one, because a concurrent
        ``revoke_user`` must find the session wherever it is (see ``revoke_user``): with a
        new row, a revoke that waited for the old one finds it gone, and the new row is not
        in the snapshot it reads; an updated row is followed. Also one statement, not three.
        """
        stored = session._stored
        assert stored is not None
        now = self.lifetime.seen_now(stored.created)
        old_handle, created = stored.handle, stored.created
        user_id, idle, meta = session.user_id, session.idle_timeout, session._meta
        public_id = ids.new_public_id()
        handle = ids.handle_for(public_id)
        expires = self.lifetime.expiry(created, now, idle)
        # Sealed to the new id and the columns the move leaves in the row (created_at stays).
        if user_id is not None:  # only a user's sessions are revoked by handle
            meta = {**meta, MOVED_FROM: old_handle}
        sealed = self.envelope.seal(plaintext, handle, user_id, created, idle, meta)
        params: tuple[Any, ...] = (
            handle,
            sealed,
            user_id,
            now,
            expires,
            idle,
            old_handle,
            stored.version,
        )
        if self._sql.insert_ignores_conflict:  # these dialects also guard the move in SQL
            params += (handle,)
        try:
            moved = self._connection.execute(self._sql.regenerate, params).rowcount == 1
        except peewee.IntegrityError:
            moved = False  # MySQL: the drawn id is taken (only this statement failed)
        if not moved:
            # Another request saved first, the row is gone, or (never, in practice) the
            # drawn id is taken: re-read under a lock and retry with a new draw.
            raise _Conflict
        if signals.session_write.receivers:
            signals.session_write.send(self.sender, sid=handle)
        if signals.session_delete.receivers:
            signals.session_delete.send(self.sender, sid=old_handle)
        return Stored(public_id, handle, user_id, created, now, expires, idle, 1, plaintext, meta)

    def _merge_latest(self, session: Session, lock: bool = False) -> bytes:
        """Re-read a session that another request saved first and re-apply our changes.

        Returns the merged data to write. With ``lock``, the row stays locked until the
        caller's transaction ends.
        """
        stored = session._stored
        assert stored is not None
        handle = stored.handle
        sql = self._sql.select_for_update if lock else self._sql.select
        row = self._connection.execute(sql, (handle,)).fetchone()
        if row is None:
            security_log.warning(
                "Blocked a save that would have resurrected a session deleted while a "
                "request used it."
            )
            raise SessionInterrupted()
        unpack = self._sql.unpack
        payload, user_id, created, last_seen, expires, idle, version = (
            row if unpack is None else unpack(row)
        )
        try:
            meta, plaintext = self.envelope.open(bytes(payload), handle, user_id, created, idle)
            theirs = serialization.loads(plaintext)
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
        latest = Stored(
            public_id=stored.public_id,
            handle=handle,
            user_id=user_id,
            created=created,
            last_seen=last_seen,
            expires=expires,
            idle=idle,
            version=version,
            plaintext=plaintext,
            meta=meta,
        )
        return self.sized(session._rebase(latest, theirs))

    def touch(self, session: Session, seen: int) -> Outcome:
        """Move \"last seen\" to ``seen``, what :meth:`Lifetime.touch_due
        <storedsession.lifetime.Lifetime.touch_due>` returned."""
        stored = session._stored
        assert stored is not None
        expires = self.lifetime.expiry(stored.created, seen, stored.idle)
        if self._connection.rowcount(self._sql.touch, (seen, expires, stored.handle)) != 1:
            return NOTHING_DONE  # deleted meanwhile: nothing to refresh
        session._settle(
            Stored(
                stored.public_id,
                stored.handle,
                stored.user_id,
                stored.created,
                seen,
                expires,
                stored.idle,
                stored.version,
                stored.plaintext,
                stored.meta,
            )
        )
        return TOUCHED
