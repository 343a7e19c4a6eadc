"""The session database: built from a URL or given, connected only when needed.

Every database error leaves this module as :class:`StoreUnavailable`, chained to the
driver's error, and never with the password of a database URL in its message.
"""

from __future__ import annotations

import logging
import re
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import peewee
from playhouse import db_url
from playhouse.pool import MaxConnectionsExceeded

from .exceptions import ConfigurationError, StoreUnavailable, TableMissing
from .pools import POOL_DEFAULTS, SCHEMES, SqliteKept

security_log = logging.getLogger("storedsession.security")

#: What a URL-built SQLite database runs with: WAL lets expiry and traffic share the
#: file, the busy timeout makes writers wait for each other instead of failing.
SQLITE_PRAGMAS = (("journal_mode", "wal"), ("synchronous", "normal"))
SQLITE_TIMEOUT = 5.0


def redact(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        netloc = f"{parts.username or ''}:***@{host}"
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<unparseable database URL>"


def open_database(database: str | peewee.Database) -> tuple[peewee.Database, bool]:
    """Return a peewee database for a URL or database object, and whether it is ours.

    A PostgreSQL or MySQL URL gets a fork-safe pool (:data:`POOL_DEFAULTS` unless the
    query says otherwise), an SQLite URL a fork-safe database that keeps one connection
    per thread; other schemes go to peewee's ``db_url`` as they are.
    """
    if isinstance(database, peewee.Database):
        return database, False
    if not isinstance(database, str):
        raise ConfigurationError(
            "The session database must be a peewee Database or a URL such as "
            f"'sqlite:///sessions.db', not {type(database).__name__}."
        )
    scheme = database.partition(":")[0]
    try:
        params = db_url.parse(database, unquote_password=True, unquote_user=True)
        if not params.get("database"):
            raise ValueError("no database name")
        defaults: dict[str, Any] = POOL_DEFAULTS
        if scheme.startswith("sqlite"):
            defaults = {"pragmas": SQLITE_PRAGMAS, "timeout": SQLITE_TIMEOUT}
        database_class = SCHEMES.get(scheme)
        if database_class is None:
            db = db_url.connect(database, unquote_password=True, unquote_user=True, **defaults)
        else:
            db = database_class(**{**defaults, **params})
    except Exception:
        # db_url's own messages quote the whole URL, password included.
        raise ConfigurationError(
            f"Cannot use the database URL {redact(database)!r}: use a scheme peewee's "
            "db_url knows (sqlite, postgresql, mysql, or one of them with +pool) and a "
            "database name, as in 'postgresql://user@host/dbname' or 'sqlite:///file.db'."
        ) from None
    if is_sqlite(db) and db.database in ("", ":memory:"):
        raise ConfigurationError(
            "An in-memory SQLite database lives only as long as one connection, and the "
            "store keeps one per thread: give a file path ('sqlite:///sessions.db'), or "
            "pass a SqliteDatabase object that you keep open."
        )
    if is_mysql(db) and "passwd" in db.connect_params:
        # db_url still spells it "passwd", which PyMySQL deprecates.
        db.connect_params["password"] = db.connect_params.pop("passwd")
    return db, True


def is_mysql(database: peewee.Database) -> bool:
    """Tell whether ``database`` speaks MySQL/MariaDB."""
    return isinstance(database, peewee.MySQLDatabase)


def is_sqlite(database: peewee.Database) -> bool:
    """Tell whether ``database`` is SQLite."""
    return isinstance(database, peewee.SqliteDatabase)


_PASSWORDISH = re.compile(r"(password|passwd)=\S+", re.IGNORECASE)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return _PASSWORDISH.sub(r"\1=***", text)[:300]


def _discard(database: peewee.Database) -> None:
    # The connection may be broken: never hand it back to a pool, never raise here.
    try:
        manual_close = getattr(database, "manual_close", None)
        if manual_close is not None:
            manual_close()
        else:
            database.close()
    except Exception:
        database.dispose()


class Connector:
    """Open a connection only when none is open, and close only what it opened.

    ``with connector():`` wraps one operation; database errors inside it leave as
    :class:`StoreUnavailable` (or :class:`TableMissing`), and a connection it opened is
    discarded rather than handed back to a pool after an error. "Close" hands a pooled
    connection back; the store's own SQLite connection stays open for its thread.
    """

    def __init__(self, database: peewee.Database, table_name: str) -> None:
        self.database = database
        self.table_name = table_name
        self.keep_open = isinstance(database, SqliteKept)

    def __call__(self) -> _Use:
        return _Use(self)

    def fetchone(self, sql: str, params: tuple[Any, ...]) -> Any:
        """Run a query and return its first row, connecting only if need be.

        The hot path's shortcut for ``with connector(): ...``: with a connection already
        open (a request holds one) it costs no guard object.
        """
        database = self.database
        if database.is_closed():
            with _Use(self):
                return database.execute_sql(sql, params).fetchone()
        try:
            return database.execute_sql(sql, params).fetchone()
        except _DATABASE_ERRORS as exc:
            self.fail(exc, opened=False)

    def rowcount(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run a statement and return how many rows it changed, as :meth:`fetchone`."""
        database = self.database
        if database.is_closed():
            with _Use(self):
                return int(database.execute_sql(sql, params).rowcount)
        try:
            return int(database.execute_sql(sql, params).rowcount)
        except _DATABASE_ERRORS as exc:
            self.fail(exc, opened=False)

    def fail(self, exc: BaseException, opened: bool) -> NoReturn:
        """Raise the store's error for a database error (closing what we opened)."""
        missing = isinstance(exc, peewee.ProgrammingError | peewee.OperationalError) and (
            self._table_missing()
        )
        if opened:
            _discard(self.database)
        if missing:
            raise TableMissing(self.table_name) from exc
        security_log.error("Session database error: %s", _describe(exc))
        raise StoreUnavailable(
            f"The session database failed or cannot be reached ({_describe(exc)}). "
            "Nothing was saved; try again when it is back."
        ) from exc

    def _table_missing(self) -> bool:
        try:
            if self.database.in_transaction():
                return False
            return not self.database.table_exists(self.table_name)
        except Exception:
            return False


#: A full pool raises ValueError, not a peewee error: without it here the adapters would
#: answer 500 instead of 503 when every pooled connection is in use.
_DATABASE_ERRORS = (peewee.PeeweeException, OSError, MaxConnectionsExceeded)


class _Use:
    """One use of the connection (a class, not a generator: this is on every request)."""

    __slots__ = ("connector", "opened")

    def __init__(self, connector: Connector) -> None:
        self.connector = connector
        self.opened = False

    def __enter__(self) -> peewee.Database:
        database = self.connector.database
        if database.is_closed():
            try:
                database.connect()
            except _DATABASE_ERRORS as exc:
                self.connector.fail(exc, opened=False)
            self.opened = True
        return database

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: object
    ) -> None:
        opened, self.opened = self.opened, False
        if exc is not None and isinstance(exc, _DATABASE_ERRORS):
            self.connector.fail(exc, opened)
        if opened and not self.connector.keep_open:
            try:
                self.connector.database.close()
            except Exception:
                _discard(self.connector.database)
