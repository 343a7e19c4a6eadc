"""A user's sessions: list them, sign out one device, sign out everywhere else."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import ids, signals
from .aio import offload
from .database import is_write_conflict
from .session import Session
from .writes import MAX_CONFLICT_RETRIES

if TYPE_CHECKING:
    from .database import Connector


@dataclass(frozen=True)
class SessionInfo:
    """One live session of a user, as listed by :meth:`SessionStore.sessions_for`."""

    handle: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime | None


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class UserSessions:
    """The user-facing methods of :class:`~storedsession.SessionStore`."""

    if TYPE_CHECKING:
        model: Any
        _connection: Connector

        def now(self) -> int: ...
        def _alive(
            self, created: int, last_seen: int, expires: int | None, idle: int | None, now: int
        ) -> bool: ...
        def _transaction(self) -> Any: ...
        def _delete_handles(self, handles: Sequence[str]) -> int: ...

    def sessions_for(self, user_id: str | int) -> list[SessionInfo]:
        """List the user's live sessions, most recently seen first."""
        model, now, wanted = self.model, self.now(), str(user_id)
        query = (
            model.select(
                model.sid,
                model.created_at,
                model.last_seen_at,
                model.expires_at,
                model.idle_timeout,
                model.user_id,
            )
            .where(model.user_id == wanted)
            .order_by(model.last_seen_at.desc())
            .tuples()
        )
        with self._connection():
            rows = list(query)
        return [
            SessionInfo(
                handle, _utc(created), _utc(seen), None if expires is None else _utc(expires)
            )
            for handle, created, seen, expires, idle, owner in rows
            # Exact in Python too: a MySQL table not yet upgraded matches loosely.
            if owner == wanted and self._alive(created, seen, expires, idle, now)
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
            if user_id is not None and not self._owned_by(handle, str(user_id)):
                return False
            deleted = query.execute()
        if deleted and signals.session_delete.receivers:
            signals.session_delete.send(self, sid=handle)
        return bool(deleted)

    def revoke_user(self, user_id: str | int, keep: Session | None = None) -> int:
        """Delete all of the user's sessions but ``keep`` ("sign out everywhere else")."""
        model, wanted = self.model, str(user_id)
        condition = model.user_id == wanted
        if keep is not None and keep.handle is not None:
            condition &= model.sid != keep.handle
        with self._connection():
            conflicts = 0
            while True:
                try:
                    with self._transaction():
                        rows = model.select(model.sid, model.user_id).where(condition).tuples()
                        handles = [h for h, owner in rows if owner == wanted]  # as sessions_for
                        return self._delete_handles(handles)
                except Exception as exc:
                    # A save of one of them on another Galera node won: read them again.
                    conflicts += 1
                    if conflicts > MAX_CONFLICT_RETRIES or not is_write_conflict(exc):
                        raise

    def _owned_by(self, handle: str, user_id: str) -> bool:
        # The DELETE's own filter is exact only once a MySQL table has been upgraded.
        model = self.model
        row = model.select(model.user_id).where(model.sid == handle).tuples().first()
        return row is not None and row[0] == user_id

    asessions_for = offload(sessions_for)
    arevoke = offload(revoke)
    arevoke_user = offload(revoke_user)
