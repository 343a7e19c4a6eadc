"""The session table as a Peewee model, built for the caller's database and table name."""

from __future__ import annotations

import re
from typing import Any

import peewee

from .exceptions import ConfigurationError
from .fields import EnvelopeField

DEFAULT_TABLE = "stored_sessions"
_TABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}\Z")


def check_table_name(name: str) -> str:
    """Return ``name`` if it is a plain SQL identifier of at most 48 characters."""
    if not isinstance(name, str) or not _TABLE_NAME.match(name):
        raise ConfigurationError(
            f"The table name {name!r} is not usable: use letters, digits and underscores "
            "(48 at most), starting with a letter or an underscore."
        )
    return name


def is_mariadb(database: peewee.Database) -> bool:
    """Tell a MariaDB server from an Oracle MySQL one, once connected."""
    # peewee's own rule: Oracle MySQL has no 10.x, a 10.x server is MariaDB.
    return bool(getattr(database, "mariadb", False)) or tuple(database.server_version or ()) >= (
        10,
    )


def mysql_user_id_collation(database: peewee.Database) -> str:
    """Return the collation that compares user ids exactly on this MySQL/MariaDB server.

    A binary collation (case and accents count) that is NO PAD (trailing spaces count):
    ``utf8mb4_nopad_bin`` on MariaDB 10.2.2 and later, ``utf8mb4_0900_bin`` on MySQL
    8.0.17 and later. Older servers have none; they get ``utf8mb4_bin`` (PAD SPACE), and
    the store compares the ids it reads back exactly in Python too. Needs the server
    version, which peewee reads at the first connection.
    """
    version = tuple(database.server_version or ())
    if is_mariadb(database):
        return "utf8mb4_nopad_bin" if version >= (10, 2, 2) else "utf8mb4_bin"
    return "utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin"


def mysql_user_id_type(database: peewee.Database) -> str:
    """Return the column type of ``user_id`` on MySQL/MariaDB, whatever the server defaults."""
    return f"VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {mysql_user_id_collation(database)}"


class UserIdField(peewee.CharField):
    """The ``user_id`` column: text of up to 255 characters, compared exactly.

    PostgreSQL and SQLite compare text exactly; MySQL/MariaDB compare it by the column's
    collation, whose server default (``utf8mb4_general_ci``) matches ``'abc123'`` with
    ``'AbC123 '`` and every emoji with every other, and whose latin1 cousin cannot store
    most ids at all. So the column names its character set and collation there.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(255, **kwargs)

    def ddl_datatype(self, ctx: Any) -> Any:
        database = self.model._meta.database
        if isinstance(database, peewee.MySQLDatabase):
            return peewee.SQL(mysql_user_id_type(database))
        return super().ddl_datatype(ctx)


def build_model(database: peewee.Database, table_name: str = DEFAULT_TABLE) -> Any:
    """Return a model of the session table bound to ``database``.

    Times are integer milliseconds since the epoch (UTC), exact on every backend.
    ``sid`` is the SHA-256 of the public id, never the id itself. ``idle_timeout`` is the
    session's own idle timeout in seconds (``NULL``: the store's; ``0``: browser session).
    """

    bound_database, bound_table = database, check_table_name(table_name)

    class StoredSession(peewee.Model):
        sid = peewee.FixedCharField(64, primary_key=True)
        payload = EnvelopeField()
        user_id = UserIdField(null=True, index=True)
        created_at = peewee.BigIntegerField()
        last_seen_at = peewee.BigIntegerField()
        expires_at = peewee.BigIntegerField(null=True, index=True)
        idle_timeout = peewee.IntegerField(null=True)
        version = peewee.BigIntegerField(default=1)

        class Meta:
            database = bound_database
            table_name = bound_table
            # Index names start with the table name, not the class name: PostgreSQL and
            # SQLite name indexes per schema, so two session tables would otherwise share
            # "storedsession_expires_at" and the second would silently get no index.
            legacy_table_names = False

    return StoredSession
