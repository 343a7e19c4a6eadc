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
        user_id = peewee.CharField(255, null=True, index=True)
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
