"""The databases a URL builds: kept connections that a forked worker never inherits.

A store built from a URL owns its connections and keeps them, because opening one costs
about 4 ms on PostgreSQL and 33 ms on MariaDB here, against 0.3 ms for a whole session
read. PostgreSQL and MySQL URLs get a pool whether or not they say ``+pool``; SQLite keeps
one open connection per thread (each open re-runs the pragmas).

peewee's pools check each connection they hand out with a round trip (``SELECT 1`` on
PostgreSQL, a ping on MySQL), under the pool's lock: one more round trip per request, and
under many threads a queue on that lock (200 clients of a 16-thread WSGI server went from
0.6 s to 19 s). These pools skip the check for a connection that came back moments ago
(it was working then; if the server dropped it since, the request fails once with 503
and the connection is discarded) and keep it for connections that sat idle, which is
where a restarted or timed-out server leaves dead ones.

Every class here is fork-safe (see :mod:`storedsession.forks`): in a forked child the
first use finds a new generation, abandons what was inherited without closing it, and
starts again with empty pool lists, fresh locks and fresh thread-local state.
"""

from __future__ import annotations

import heapq
import operator
import threading
import time
from collections.abc import Callable
from typing import Any

import peewee
from playhouse.pool import PoolConnection, PooledMySQLDatabase, PooledPostgresqlDatabase

from . import forks

_IN_TRANSACTION = 1  # MySQL's SERVER_STATUS_IN_TRANS
_new_tuple = tuple.__new__

#: Seconds after its return within which a pooled connection is reused unchecked.
RECENT = 1.0

#: A pool's settings when the URL's query does not give them (API.md, "Fast by default").
POOL_DEFAULTS = {"max_connections": 32, "stale_timeout": 300, "timeout": 10}

#: What a Galera node waits for before running a statement (``wsrep_sync_wait``): until it
#: has applied every write the cluster committed before, for reads and BEGIN (1), so that
#: a load never finds a session a logout on another node deleted, and for UPDATE and
#: DELETE (2), so that a logout or revoke never misses a row another node just inserted.
#: INSERTs (4) need no wait: a new session's id is fresh.
GALERA_SYNC_WAIT = 1 | 2


class _ForkSafe:
    """Database mixin: forget, never close, what a forked child inherited."""

    _state: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._generation = forks.generation()
        super().__init__(*args, **kwargs)

    def _forget_inherited(self) -> None:
        forks.abandon(self._state.conn)
        self._state = peewee._ConnectionLocal()
        self._lock = threading.Lock()
        self._generation = forks.generation()

    def _check_fork(self) -> bool:
        """Forget what a forked child inherited; return whether it did."""
        # A fork that bypasses os.fork's hooks (uWSGI's prefork) shows only here.
        if self._generation != forks.generation():
            self._forget_inherited()
            return True
        return False

    def is_closed(self) -> bool:
        # Closed: nothing inherited to forget (connect() checks for a fork). Open: asked
        # before each statement, so a child's first use forgets the parent's connection,
        # which leaves this one closed.
        return bool(self._state.closed) or self._check_fork()

    def connect(self, reuse_if_open: bool = False) -> bool:
        self._check_fork()
        return bool(super().connect(reuse_if_open))  # type: ignore[misc]

    def close(self) -> bool:
        self._check_fork()
        return bool(super().close())  # type: ignore[misc]


class SqliteKept(_ForkSafe, peewee.SqliteDatabase):
    """``sqlite://``: one connection per thread, opened once and kept (see the store)."""


class _CheckIdleOnly(_ForkSafe):
    """Pool mixin: check a connection with a round trip only if it sat idle a while.

    A connection handed back idle (no transaction open, as the driver knows locally) is
    marked with the moment until which it may be handed out again unchecked: ``RECENT``
    seconds after its return, or sooner if its ``stale_timeout`` ends first. A checkout
    that finds such a connection at the head of the pool takes it, and a return of an idle
    connection puts it back, each under the pool's lock alone, without peewee's generic
    ``connect()``/``close()``; everything else (an empty pool, a connection that sat idle,
    a stale one, an open transaction, a full pool's wait) goes through peewee's own pool.
    Both paths keep peewee's lists (``_connections``, ``_in_use``) as peewee keeps them,
    so that ``max_connections``, ``close_all()`` and the waits work as they always did.
    """

    _connections: list[Any]
    _in_use: dict[int, Any]
    _heap_counter: int
    _pool_lock: Any
    _pool_available: threading.Condition
    _stale_timeout: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: id of a returned connection -> monotonic time until which it is reused unchecked
        self._unchecked_until: dict[int, float] = {}
        super().__init__(*args, **kwargs)

    def _forget_inherited(self) -> None:
        forks.abandon(*(conn for _, _, conn in self._connections))
        forks.abandon(*(entry.connection for entry in self._in_use.values()))
        self._pool_lock = threading.RLock()
        self._pool_available = threading.Condition(self._pool_lock)
        self._connections, self._in_use, self._unchecked_until = [], {}, {}
        super()._forget_inherited()

    def connect(self, reuse_if_open: bool = False) -> bool:
        self._check_fork()
        # This thread's attributes of the thread-local state as one dict: each attribute
        # read through the threading.local costs 600 instructions, a dict item 40.
        state = vars(self._state)
        if state["closed"] and self._connections:
            conn = self._take_recent()
            if conn is not None:
                # Every close left ctx, transactions and commit_callbacks empty (peewee's
                # reset() or _give_back's condition), so these two are all set_connection
                # would change.
                state["conn"], state["closed"] = conn, False
                return True
        return super().connect(reuse_if_open)

    def close(self) -> bool:
        self._check_fork()
        state = vars(self._state)  # as in connect
        if (
            not state["closed"]
            and not (state["transactions"] or state["ctx"] or state["commit_callbacks"])
            and self._give_back(state["conn"])
        ):
            state["conn"], state["closed"] = None, True
            return True
        return super().close()

    def _take_recent(self) -> Any:
        """Take the pool's head connection if it came back moments ago, else None."""
        with self._pool_lock:
            if not self._connections:
                return None
            timestamp, _, conn = self._connections[0]
            key = id(conn)
            until = self._unchecked_until.get(key)
            if until is None or time.monotonic() >= until or not self._idle(conn):
                return None  # peewee's _connect checks it (round trip) or discards it
            heapq.heappop(self._connections)
            del self._unchecked_until[key]
            # tuple.__new__ rather than the namedtuple's own __new__, a Python function
            # (1,700 instructions less a checkout).
            self._in_use[key] = _new_tuple(PoolConnection, (timestamp, conn, time.time()))
            return conn

    def _give_back(self, conn: Any) -> bool:
        """Put an idle connection that is not stale back in the pool; False if not done."""
        if not self._idle(conn):
            return False  # peewee's _close rolls back, or discards
        key = id(conn)
        with self._pool_lock:
            entry = self._in_use.get(key)
            if entry is None:
                return False
            if not self._mark(key, entry.timestamp):
                return False  # stale: peewee's _close closes it
            del self._in_use[key]
            self._heap_counter += 1
            heapq.heappush(self._connections, (entry.timestamp, self._heap_counter, conn))
            # A thread may wait for a free connection (peewee's connect() when the pool
            # is full); the waiters are read under the condition's own lock, held here.
            if self._pool_available._waiters:  # type: ignore[attr-defined]
                self._pool_available.notify()
        return True

    def _mark(self, key: int, timestamp: float) -> bool:
        """Mark a returned connection as reusable unchecked; False if it is stale.

        It is reusable for ``RECENT`` seconds, or until it goes stale if that is sooner:
        ``timestamp`` is when it was opened, by ``time.time()`` as peewee counts it.
        """
        now = time.monotonic()
        stale = self._stale_timeout
        if stale:
            left = timestamp + stale - time.time()
            if left <= 0:
                self._unchecked_until.pop(key, None)  # closed: no mark for its address
                return False
            if left < RECENT:
                self._unchecked_until[key] = now + left
                return True
        self._unchecked_until[key] = now + RECENT
        return True

    def close_all(self) -> None:
        self._check_fork()
        super().close_all()  # type: ignore[misc]

    def _close(self, conn: Any, close_conn: bool = False) -> None:
        key = self.conn_key(conn)  # type: ignore[attr-defined]
        entry = self._in_use.get(key)
        if entry is None or close_conn or not self._mark(key, entry.timestamp):
            self._unchecked_until.pop(key, None)  # closed, not kept
        super()._close(conn, close_conn)  # type: ignore[misc]

    def _is_closed(self, conn: Any) -> bool:
        until = self._unchecked_until.pop(self.conn_key(conn), None)  # type: ignore[attr-defined]
        if until is not None and time.monotonic() < until:
            return self._closed_locally(conn)
        return bool(super()._is_closed(conn))  # type: ignore[misc]

    def _closed_locally(self, conn: Any) -> bool:
        """Tell, without a round trip, that the driver knows ``conn`` is lost."""
        raise NotImplementedError

    def _idle(self, conn: Any) -> bool:
        """Tell, without a round trip, that ``conn`` is open with no transaction."""
        raise NotImplementedError


class PostgresPool(_CheckIdleOnly, PooledPostgresqlDatabase):
    """PostgreSQL URLs: psycopg knows locally when it lost the connection."""

    _adapter: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        adapter = self._adapter
        # psycopg2's status asked directly: the adapter's method is one more Python call
        # on every checkout and return.
        self._txn_status: Callable[[Any], int] = (
            operator.methodcaller("get_transaction_status")
            if isinstance(adapter, peewee.Psycopg2Adapter)
            else adapter.txn_status
        )
        self._txn_idle = adapter.txn_idle

    def _closed_locally(self, conn: Any) -> bool:
        return bool(conn.closed) or self._adapter.txn_status(conn) == self._adapter.txn_unknown

    def _idle(self, conn: Any) -> bool:
        return not conn.closed and self._txn_status(conn) == self._txn_idle


class _CausalOnGalera(peewee.MySQLDatabase):
    """MySQL mixin: on a Galera node, every new connection makes its statements causal.

    Asked once per connection, when it is opened (one round trip beside the 33 ms of a
    connect): MariaDB without Galera reports ``wsrep_on`` OFF and MySQL no such variable,
    and both are left as they are.
    """

    def _connect(self) -> Any:
        conn = super()._connect()  # type: ignore[misc]
        try:
            with conn.cursor() as cursor:
                cursor.execute("SHOW SESSION VARIABLES LIKE 'wsrep_on'")
                row = cursor.fetchone()
                if row is not None and str(row[1]).upper() == "ON":
                    cursor.execute(f"SET SESSION wsrep_sync_wait = {GALERA_SYNC_WAIT}")
        except BaseException:
            conn.close()
            raise
        return conn


# _CausalOnGalera comes after peewee's pool in the order of classes, so that the pool's
# _connect reaches it only to open a connection, never when it hands out a kept one.
class MySQLPool(_CheckIdleOnly, PooledMySQLDatabase, _CausalOnGalera):
    """MySQL URLs: PyMySQL knows locally when it lost the connection.

    peewee also rolls back every connection handed back to its MySQL pool (PyMySQL has no
    transaction flag peewee reads), another round trip; the server's status bits say
    whether a transaction is open, and only then is one needed.
    """

    def _closed_locally(self, conn: Any) -> bool:
        return not getattr(conn, "open", False)

    def _idle(self, conn: Any) -> bool:
        status = getattr(conn, "server_status", None)
        return (
            bool(getattr(conn, "open", False))
            and status is not None
            and not (status & _IN_TRANSACTION)
        )

    def _can_reuse(self, conn: Any) -> bool:
        return self._idle(conn) or bool(super()._can_reuse(conn))


#: The database class of each URL scheme the store manages itself; other schemes go to
#: peewee's ``db_url`` as they are.
SCHEMES: dict[str, type[peewee.Database]] = {
    "sqlite": SqliteKept,
    "postgres": PostgresPool,
    "postgresql": PostgresPool,
    "postgres+pool": PostgresPool,
    "postgresql+pool": PostgresPool,
    "mysql": MySQLPool,
    "mysql+pool": MySQLPool,
}
