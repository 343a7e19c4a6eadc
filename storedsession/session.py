"""The session object: a JSON mapping that knows whether and how it changed.

What the database holds for a session is one immutable :class:`Stored` value, replaced
whole after every write; everything else on a :class:`Session` is what this request
wants to change. :meth:`Session._plan` is the one place that decides what a save must
write; the store's writes return a new :class:`Stored` and the session adopts it with
:meth:`Session._settle`, so no other module assigns a session's state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, NamedTuple

from . import devices, serialization
from .lifetime import seconds, utc
from .merge import reapply

_CONTAINERS = (dict, list)


def storable_text(text: str) -> bool:
    """Tell whether every backend can store ``text``: no NUL, no lone surrogate.

    PostgreSQL refuses a NUL in text; a lone surrogate (``"\\ud800"``, which JSON and
    ``surrogateescape`` decoding can produce) has no UTF-8 form, so no driver can send it.
    """
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Stored(NamedTuple):
    """A session as the database holds it, from its last load or write.

    The columns come in the order the store selects them; ``plaintext`` is the
    serialized data and ``meta`` the sealed metadata map (device details, where a moved
    row came from). A NamedTuple, not a frozen dataclass: one is built on every load,
    and a frozen dataclass costs about 2 µs to build, the whole budget of a SQLite read.
    """

    public_id: str
    handle: str
    user_id: str | None
    created: int
    last_seen: int
    expires: int | None
    idle: int | None
    version: int
    plaintext: bytes
    meta: dict[str, Any]


class Action(Enum):
    """What a save must do, as :meth:`Session._plan` decides it."""

    NOTHING = "nothing"  #: a new empty session, or a stored one touched recently enough
    TOUCH = "touch"  #: unchanged: move "last seen" if ``touch_interval`` has passed
    DATA = "data"  #: the data changed: one versioned UPDATE of the payload
    METADATA = "metadata"  #: ``user_id`` or the idle timeout changed: the UPDATE writes them
    REGENERATE = "regenerate"  #: move the row to a new id (one versioned UPDATE)
    INSERT = "insert"  #: a new session with data or a user: one INSERT
    REPLACE = "replace"  #: an invalidated session given data again: delete, then insert
    DELETE = "delete"  #: an invalidated session left empty: delete its row


# An enum member is looked up through a descriptor (0.25 µs each, measured here on Python
# 3.11); the hot path of every save compares against these module names instead.
NOTHING, TOUCH, DATA, METADATA, REGENERATE, INSERT, REPLACE, DELETE = Action
#: What :meth:`Session._plan` returns: the action, and the serialized data when it had to
#: serialize (what the write stores).
Plan = tuple[Action, bytes | None]
_UNCHANGED: Plan = (TOUCH, None)

#: The actions that write the session's data or columns: what ``modified`` reports.
_WRITES = frozenset({DATA, METADATA, REGENERATE, INSERT, REPLACE})

#: What a save may change in a session, in :meth:`Session._snapshot` order.
_Snapshot = tuple[dict[str, Any], Stored | None, dict[str, Any], str | None, int | None, bool]


class Session(MutableMapping[str, Any]):
    """One user's session data, as loaded by :meth:`SessionStore.load`.

    A mutable mapping of JSON values. Changes, including in-place changes to nested
    values, are found by comparing against what was loaded, so a request that changes
    nothing writes nothing. Build sessions with the store, not directly.

    A session built by :meth:`_deferred` loads itself on first use (the adapters hand
    one to every request): each mapping method, property and storage-contract entry
    (:meth:`_plan`) starts with the same guard, Django's ``SessionBase._get_session``
    being the model.
    """

    __slots__ = (
        "_data",
        "_stored",
        "_meta",
        "_user_id",
        "_idle",
        "_regenerate",
        "_doomed",
        "_invalidated",
        "_dirty",
        "_exposed",
        "_loader",
    )

    def __init__(self) -> None:
        self._loader: Callable[[], Session] | None = None
        self._doomed: str | None = None
        self._invalidated = False
        self._reset()

    def _reset(self) -> None:
        self._data: dict[str, Any] = {}
        self._stored: Stored | None = None
        # The metadata map to seal at the next write: the stored one, with the client's
        # details recorded at sign-in or dropped at sign-out.
        self._meta: dict[str, Any] = {}
        self._user_id: str | None = None
        self._idle: int | None = None
        self._regenerate = False
        # Without a set or delete (_dirty), and without a container value handed out that
        # could have been changed in place (_exposed), the data cannot differ from what
        # was loaded, and no serialization is needed to know it.
        self._dirty = False
        self._exposed = False

    @classmethod
    def _from_row(cls, stored: Stored, data: dict[str, Any]) -> Session:
        """Build a stored session in one go (the store calls this on every load)."""
        self = cls.__new__(cls)
        self._data, self._stored, self._meta = data, stored, stored.meta
        self._user_id, self._idle = stored.user_id, stored.idle
        self._doomed = None
        self._invalidated = self._regenerate = self._dirty = self._exposed = False
        self._loader = None
        return self

    @classmethod
    def _deferred(cls, loader: Callable[[], Session]) -> Session:
        """Return a session that becomes what ``loader()`` returns, when first used."""
        self = cls.__new__(cls)
        self._loader = loader
        return self

    def _load(self) -> None:
        """Call the loader and adopt the loaded session's state; a failure leaves it deferred."""
        assert self._loader is not None
        loaded = self._loader()
        # Attribute stores rather than setattr over __slots__ (a third of the cost), and
        # written out rather than through _snapshot/_restore (2 calls): on every request
        # that reads its session. test_web_core checks that no slot is missed.
        self._data, self._stored, self._meta = loaded._data, loaded._stored, loaded._meta
        self._user_id, self._idle = loaded._user_id, loaded._idle
        self._regenerate, self._doomed = loaded._regenerate, loaded._doomed
        self._invalidated = loaded._invalidated
        self._dirty, self._exposed = loaded._dirty, loaded._exposed
        self._loader = None

    # -- the mapping --------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        if self._loader is not None:
            self._load()
        value = self._data[key]
        if type(value) in _CONTAINERS:
            self._exposed = True
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        if self._loader is not None:
            self._load()
        self._dirty = True
        self._data[key] = value

    def __delitem__(self, key: str) -> None:
        if self._loader is not None:
            self._load()
        del self._data[key]
        self._dirty = True

    def __iter__(self) -> Iterator[str]:
        if self._loader is not None:
            self._load()
        return iter(self._data)

    def __len__(self) -> int:
        if self._loader is not None:
            self._load()
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        if self._loader is not None:
            self._load()
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        if self._loader is not None:
            self._load()
        value = self._data.get(key, default)
        if type(value) in _CONTAINERS:
            self._exposed = True
        return value

    def __repr__(self) -> str:
        # Neither the id nor the values: a repr ends up in logs and tracebacks, and
        # showing one must not query the database.
        if self._loader is not None:
            return "<Session, not loaded yet>"
        state = "new" if self.new else "stored"
        return f"<Session {state}, {len(self._data)} keys>"

    # -- identity and state -------------------------------------------------------
    @property
    def id(self) -> str | None:
        """The public id to put in the cookie; ``None`` until the session is stored."""
        if self._loader is not None:
            self._load()
        stored = self._stored
        return None if stored is None else stored.public_id

    @property
    def handle(self) -> str | None:
        """The stored (hashed) id, safe to show; ``None`` until the session is stored."""
        if self._loader is not None:
            self._load()
        stored = self._stored
        return None if stored is None else stored.handle

    @property
    def new(self) -> bool:
        """True while the session has not been stored."""
        if self._loader is not None:
            self._load()
        return self._stored is None

    @property
    def modified(self) -> bool:
        """True when a save would write the session: its data, ``user_id`` or expiry
        changed since it was loaded, or :meth:`regenerate` asked for a new id."""
        if self._loader is not None:
            self._load()
        try:
            return self._plan()[0] in _WRITES
        except Exception:  # not serializable: the save will say why
            return True

    @property
    def user_id(self) -> str | None:
        """The user this session belongs to, as text; settable with a str or an int."""
        if self._loader is not None:
            self._load()
        return self._user_id

    @user_id.setter
    def user_id(self, value: str | int | None) -> None:
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise TypeError(f"user_id takes a str or an int, not {type(value).__name__}.")
            value = str(value)
            if not value or len(value) > 255:
                raise ValueError("user_id must be 1 to 255 characters long.")
            # Refused here, before any SQL, the same on every backend: the database
            # would fail at save (PostgreSQL, or every driver for a surrogate).
            if not storable_text(value):
                raise ValueError(
                    "user_id cannot hold a NUL character or a lone surrogate: "
                    "no database can store it."
                )
        if self._loader is not None:
            self._load()
        self._user_id = value

    @property
    def created_at(self) -> datetime | None:
        """When the session was first stored (UTC), ``None`` while new."""
        if self._loader is not None:
            self._load()
        stored = self._stored
        return None if stored is None else utc(stored.created)

    @property
    def last_seen_at(self) -> datetime | None:
        """When the session was last written or touched (UTC), ``None`` while new."""
        if self._loader is not None:
            self._load()
        stored = self._stored
        return None if stored is None else utc(stored.last_seen)

    @property
    def expires_at(self) -> datetime | None:
        """When the stored session stops working (UTC); ``None`` while new or without limit."""
        if self._loader is not None:
            self._load()
        stored = self._stored
        if stored is None or stored.expires is None:
            return None
        return utc(stored.expires)

    @property
    def idle_timeout(self) -> int | None:
        """This session's own idle timeout in seconds (0: browser session), or ``None``."""
        if self._loader is not None:
            self._load()
        return self._idle

    # -- lifecycle ----------------------------------------------------------------
    def regenerate(self) -> None:
        """Give the session a new id at the next save, keeping its data (call it at login)."""
        if self._loader is not None:
            self._load()
        self._regenerate = True

    def invalidate(self) -> None:
        """Clear the session and delete its stored row at the next save (logout)."""
        if self._loader is not None:
            self._load()
        if self._stored is not None:
            self._doomed = self._stored.handle
        self._invalidated = True
        self._reset()

    def set_expiry(self, value: float | timedelta | None) -> None:
        """Set this session's idle timeout: seconds, a timedelta, ``0`` or ``None``.

        ``0`` makes the cookie a browser-session cookie (no ``Max-Age``) while the server
        applies the store's idle timeout; ``None`` returns to the store's default.
        """
        duration = seconds(value, "set_expiry()")
        if self._loader is not None:
            self._load()
        self._idle = None if duration is None else math.ceil(duration)

    # -- the storage contract: what the store calls, and nothing else assigns ------
    def _plan(self) -> Plan:
        """Decide what a save must do, with the serialized data when it had to serialize.

        Serializes at most once, and not at all for a stored session that had no value
        set or deleted and handed out no container (the hot path of a request that only
        reads).
        """
        if self._loader is not None:
            self._load()
        stored = self._stored
        if stored is None:
            if not self._data and self._user_id is None:
                return (NOTHING if self._doomed is None else DELETE), None
            plaintext = serialization.dumps(self._data)
            return (INSERT if self._doomed is None else REPLACE), plaintext
        columns = self._user_id != stored.user_id or self._idle != stored.idle
        if not (self._regenerate or columns or self._dirty or self._exposed):
            return _UNCHANGED
        plaintext = serialization.dumps(self._data)
        if self._regenerate:
            return REGENERATE, plaintext
        if columns:
            return METADATA, plaintext
        if plaintext != stored.plaintext:
            return DATA, plaintext
        return TOUCH, plaintext

    def _record_client(self, client: devices.Client | None) -> bool:
        """Ready the metadata map for a write; return whether the write signs the session in.

        A save signs in when it gives the session a user: a new user id, or
        ``regenerate()`` with one. It records ``client``'s details (in place of earlier
        ones); a save without a user keeps none.
        """
        user, stored = self._user_id, self._stored
        if user is None:
            self._forget_client_if_signed_out()
            return False
        if stored is not None and not self._regenerate and user == stored.user_id:
            return False
        if client is not None:
            self._meta = devices.recorded(self._meta, client)
        return True

    def _forget_client_if_signed_out(self) -> None:
        """A session without a user keeps no client's details (it was signed out)."""
        if self._user_id is None and self._meta:
            self._meta = devices.without_client(self._meta)

    def _settle(self, stored: Stored) -> None:
        """Adopt what a write or a touch left in the database."""
        self._stored, self._meta = stored, stored.meta
        self._regenerate = False
        self._doomed = None

    def _rebase(self, latest: Stored, theirs: dict[str, Any]) -> bytes:
        """Re-apply this request's changes onto ``latest``, which another request saved.

        ``theirs`` is the data of ``latest``. Returns the merged data serialized, which
        is what the retried write stores. The user id and idle timeout are ours if this
        request changed them, else theirs; the metadata map goes with the user id (a
        request that set it, or regenerated a signed-in session, keeps its own).
        """
        stored = self._stored
        assert stored is not None
        mine_user = self._user_id
        user_changed = mine_user != stored.user_id
        if not user_changed:
            self._user_id = latest.user_id
        if self._idle == stored.idle:
            self._idle = latest.idle
        if not (user_changed or (self._regenerate and mine_user is not None)):
            self._meta = latest.meta
        self._forget_client_if_signed_out()
        self._data = reapply(serialization.loads(stored.plaintext), self._data, theirs)
        self._stored = latest
        return serialization.dumps(self._data)

    def _snapshot(self) -> _Snapshot:
        """Return what a save may change, for :meth:`_restore` after a rolled-back write."""
        return (self._data, self._stored, self._meta, self._user_id, self._idle, self._regenerate)

    def _restore(self, snapshot: _Snapshot) -> None:
        """Put back what :meth:`_snapshot` took: a rolled-back write left nothing behind."""
        (
            self._data,
            self._stored,
            self._meta,
            self._user_id,
            self._idle,
            self._regenerate,
        ) = snapshot

    def _handles(self) -> list[str]:
        """Return the stored ids that deleting this session removes."""
        return [h for h in (self.handle, self._doomed) if h is not None]

    def _deleted(self) -> None:
        """Become new and empty after the store deleted this session's rows."""
        self._reset()
        self._doomed = None
        self._invalidated = True
