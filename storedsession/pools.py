"""Connection pools that do not pay a round trip for every request.

peewee's pools check each connection they hand out with a round trip (``SELECT 1`` on
PostgreSQL, a ping on MySQL), under the pool's lock: one more round trip per request, and
under many threads a queue on that lock (200 clients of a 16-thread WSGI server went from
0.6 s to 19 s). These pools skip the check for a connection that came back moments ago
(it was working then; if the server dropped it since, the request fails once with 503
and the connection is discarded) and keep it for connections that sat idle, which is
where a restarted or timed-out server leaves dead ones.
"""

from __future__ import annotations

import time
from typing import Any

import peewee
from playhouse.pool import PooledMySQLDatabase, PooledPostgresqlDatabase

_IN_TRANSACTION = 1  # MySQL's SERVER_STATUS_IN_TRANS

#: Seconds after its return within which a pooled connection is reused unchecked.
RECENT = 1.0


class _CheckIdleOnly:
    """Pool mixin: check a connection with a round trip only if it sat idle a while."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._returned: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        self._returned[self.conn_key(conn)] = time.monotonic()  # type: ignore[attr-defined]
        super()._close(conn, close_conn)  # type: ignore[misc]

    def _is_closed(self, conn: Any) -> bool:
        returned = self._returned.pop(self.conn_key(conn), None)  # type: ignore[attr-defined]
        if returned is not None and time.monotonic() - returned < RECENT:
            return self._closed_locally(conn)
        return bool(super()._is_closed(conn))  # type: ignore[misc]

    def _closed_locally(self, conn: Any) -> bool:
        raise NotImplementedError


class PostgresPool(_CheckIdleOnly, PooledPostgresqlDatabase):
    """``postgresql+pool://``: psycopg knows locally when it lost the connection."""

    def _closed_locally(self, conn: Any) -> bool:
        return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown


class MySQLPool(_CheckIdleOnly, PooledMySQLDatabase):
    """``mysql+pool://``: PyMySQL knows locally when it lost the connection.

    peewee also rolls back every connection handed back to its MySQL pool (PyMySQL has no
    transaction flag peewee reads), another round trip; the server's status bits say
    whether a transaction is open, and only then is one needed.
    """

    def _closed_locally(self, conn: Any) -> bool:
        return not getattr(conn, "open", False)

    def _can_reuse(self, conn: Any) -> bool:
        status = getattr(conn, "server_status", None)
        if getattr(conn, "open", False) and status is not None and not status & _IN_TRANSACTION:
            return True
        return bool(super()._can_reuse(conn))


POOLS: dict[str, type[peewee.Database]] = {
    "postgres+pool": PostgresPool,
    "postgresql+pool": PostgresPool,
    "mysql+pool": MySQLPool,
}
