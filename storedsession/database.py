"""The session database: built from a URL or given, connected only when needed.

Every database error leaves this module as :class:`StoreUnavailable`, chained to the
driver's error, and never with the password of a database URL in its message.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
from typing import Any, NoReturn
from urllib.parse import unquote_plus, urlsplit

import peewee
from playhouse import db_url
from playhouse.pool import MaxConnectionsExceeded

from .exceptions import ConfigurationError, StoreUnavailable, TableMissing
from .pools import POOL_DEFAULTS, SCHEMES, SqliteKept

#: What a URL-built SQLite database runs with: WAL lets expiry and traffic share the
#: file, the busy timeout makes writers wait for each other instead of failing.
SQLITE_PRAGMAS = (("journal_mode", "wal"), ("synchronous", "normal"))
SQLITE_TIMEOUT = 5.0


#: Query parameters whose values are never shown: passwords, tokens, keys and the like.
_SECRET_NAME = re.compile(r"pass|secret|token|key|pwd|auth|cred", re.IGNORECASE)

#: What is shown instead of a URL that could not be shown without risking its password.
HIDDEN_URL = "(URL not shown: it could not be shown without risking its password)"


def redact(url: str) -> str:
    """Return ``url`` in a form that is safe to show, or :data:`HIDDEN_URL`.

    The shown form is rebuilt from the parsed parts, never echoed: the password becomes
    ``***``, and so does the value of every query parameter whose name contains ``pass``,
    ``secret``, ``token``, ``key`` (or ``pwd``, ``auth``, ``cred``). A URL is not shown at
    all when it does not parse as ``scheme://...``, or has a ``#``, a ``;``, more than one
    ``@`` or an ``@`` after its host part: a password with an unescaped ``/``, ``?``,
    ``#`` or ``@`` lands in the path, the query or the fragment, where no rule can find it.
    """
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a port that is not a number
        if (
            not parts.scheme
            or url[: len(parts.scheme) + 3].lower() != parts.scheme + "://"
            or "#" in url
            or ";" in url
            or url.count("@") > 1
            or ("@" in url and "@" not in parts.netloc)
        ):
            return HIDDEN_URL
        netloc = ""
        if "@" in parts.netloc:
            user = parts.username or ""
            netloc = f"{user}@" if parts.password is None else f"{user}:***@"
        host = parts.hostname or ""
        netloc += f"[{host}]" if ":" in host else host
        if port is not None:
            netloc += f":{port}"
        shown = f"{parts.scheme}://{netloc}{parts.path}"
        if parts.query:
            shown += "?" + "&".join(_masked(piece) for piece in parts.query.split("&"))
        return shown
    except (ValueError, TypeError, AttributeError):
        return HIDDEN_URL


def _masked(parameter: str) -> str:
    name = parameter.partition("=")[0]
    return f"{name}=***" if _SECRET_NAME.search(unquote_plus(name)) else parameter


def _check_url_form(url: str) -> None:
    """Refuse a URL that does not say what it seems to, before it reaches a driver."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return  # db_url refuses it too, with the generic message
    if url[: len(parts.scheme) + 3].lower() != parts.scheme + "://":
        raise ConfigurationError(
            f"Cannot use the database URL {redact(url)}: write it as "
            "'postgresql://user:password@host/dbname' or 'sqlite:///file.db'."
        )
    if not parts.scheme.startswith("sqlite") and "@" in parts.path + parts.query + parts.fragment:
        # Parsed as written, "postgresql://app:1234/s3cret@db/x" is host "app", port 1234
        # and database "s3cret@db/x": the password would go to another host as a name.
        raise ConfigurationError(
            "Cannot use the database URL (not shown, to keep its password private): it has "
            "an '@' after its host part, which happens when a password holds a '/', '?', "
            "'#' or '@'; percent-encode those characters in the password (%2F, %3F, %23, "
            "%40), as in 'postgresql://user:pa%2Fss@host/dbname'."
        )


def _create_owner_only(path: str) -> None:
    """Create the SQLite file ``path`` readable by its owner only, if it does not exist.

    SQLite would create it with the umask's mode (often world-readable), and gives its
    ``-wal`` and ``-shm`` files the mode of the database file. An existing file keeps its
    mode; a path that cannot be created is left for the connection to report.
    """
    if path in ("", ":memory:") or path.startswith("file:"):
        return
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


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
    _check_url_form(database)
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
            f"Cannot use the database URL {redact(database)}: use a scheme peewee's "
            "db_url knows (sqlite, postgresql, mysql, or one of them with +pool) and a "
            "database name, as in 'postgresql://user@host/dbname' or 'sqlite:///file.db'."
        ) from None
    if is_sqlite(db) and db.database in ("", ":memory:"):
        raise ConfigurationError(
            "An in-memory SQLite database lives only as long as one connection, and the "
            "store keeps one per thread: give a file path ('sqlite:///sessions.db'), or "
            "pass a SqliteDatabase object that you keep open."
        )
    if is_sqlite(db):
        _create_owner_only(str(db.database))
    if is_mysql(db) and "passwd" in db.connect_params:
        # db_url still spells it "passwd", which PyMySQL deprecates.
        db.connect_params["password"] = db.connect_params.pop("passwd")
    if is_mysql(db):
        _check_pymysql_options(db.connect_params)
    return db, True


def _check_pymysql_options(options: dict[str, Any]) -> None:
    """Refuse query parameters PyMySQL does not take, now rather than at every connect.

    PyMySQL raises ``TypeError`` for them when it connects, which no request could turn
    into anything but a 500 (psycopg2 reports its own as a database error, a 503).
    """
    try:
        from pymysql.connections import Connection
    except ImportError:
        return  # another driver: it reports its own options
    unknown = sorted(set(options) - set(inspect.signature(Connection).parameters))
    if unknown:
        raise ConfigurationError(
            f"The database URL's query has {', '.join(map(repr, unknown))}, which PyMySQL "
            "does not take as a connection option; pool options are max_connections, "
            "stale_timeout and timeout."
        )


def is_mysql(database: peewee.Database) -> bool:
    """Tell whether ``database`` speaks MySQL/MariaDB."""
    return isinstance(database, peewee.MySQLDatabase)


def is_sqlite(database: peewee.Database) -> bool:
    """Tell whether ``database`` is SQLite."""
    return isinstance(database, peewee.SqliteDatabase)


#: MySQL/MariaDB error codes of a lost race: a deadlock (1213), which is also how Galera
#: reports a transaction that failed certification at COMMIT or was aborted by another
#: node's write, and a lock wait timeout (1205), also Galera's causal wait running out.
_MYSQL_CONFLICTS = frozenset({1205, 1213})
#: PostgreSQL's deadlock_detected and serialization_failure.
_POSTGRES_CONFLICTS = frozenset({"40P01", "40001"})


def is_write_conflict(exc: BaseException) -> bool:
    """Tell whether a database error means the work lost a race and may simply be redone.

    The server rolled back the statement (a deadlock: the whole transaction) so that
    another transaction could go on; nothing is wrong with the database or the
    connection. Takes peewee's error or the driver's own; anything else is not one.
    """
    driver = getattr(exc, "orig", exc)  # peewee keeps the driver's error as .orig
    if not any(cls.__name__ == "DatabaseError" for cls in type(driver).__mro__):
        return False  # not a DB-API DatabaseError (peewee's has the same name)
    pgcode = getattr(driver, "pgcode", None)
    if pgcode is not None:
        return pgcode in _POSTGRES_CONFLICTS
    code = driver.args[0] if driver.args else None
    return type(code) is int and code in _MYSQL_CONFLICTS


_PASSWORDISH = re.compile(r"(password|passwd)=\S+", re.IGNORECASE)


def describe(exc: BaseException) -> str:
    """The first line of a driver's error, without anything that looks like a password."""
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


#: peewee's translation of a driver's errors into its own (``peewee.IntegrityError`` ...).
_TRANSLATE_ERRORS = getattr(peewee, "__exception_wrapper__")  # noqa: B009 - a dunder name
_PEEWEE_LOG = logging.getLogger("peewee")


def _generic_execute(database: peewee.Database) -> bool:
    """Tell whether ``database`` runs statements as peewee's ``Database`` does.

    Then :meth:`Connector.execute` may run the store's statements on the driver's cursor
    itself. A subclass with its own ``execute_sql`` or ``cursor`` (a queue, a reconnect
    mixin, a named cursor) is left to run them its way.
    """
    cls, base = type(database), peewee.Database
    return (
        cls.execute_sql is base.execute_sql
        and getattr(cls, "_execute_cursor", None) is getattr(base, "_execute_cursor", None)
        and cls.cursor is base.cursor
    )


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
        self._direct = _generic_execute(database)

    def __call__(self) -> _Use:
        return _Use(self)

    def execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        """Run one statement on the open connection and return the driver's cursor.

        What ``database.execute_sql`` does, in two Python calls instead of ten (7,500
        instructions less per statement, 5% of a session read on SQLite, by
        ``python -m bench.instructions``): the driver's cursor runs the statement, and
        its errors leave as peewee's. Through ``execute_sql`` still when the database is
        not peewee's generic kind, has query hooks, or peewee's log shows queries.
        """
        database = self.database
        if (
            self._direct
            and not database.query_hooks
            and not _PEEWEE_LOG.isEnabledFor(logging.DEBUG)
        ):
            try:
                cursor = database._state.conn.cursor()  # type: ignore[attr-defined]
                cursor.execute(sql, params)
            except Exception:
                with _TRANSLATE_ERRORS:  # raises peewee's error for a driver's one
                    raise
                raise  # pragma: no cover - the wrapper re-raised what it does not map
            return cursor
        return database.execute_sql(sql, params)

    def fetchone(self, sql: str, params: tuple[Any, ...]) -> Any:
        """Run a query and return its first row, connecting only if need be.

        The hot path's shortcut for ``with connector(): ...``: it asks once whether a
        connection is open and builds no guard object.
        """
        if not self.database.is_closed():
            try:
                return self.execute(sql, params).fetchone()
            except _DATABASE_ERRORS as exc:
                self.fail(exc, opened=False)
        self.open()
        try:
            row = self.execute(sql, params).fetchone()
        except BaseException as exc:
            self.release(exc)
            raise
        self.release(None)
        return row

    def rowcount(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run a statement and return how many rows it changed, as :meth:`fetchone`."""
        if not self.database.is_closed():
            try:
                return int(self.execute(sql, params).rowcount)
            except _DATABASE_ERRORS as exc:
                self.fail(exc, opened=False)
        self.open()
        try:
            count = int(self.execute(sql, params).rowcount)
        except BaseException as exc:
            self.release(exc)
            raise
        self.release(None)
        return count

    def open(self) -> None:
        """Connect (the caller saw no open connection); a failure is the store's error."""
        try:
            self.database.connect()
        except _DATABASE_ERRORS as exc:
            self.fail(exc, opened=False)

    def release(self, exc: BaseException | None) -> None:
        """End a use that :meth:`open` began: hand the connection back, or discard it.

        A database error ``exc`` discards the connection and leaves as the store's error;
        another exception leaves the connection to be handed back, for the caller to
        re-raise.
        """
        if exc is not None and isinstance(exc, _DATABASE_ERRORS):
            self.fail(exc, opened=True)
        if not self.keep_open:
            try:
                self.database.close()
            except Exception:
                _discard(self.database)

    def fail(self, exc: BaseException, opened: bool) -> NoReturn:
        """Raise the store's error for a database error (closing what we opened)."""
        missing = isinstance(exc, peewee.ProgrammingError | peewee.OperationalError) and (
            self._table_missing()
        )
        if opened:
            _discard(self.database)
        if missing:
            raise TableMissing(self.table_name) from exc
        raise StoreUnavailable(
            f"The session database failed or cannot be reached ({describe(exc)}). "
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
        connector = self.connector
        if connector.database.is_closed():
            connector.open()
            self.opened = True
        return connector.database

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: object
    ) -> None:
        if self.opened:
            self.opened = False
            self.connector.release(exc)
        elif exc is not None and isinstance(exc, _DATABASE_ERRORS):
            self.connector.fail(exc, opened=False)
