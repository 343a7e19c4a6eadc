"""The exceptions storedsession raises, all under :class:`StoredSessionError`."""

from __future__ import annotations


class StoredSessionError(Exception):
    """Base class of every error storedsession raises."""


class ConfigurationError(StoredSessionError):
    """The store was built with settings that cannot work (keys, sizes, database)."""


class SerializationError(StoredSessionError, TypeError):
    """A session value cannot be stored as JSON without changing it.

    ``key`` is the top-level session key that holds the offending value.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class SessionTooLarge(StoredSessionError):
    """The serialized session is bigger than the store's ``max_size``."""

    def __init__(self, size: int, max_size: int) -> None:
        super().__init__(
            f"The session holds {size} bytes of JSON, more than the store's max_size of "
            f"{max_size} bytes. Keep large data elsewhere and store a reference to it, "
            "or raise max_size."
        )
        self.size = size
        self.max_size = max_size


class SessionInterrupted(StoredSessionError):
    """The session was deleted by another request while this one was using it."""

    def __init__(self) -> None:
        super().__init__(
            "The session was deleted before this request could save it, most likely by a "
            "concurrent logout in another tab or by expiry. Nothing was saved; the user "
            "has to start a new session."
        )


class StoreUnavailable(StoredSessionError):
    """The session database failed or could not be reached; nothing was half-written."""


class SessionConflict(StoreUnavailable):
    """Concurrent writes did not settle within the retries; nothing was saved.

    Other requests kept changing the same session (or the same user's sessions) while this
    one re-read and re-applied its changes; trying again later usually works.
    """


class UnknownKey(StoreUnavailable):
    """Another process rewrote the session under a key this store does not have.

    Nothing was saved. Every process that shares the table needs the same keys: deploy a
    new key everywhere before any process encrypts with it.
    """


class TableMissing(StoreUnavailable):
    """The session table does not exist yet."""

    def __init__(self, table_name: str) -> None:
        super().__init__(
            f"The session table {table_name!r} does not exist. Create it with "
            "store.create_table() or `storedsession init`."
        )
        self.table_name = table_name
