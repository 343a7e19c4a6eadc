"""A user's sessions: list them, sign out one device, sign out everywhere else."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import devices, ids, signals
from .aio import offload
from .crypto import DecryptionFailed
from .session import Session

if TYPE_CHECKING:
    from .crypto import Envelope, NoKeys
    from .database import Connector

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


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


class UserSessions:
    """The user-facing methods of :class:`~storedsession.SessionStore`."""

    if TYPE_CHECKING:
        model: Any
        envelope: Envelope | NoKeys
        _connection: Connector

        def now(self) -> int: ...
        def _alive(
            self, created: int, last_seen: int, expires: int | None, idle: int | None, now: int
        ) -> bool: ...
        def _transaction(self) -> Any: ...
        def _delete_handles(self, handles: Sequence[str]) -> int: ...

    def sessions_for(self, user_id: str | int) -> list[SessionInfo]:
        """List the user's live sessions, most recently seen first.

        Each row is decrypted for its device details; a row that does not open (altered,
        moved, or its columns edited) is left out and logged, as a load would ignore it.
        """
        model, now, wanted = self.model, self.now(), str(user_id)
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
        with self._connection(), self._transaction():
            rows = model.select(model.sid, model.user_id).where(condition).tuples()
            handles = [h for h, owner in rows if owner == wanted]  # exact, as in sessions_for
            return self._delete_handles(handles)

    def _owned_by(self, handle: str, user_id: str) -> bool:
        # The DELETE's own filter is exact only once a MySQL table has been upgraded.
        model = self.model
        row = model.select(model.user_id).where(model.sid == handle).tuples().first()
        return row is not None and row[0] == user_id

    asessions_for = offload(sessions_for)
    arevoke = offload(revoke)
    arevoke_user = offload(revoke_user)
