"""A user's sessions, read with the keys: list them, sign out one device.

The work of :meth:`SessionStore.sessions_for <storedsession.SessionStore.sessions_for>`
and :meth:`~storedsession.SessionStore.revoke`, as functions of the table, the envelope
and the lifetime. Reads rows, never a :class:`~storedsession.session.Session`'s state: a
listed row is judged by the store's :class:`~storedsession.lifetime.Lifetime` as a load
would judge it. Signing a user out everywhere needs no keys:
:meth:`SessionTable.revoke_user <storedsession.table.SessionTable.revoke_user>`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from . import devices, ids, signals
from .crypto import DecryptionFailed, Envelope
from .lifetime import Lifetime, utc
from .logs import security_log
from .session import storable_text
from .table import SessionTable
from .writes import MOVED_FROM


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


def sessions_for(
    table: SessionTable, envelope: Envelope, lifetime: Lifetime, user_id: str | int
) -> list[SessionInfo]:
    """List the user's live sessions in ``table``, most recently seen first."""
    wanted = str(user_id)
    if not storable_text(wanted):
        return []  # no session can have it (and the driver would fail on it)
    model = table.model
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
    with table.connected():
        rows = list(query)
    listed = []
    for handle, created, seen, expires, idle, owner, payload in rows:
        # Exact in Python too: a MySQL table not yet upgraded matches loosely.
        if owner != wanted or not lifetime.alive(created, seen, expires, idle, now):
            continue
        try:
            if not lifetime.plausible(created, seen, now):  # as load checks it
                raise DecryptionFailed("its last-seen time was edited")
            metadata, _ = envelope.open(bytes(payload), handle, owner, created, idle)
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


def revoke(
    table: SessionTable, envelope: Envelope, handle: str, user_id: str | int | None = None
) -> bool:
    """Delete the session stored under ``handle`` in ``table``, following a move."""
    if not ids.is_handle(handle):
        return False
    wanted = None if user_id is None else str(user_id)
    if wanted is not None and not storable_text(wanted):
        return False
    model = table.model
    query = model.delete().where(model.sid == handle)
    if wanted is not None:
        query = query.where(model.user_id == wanted)
    with table.connected():
        row = model.select(model.user_id).where(model.sid == handle).tuples().first()
        # Exact in Python: the DELETE's filter is exact only on an upgraded MySQL table.
        if row is not None and wanted is not None and row[0] != wanted:
            return False
        deleted: str | None = handle if query.execute() else None
        owner = wanted if row is None else row[0]
        if deleted is None and owner is not None:
            deleted = _revoke_moved(table, envelope, handle, owner)
    if deleted is not None and signals.session_delete.receivers:
        signals.session_delete.send(table.sender, sid=deleted)
    return deleted is not None


def _revoke_moved(table: SessionTable, envelope: Envelope, handle: str, owner: str) -> str | None:
    """Delete the session of ``owner`` that was moved away from ``handle``, if any."""

    def moved(rows: list[tuple[Any, ...]]) -> list[str]:
        for row_handle, payload, user_id, created, idle in rows:
            try:
                metadata, _ = envelope.open(bytes(payload), row_handle, user_id, created, idle)
            except (DecryptionFailed, ValueError, TypeError):
                continue  # not ours to judge here; a load ignores it too
            if metadata.get(MOVED_FROM) == handle:
                return [row_handle]
        return []

    model = table.model
    columns = (model.sid, model.payload, model.user_id, model.created_at, model.idle_timeout)
    found = table.delete_locked(model.user_id == owner, columns, owner, moved)
    return found[0] if found else None
