"""The Peewee field of the encrypted payload column."""

from __future__ import annotations

from typing import Any

import peewee


class EnvelopeField(peewee.BlobField):
    """A binary column holding one sealed payload envelope.

    Peewee's ``db_value``/``python_value`` see a value but not its row, while the
    envelope is bound to the row's stored id; so this field only carries sealed bytes
    (sealing and opening happen in the store, where the id is known) and a value that
    does not decrypt can never make a query raise. On MySQL/MariaDB the column is a
    ``LONGBLOB``: the plain 64 KiB ``BLOB`` would be silently truncated by a non-strict
    server.
    """

    def ddl_datatype(self, ctx: Any) -> Any:
        if isinstance(self.model._meta.database, peewee.MySQLDatabase):
            return peewee.SQL("LONGBLOB")
        return super().ddl_datatype(ctx)

    def python_value(self, value: Any) -> bytes | None:
        if value is None or isinstance(value, bytes):
            return value
        return bytes(value)  # memoryview (psycopg2) or bytearray
