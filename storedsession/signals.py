"""Blinker signals, each sent with ``sid=`` the stored (hashed) id, never the public id.

- ``session_read``: once per database read of a session.
- ``session_write``: once per insert or update of a session.
- ``session_delete``: once per deleted session.
- ``sessions_expired``: once per ``expire()``, with ``count=`` the rows removed.
- ``session_signed_in``: once per save that gives a session a user (a new user id, or
  ``regenerate()`` with one), after it is stored, with ``user_id=`` (text) beside ``sid=``
  the session's new stored id: for "a new sign-in to your account" e-mails.

The sender is the :class:`~storedsession.SessionStore`, or the
:class:`~storedsession.SessionTable` for what a table built alone does.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

session_read = _signals.signal("session-read")
session_write = _signals.signal("session-write")
session_delete = _signals.signal("session-delete")
sessions_expired = _signals.signal("sessions-expired")
session_signed_in = _signals.signal("session-signed-in")
