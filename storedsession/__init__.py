"""storedsession: encrypted, database-backed sessions for Python web apps."""

from .exceptions import (
    ConfigurationError,
    SerializationError,
    SessionConflict,
    SessionInterrupted,
    SessionTooLarge,
    StoredSessionError,
    StoreUnavailable,
    TableMissing,
    UnknownKey,
)
from .keys import generate_key
from .session import Session
from .store import SessionStore
from .table import SessionTable
from .users import SessionInfo
from .writes import Outcome

__version__ = "0.1.0"

__all__ = [
    "ConfigurationError",
    "Outcome",
    "SerializationError",
    "Session",
    "SessionInfo",
    "SessionInterrupted",
    "SessionStore",
    "SessionTable",
    "SessionTooLarge",
    "SessionConflict",
    "StoreUnavailable",
    "StoredSessionError",
    "TableMissing",
    "UnknownKey",
    "__version__",
    "generate_key",
]
