"""A user's sessions: list them, sign out one device, sign out everywhere else."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import peewee

from . import devices, ids, signals
from .aio import offload
from .crypto import DecryptionFailed
from .database import is_sqlite
from .session import Session, storable_text

if TYPE_CHECKING:
    from .crypto import Envelope, NoKeys
    from .database import Connector
    from .sql import Statements

security_log = logging.getLogger("storedsession.security")


@dataclass(frozen=True)
class SessionInfo:
    """One live session of a user, as listed by :meth:`SessionStore.sessions_for`.

    ``user_agent`` is the ``User-Agent`` recorded when the session signed in (cut to 512
    characters, as the client sent it: escape it before showing it), ``device`` a short
    label made from it ("Firefox on Linux"), ``ip`` the address recorded with it when the
    adapter's ``record_ip=True``; each is ``None`` when nothing was recorded.
    """

    handle: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime | None
    user_agent: str | None = None
    device: str | None = None
    ip: str | None = None


#: How often ``revoke_user`` starts again after the server rolled it back.
MAX_DEADLOCK_RETRIES = 4
#: Driver error codes that roll back a whole transaction, which may simply run again:
#: MySQL/MariaDB's deadlock, PostgreSQL's deadlock and serialization failure (the latter
#: under REPEATABLE READ or SERIALIZABLE, where a row moved meanwhile cannot be followed).
_RETRYABLE = {1213, "40P01", "40001"}


def _retryable(exc: peewee.OperationalError) -> bool:
    cause = getattr(exc, "orig", None)  # peewee keeps the driver's own error
    code = getattr(cause, "pgcode", None)  # psycopg
    if code is None and cause is not None and cause.args:
        code = cause.args[0]  # PyMySQL: (errno, message)
    return code in _RETRYABLE


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class UserSessions:
    """The user-facing methods of :class:`~storedsession.SessionStore`."""

    if TYPE_CHECKING:
        model: Any
        database: peewee.Database
        envelope: Envelope | NoKeys
        _connection: Connector
        _sql: Statements

        def now(self) -> int: ...
        def _alive(
            self, created: int, last_seen: int, expires: int | None, idle: int | None, now: int
        ) -> bool: ...
        def _transaction(self) -> Any: ...

    def sessions_for(self, user_id: str | int) -> list[SessionInfo]:
        """List the user's live sessions, most recently seen first.

        Each row is decrypted for its device details; a row that does not open (altered,
        moved, or its columns edited) is left out and logged, as a load would ignore it.
        """
        wanted = str(user_id)
        if not storable_text(wanted):
            return []  # no session can have it (and the driver would fail on it)
        model, now = self.model, self.now()
        query = (
            model.select(
                model.sid,
                model.created_at,
                model.last_seen_at,
                model.expires_at,
                model.idle_timeout,
                model.user_id,
                model.payload,
            )
            .where(model.user_id == wanted)
            .order_by(model.last_seen_at.desc())
            .tuples()
        )
        from .store import LAST_SEEN_LEEWAY_MS  # here: store.py imports this module

        with self._connection():
            rows = list(query)
        listed = []
        for handle, created, seen, expires, idle, owner, payload in rows:
            # Exact in Python too: a MySQL table not yet upgraded matches loosely.
            if owner != wanted or not self._alive(created, seen, expires, idle, now):
                continue
            try:
                if not created <= seen <= now + LAST_SEEN_LEEWAY_MS:  # as load checks it
                    raise DecryptionFailed("its last-seen time was edited")
                metadata, _ = self.envelope.open(bytes(payload), handle, owner, created, idle)
            except DecryptionFailed as exc:
                security_log.warning("Left a session that does not open out of a list: %s.", exc)
                continue
            except (ValueError, TypeError):  # metadata that is not JSON; a column's wrong type
                security_log.warning("Left a session that is not well formed out of a list.")
                continue
            agent = devices.stored(metadata, devices.USER_AGENT)
            listed.append(
                SessionInfo(
                    handle,
                    _utc(created),
                    _utc(seen),
                    None if expires is None else _utc(expires),
                    agent,
                    devices.label(agent),
                    devices.stored(metadata, devices.IP),
                )
            )
        return listed

    def revoke(self, handle: str, user_id: str | int | None = None) -> bool:
        """Delete one session by its handle ("sign out that device").

        With ``user_id``, only if the session belongs to that user. Returns whether a
        session was deleted.
        """
        if not ids.is_handle(handle):
            return False
        if user_id is not None and not storable_text(str(user_id)):
            return False
        model = self.model
        query = model.delete().where(model.sid == handle)
        if user_id is not None:
            query = query.where(model.user_id == str(user_id))
        with self._connection():
            if user_id is not None and not self._owned_by(handle, str(user_id)):
                return False
            deleted = query.execute()
        if deleted and signals.session_delete.receivers:
            signals.session_delete.send(self, sid=handle)
        return bool(deleted)

    def revoke_user(self, user_id: str | int, keep: Session | None = None) -> int:
        """Delete all of the user's sessions but ``keep`` ("sign out everywhere else").

        No session of the user survives, even one that a concurrent ``regenerate()`` is
        moving to a new id (one versioned ``UPDATE`` of the row's ``sid``), because the
        user's rows are read with a lock before they are deleted:

        - PostgreSQL, READ COMMITTED: ``SELECT ... FOR UPDATE`` that meets a row being
          updated waits, then re-checks the WHERE on the row's updated version and locks
          that (EvalPlanQual): the moved row, under its new ``sid``. (Had the move been an
          INSERT plus a DELETE, the wait would end on a deleted row, and the inserted one,
          absent from the statement's snapshot, would survive.)
        - MariaDB/MySQL, REPEATABLE READ: a locking read ignores the transaction's
          snapshot; it waits for the move's locks, then reads the latest committed rows.
          It takes the user_id index before the row, the move the row before the index,
          so the two can deadlock; the server then rolls one back, and this one retries.
        - SQLite: one writer at a time; this transaction (``BEGIN IMMEDIATE``) runs
          wholly before or after the move's statement.

        A move that comes after the lock waits for it, then matches no row (the old
        ``sid`` is gone) and its save raises ``SessionInterrupted``.
        """
        wanted = str(user_id)
        if not storable_text(wanted):
            return 0
        model = self.model
        condition = model.user_id == wanted
        if keep is not None and keep.handle is not None:
            condition &= model.sid != keep.handle
        locking = not is_sqlite(self.database)
        with self._connection():
            for tries in range(MAX_DEADLOCK_RETRIES + 1):
                query = model.select(model.sid, model.user_id).where(condition).tuples()
                try:
                    with self._transaction():
                        rows = query.for_update() if locking else query  # not reusable
                        # Exact, as in sessions_for: a table not yet upgraded matches loosely.
                        handles = [h for h, owner in rows if owner == wanted]
                        # Locked: each of these deletes its row (SQLite: no one else writes).
                        for handle in handles:
                            self.database.execute_sql(self._sql.delete, (handle,))
                    break
                except peewee.OperationalError as exc:
                    if tries == MAX_DEADLOCK_RETRIES or not _retryable(exc):
                        raise
        if signals.session_delete.receivers:  # once committed: a rollback sends none
            for handle in handles:
                signals.session_delete.send(self, sid=handle)
        return len(handles)

    def _owned_by(self, handle: str, user_id: str) -> bool:
        # The DELETE's own filter is exact only once a MySQL table has been upgraded.
        model = self.model
        row = model.select(model.user_id).where(model.sid == handle).tuples().first()
        return row is not None and row[0] == user_id

    asessions_for = offload(sessions_for)
    arevoke = offload(revoke)
    arevoke_user = offload(revoke_user)
