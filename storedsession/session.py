"""The session object: a JSON mapping that knows whether and how it changed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from operator import attrgetter
from typing import Any

from . import serialization


def _datetime(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def seconds(value: float | timedelta | None, name: str) -> float | None:
    """Normalise a duration given as seconds or a timedelta; ``None`` stays ``None``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} takes seconds or a timedelta, not {type(value).__name__}.")
    if value < 0:
        raise ValueError(f"{name} cannot be negative.")
    return value


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


class Session(MutableMapping[str, Any]):
    """One user's session data, as loaded by :meth:`SessionStore.load`.

    A mutable mapping of JSON values. Changes, including in-place changes to nested
    values, are found by comparing against what was loaded, so a request that changes
    nothing writes nothing. Build sessions with the store, not directly.

    A session built by :meth:`_deferred` loads itself on first use (the adapters hand
    one to every request): each mapping method and property starts with the same guard,
    Django's ``SessionBase._get_session`` being the model.
    """

    __slots__ = (
        "_data",
        "_loaded",
        "_meta",
        "_public_id",
        "_handle",
        "_version",
        "_created",
        "_last_seen",
        "_expires",
        "_user_id",
        "_loaded_user_id",
        "_idle",
        "_loaded_idle",
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
        self._loaded: bytes | None = None
        # The sealed metadata map (device details to come); no public API changes it yet,
        # so it travels unchanged from load to every save of this session.
        self._meta: dict[str, Any] = {}
        self._public_id: str | None = None
        self._handle: str | None = None
        self._version = 0
        self._created: int | None = None
        self._last_seen: int | None = None
        self._expires: int | None = None
        self._user_id: str | None = None
        self._loaded_user_id: str | None = None
        self._idle: int | None = None
        self._loaded_idle: int | None = None
        self._regenerate = False
        # Without a set or delete (_dirty), and without a container value handed out that
        # could have been changed in place (_exposed), the data cannot differ from what
        # was loaded, and no serialization is needed to know it.
        self._dirty = False
        self._exposed = False

    @classmethod
    def _from_row(
        cls,
        data: dict[str, Any],
        plaintext: bytes,
        metadata: dict[str, Any],
        public_id: str,
        handle: str,
        version: int,
        created: int,
        last_seen: int,
        expires: int | None,
        user_id: str | None,
        idle: int | None,
    ) -> Session:
        """Build a stored session in one go (the store calls this on every load)."""
        self = cls.__new__(cls)
        self._data, self._loaded, self._meta = data, plaintext, metadata
        self._public_id, self._handle, self._version = public_id, handle, version
        self._created, self._last_seen, self._expires = created, last_seen, expires
        self._user_id = self._loaded_user_id = user_id
        self._idle = self._loaded_idle = idle
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
        for name, value in zip(_STATE, _state_of(loaded), strict=True):
            setattr(self, name, value)
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
        return self._public_id

    @property
    def handle(self) -> str | None:
        """The stored (hashed) id, safe to show; ``None`` until the session is stored."""
        if self._loader is not None:
            self._load()
        return self._handle

    @property
    def new(self) -> bool:
        """True while the session has not been stored."""
        if self._loader is not None:
            self._load()
        return self._handle is None

    @property
    def modified(self) -> bool:
        """True when data, ``user_id`` or the expiry changed since the session was loaded."""
        if self._loader is not None:
            self._load()
        if self._user_id != self._loaded_user_id or self._idle != self._loaded_idle:
            return True
        if self._loaded is None:
            return bool(self._data)
        if not (self._dirty or self._exposed):
            return False
        try:
            return serialization.dumps(self._data) != self._loaded
        except Exception:
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
        return _datetime(self._created)

    @property
    def last_seen_at(self) -> datetime | None:
        """When the session was last written or touched (UTC), ``None`` while new."""
        if self._loader is not None:
            self._load()
        return _datetime(self._last_seen)

    @property
    def expires_at(self) -> datetime | None:
        """When the stored session stops working (UTC); ``None`` while new or without limit."""
        if self._loader is not None:
            self._load()
        return _datetime(self._expires)

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
        if self._handle is not None:
            self._doomed = self._handle
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


#: What a deferred session copies from the one its loader returns.
_STATE = tuple(name for name in Session.__slots__ if name != "_loader")
_state_of = attrgetter(*_STATE)  # one C call: a quarter faster than getattr in a loop
