"""A user's sessions: list them, sign out one device, sign out everywhere else.

Reads rows, never a :class:`~storedsession.session.Session`'s state: a listed row is
judged by the store's :class:`~storedsession.lifetime.Lifetime` as a load would judge it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import peewee

from . import devices, ids, signals
from .aio import offload
from .crypto import DecryptionFailed
from .database import describe, is_sqlite, is_write_conflict
from .exceptions import SessionConflict
from .lifetime import Lifetime, utc
from .logs import security_log
from .session import Session, storable_text
from .writes import MAX_CONFLICT_RETRIES, MOVED_FROM

if TYPE_CHECKING:
    from .crypto import Envelope, NoKeys
    from .database import Connector
    from .sql import Statements


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


class UserSessions:
    """The user-facing methods of :class:`~storedsession.SessionStore`."""

    if TYPE_CHECKING:
        model: Any
        database: peewee.Database
        envelope: Envelope | NoKeys
        lifetime: Lifetime
        _connection: Connector
        _sql: Statements

        def _transaction(self) -> Any: ...

    def sessions_for(self, user_id: str | int) -> list[SessionInfo]:
        """List the user's live sessions, most recently seen first.

        Each row is decrypted for its device details; a row that does not open (altered,
        moved, or its columns edited) is left out and logged, as a load would ignore it.
        """
        wanted = str(user_id)
        if not storable_text(wanted):
            return []  # no session can have it (and the driver would fail on it)
        model, lifetime = self.model, self.lifetime
        now = lifetime.now()
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
        with self._connection():
            rows = list(query)
        listed = []
        for handle, created, seen, expires, idle, owner, payload in rows:
            # Exact in Python too: a MySQL table not yet upgraded matches loosely.
            if owner != wanted or not lifetime.alive(created, seen, expires, idle, now):
                continue
            try:
                if not lifetime.plausible(created, seen, now):  # as load checks it
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
                    utc(created),
                    utc(seen),
                    None if expires is None else utc(expires),
                    agent,
                    devices.label(agent),
                    devices.stored(metadata, devices.IP),
                )
            )
        return listed

    def revoke(self, handle: str, user_id: str | int | None = None) -> bool:
        """Delete one session by its handle ("sign out that device").

        With ``user_id``, only if the session belongs to that user. Returns whether a
        session was deleted. A session that ``regenerate()`` moved to a new id meanwhile
        (the revoke waited for the move, or the handle was listed just before it) is
        followed: the moved row names the handle it came from in its sealed metadata.
        """
        if not ids.is_handle(handle):
            return False
        wanted = None if user_id is None else str(user_id)
        if wanted is not None and not storable_text(wanted):
            return False
        model = self.model
        query = model.delete().where(model.sid == handle)
        if wanted is not None:
            query = query.where(model.user_id == wanted)
        with self._connection():
            row = model.select(model.user_id).where(model.sid == handle).tuples().first()
            # Exact in Python: the DELETE's filter is exact only on an upgraded MySQL table.
            if row is not None and wanted is not None and row[0] != wanted:
                return False
            deleted: str | None = handle if query.execute() else None
            owner = wanted if row is None else row[0]
            if deleted is None and owner is not None:
                deleted = self._revoke_moved(handle, owner)
        if deleted is not None and signals.session_delete.receivers:
            signals.session_delete.send(self, sid=deleted)
        return deleted is not None

    def _revoke_moved(self, handle: str, owner: str) -> str | None:
        """Delete the session of ``owner`` that was moved away from ``handle``, if any."""

        def moved(rows: list[tuple[Any, ...]]) -> list[str]:
            for sid, payload, user_id, created, idle in rows:
                try:
                    metadata, _ = self.envelope.open(bytes(payload), sid, user_id, created, idle)
                except (DecryptionFailed, ValueError, TypeError):
                    continue  # not ours to judge here; a load ignores it too
                if metadata.get(MOVED_FROM) == handle:
                    return [sid]
            return []

        model = self.model
        columns = (model.sid, model.payload, model.user_id, model.created_at, model.idle_timeout)
        found = self._delete_locked(model.user_id == owner, columns, owner, moved)
        return found[0] if found else None

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
        columns = (model.sid, model.user_id)
        with self._connection():
            handles = self._delete_locked(
                condition, columns, wanted, lambda rows: [row[0] for row in rows]
            )
        if signals.session_delete.receivers:  # once committed: a rollback sends none
            for handle in handles:
                signals.session_delete.send(self, sid=handle)
        return len(handles)

    def _delete_locked(
        self,
        condition: Any,
        columns: tuple[Any, ...],
        owner: str,
        choose: Callable[[list[tuple[Any, ...]]], list[str]],
    ) -> list[str]:
        """Lock the rows of ``condition``, delete those ``choose`` picks; return their ids.

        ``columns`` start with ``sid``, then ``user_id`` comes among them: only rows whose
        ``user_id`` is exactly ``owner`` reach ``choose`` (a MySQL table not yet upgraded
        matches loosely). The transaction starts again when the server rolls it back for a
        write conflict (:func:`~storedsession.database.is_write_conflict`).
        """
        model = self.model
        position = [c.name for c in columns].index("user_id")
        locking = not is_sqlite(self.database)
        for tries in range(MAX_CONFLICT_RETRIES + 1):
            query = model.select(*columns).where(condition).tuples()  # not reusable
            try:
                with self._transaction():
                    rows = query.for_update() if locking else query
                    chosen = choose([row for row in rows if row[position] == owner])
                    # Locked: each of these deletes its row (SQLite: no one else writes).
                    for handle in chosen:
                        self.database.execute_sql(self._sql.delete, (handle,))
                return chosen
            except Exception as exc:
                # The server rolled it back (MariaDB's deadlock with a concurrent move, a
                # save on another Galera node, PostgreSQL's serialization failure).
                if not is_write_conflict(exc):
                    raise
                if tries == MAX_CONFLICT_RETRIES:
                    raise SessionConflict(
                        "The user's sessions kept changing under this request; nothing was "
                        f"revoked. Try again. The database reported: {describe(exc)}."
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    asessions_for = offload(sessions_for)
    arevoke = offload(revoke)
    arevoke_user = offload(revoke_user)
