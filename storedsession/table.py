"""The session table without keys: schema, connections, expiry, counts, keyless deletes.

:class:`SessionTable` opens the database, builds the table's model, its
:class:`~storedsession.database.Connector` and its :class:`~storedsession.sql.Statements`,
and does everything that never reads a payload. ``storedsession init``, ``expire`` and
``stats`` (and :mod:`storedsession.maintenance`'s counts) take one; a
:class:`~storedsession.SessionStore` is built on one and adds the keys.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

import peewee

from . import expiry, signals
from .crypto import OVERHEAD
from .database import Connector, describe, is_mysql, is_sqlite, is_write_conflict, open_database
from .exceptions import ConfigurationError, SessionConflict, StoreUnavailable
from .lifetime import now_ms
from .models import DEFAULT_TABLE, build_model, check_table_name
from .session import storable_text
from .sql import Statements

#: The default bound of one session's serialized JSON, in bytes.
DEFAULT_MAX_SIZE = 1024 * 1024
#: How often :meth:`SessionTable.create_table` tries when other processes create at once.
CREATE_ATTEMPTS = 5
#: How often a write that lost a race (a save, a locked delete) starts again.
MAX_CONFLICT_RETRIES = 16


class SessionTable:
    """One session table in one database, for the work that needs no keys.

    ``database`` is a peewee ``Database`` or a URL, as :class:`~storedsession.SessionStore`
    takes it; a database built from a URL is the table's to close. ``sender`` is what its
    signals name as their sender (a store passes itself; the table when ``None``). Times
    are epoch milliseconds; expiry reads the system clock unless given ``now``.
    """

    def __init__(
        self,
        database: str | peewee.Database,
        table_name: str = DEFAULT_TABLE,
        *,
        sender: object | None = None,
    ) -> None:
        check_table_name(table_name)
        self.table_name = table_name
        self.database, self.owns_database = open_database(database)
        self.model = build_model(self.database, table_name)
        self.connector = Connector(self.database, table_name)
        self.statements = Statements.build(self.database, table_name)
        self.sender = self if sender is None else sender
        # The largest max_size known to fit MySQL's max_allowed_packet (no limit elsewhere).
        self._packet_fits = -1 if is_mysql(self.database) else sys.maxsize

    # -- schema --------------------------------------------------------------------
    def create_table(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """Create the table and its indexes if they do not exist, and check ``max_size``.

        Safe to call from every worker at once (gunicorn without ``--preload`` imports the
        app in each): ``IF NOT EXISTS`` is not atomic on PostgreSQL (a duplicate key in
        ``pg_type``) nor for MySQL's indexes (error 1061), and on SQLite the loser is told
        the database is busy while the winner's table is not yet committed (so it looks
        missing); the loser of that race tries again and then finds everything in place.
        """
        for attempt in range(CREATE_ATTEMPTS):
            try:
                with self.connector():
                    self.model.create_table(safe=True)
                    self.check_packet(max_size)
                return
            except StoreUnavailable:  # TableMissing included, see above
                if attempt == CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.01, 0.05))  # noqa: S311 - jitter, not a secret

    def drop_table(self) -> None:
        """Drop the table if it exists (every session ends)."""
        with self.connector():
            self.model.drop_table(safe=True)

    def check_packet(self, max_size: int) -> None:
        """Refuse a ``max_size`` that MySQL's ``max_allowed_packet`` cannot carry.

        Runs inside a connection; asks the server once per table (and larger size).
        """
        if max_size <= self._packet_fits:
            return
        row = self.database.execute_sql("SELECT @@max_allowed_packet").fetchone()
        # A binary parameter may double in size once escaped on the wire.
        needed = 2 * (max_size + OVERHEAD) + 64 * 1024
        if row and int(row[0]) < needed:
            raise ConfigurationError(
                f"max_size={max_size} needs the MySQL/MariaDB setting "
                f"max_allowed_packet of at least {needed} bytes; the server has {row[0]}. "
                "Raise max_allowed_packet or lower max_size."
            )
        self._packet_fits = max_size

    # -- connections -----------------------------------------------------------------
    def connected(self) -> AbstractContextManager[peewee.Database]:
        """Hold one connection for several operations: ``with table.connected(): ...``."""
        return self.connector()

    def transaction(self) -> Any:
        """Begin a transaction (inside a connection); on SQLite, with the write lock."""
        if is_sqlite(self.database):
            # Take the write lock up front, so the busy timeout applies to it.
            return self.database.atomic("IMMEDIATE")
        return self.database.atomic()

    def close(self) -> None:
        """Close the database if the table built it from a URL (pools close all)."""
        if self.owns_database:
            close_all = getattr(self.database, "close_all", None)
            if close_all is not None:
                close_all()
            if not self.database.is_closed():
                self.database.close()

    # -- expiry and counts -----------------------------------------------------------
    def expire(
        self,
        batch_size: int = expiry.MAX_BATCH,
        *,
        max_load: float = expiry.FULL_LOAD,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
        now: int | None = None,
    ) -> int:
        """Delete the sessions expired at ``now`` in short batches; return how many.

        Rows are chosen by their stored expiry through its index, against the time the
        sweep began, so a session used during the sweep is never deleted. Each batch is
        sized to take about 10 ms (2 ms on SQLite), at most ``batch_size`` rows, and the
        next starts at once: ``max_load`` (in (0, 1]) is the share of wall time spent
        deleting, for a sweep beside heavy traffic (below 1, batches take about 2 ms on
        every backend: :data:`~storedsession.expiry.SHARED_BATCH_SECONDS`); after
        ``max_seconds`` no new batch starts, and the rest waits for the next sweep. A
        deadlock or lock wait timeout is retried. ``progress`` is called with the size of
        each batch.
        """
        return self.sweep(
            batch_size, max_load=max_load, max_seconds=max_seconds, progress=progress, now=now
        ).removed

    def sweep(
        self,
        batch_size: int = expiry.MAX_BATCH,
        *,
        max_load: float = expiry.FULL_LOAD,
        max_seconds: float | None = None,
        progress: Callable[[int], None] | None = None,
        now: int | None = None,
    ) -> expiry.SweepResult:
        """Like :meth:`expire`, and also tell whether it finished before ``max_seconds``."""
        expiry.check_options(batch_size, max_load, max_seconds)
        cutoff = now_ms() if now is None else now
        with self.connector():  # one connection for the sweep, not one per batch
            result = expiry.sweep(
                self.database,
                self.statements,
                cutoff,
                batch_size=batch_size,
                max_load=max_load,
                max_seconds=max_seconds,
                progress=progress,
            )
        if signals.sessions_expired.receivers:
            signals.sessions_expired.send(self.sender, count=result.removed)
        return result

    def count_expired(self, now: int | None = None) -> int:
        """Return how many stored sessions :meth:`expire` would delete at ``now``."""
        cutoff = now_ms() if now is None else now
        with self.connector():
            row = self.database.execute_sql(self.statements.count_expired, (cutoff,)).fetchone()
            return int(row[0])

    # -- deletes -----------------------------------------------------------------------
    def delete(self, handles: Sequence[str]) -> int:
        """Delete the sessions stored under ``handles``; return how many there were."""
        deleted = 0
        with self.connector():
            for handle in handles:
                if self.connector.execute(self.statements.delete, (handle,)).rowcount:
                    deleted += 1
                    if signals.session_delete.receivers:
                        signals.session_delete.send(self.sender, sid=handle)
        return deleted

    def revoke_user(self, user_id: str | int, keep: str | None = None) -> int:
        """Delete all of the user's sessions but the one under the handle ``keep``.

        Returns how many it deleted. No session of the user survives, even one that a
        concurrent ``regenerate()`` is moving to a new id (one versioned ``UPDATE`` of the
        row's ``sid``), because the user's rows are read with a lock before they are
        deleted:

        - PostgreSQL, READ COMMITTED: ``SELECT ... FOR UPDATE`` that meets a row being
          updated waits, then re-checks the WHERE on the row's updated version and locks
          that (EvalPlanQual): the moved row, under its new ``sid``. (Had the move been an
          INSERT plus a DELETE, the wait would end on a deleted row, and the inserted one,
          absent from the statement's snapshot, would survive.)
        - MariaDB/MySQL, REPEATABLE READ: a locking read ignores the transaction's
          snapshot; it waits for the move's locks, then reads the latest committed rows.
          It takes the user_id index before the row, the move the row before the index,
          so the two can deadlock; the server then rolls one back, and this one retries.
        - SQLite: one writer at a time; this transaction (``BEGIN IMMEDIATE``) runs
          wholly before or after the move's statement.

        A move that comes after the lock waits for it, then matches no row (the old
        ``sid`` is gone) and its save raises ``SessionInterrupted``.
        """
        wanted = str(user_id)
        if not storable_text(wanted):
            return 0
        model = self.model
        condition = model.user_id == wanted
        if keep is not None:
            condition &= model.sid != keep
        with self.connector():
            handles = self.delete_locked(
                condition, (model.sid, model.user_id), wanted, lambda rows: [row[0] for row in rows]
            )
        if signals.session_delete.receivers:  # once committed: a rollback sends none
            for handle in handles:
                signals.session_delete.send(self.sender, sid=handle)
        return len(handles)

    def delete_locked(
        self,
        condition: Any,
        columns: tuple[Any, ...],
        owner: str,
        choose: Callable[[list[tuple[Any, ...]]], list[str]],
    ) -> list[str]:
        """Lock the rows of ``condition``, delete those ``choose`` picks; return their handles.

        Runs inside a connection. ``columns`` start with ``sid``, then ``user_id`` comes
        among them: only rows whose ``user_id`` is exactly ``owner`` reach ``choose`` (a
        MySQL table not yet upgraded matches loosely). The transaction starts again when
        the server rolls it back for a write conflict
        (:func:`~storedsession.database.is_write_conflict`).
        """
        model = self.model
        position = [c.name for c in columns].index("user_id")
        locking = not is_sqlite(self.database)
        for tries in range(MAX_CONFLICT_RETRIES + 1):
            query = model.select(*columns).where(condition).tuples()  # not reusable
            try:
                with self.transaction():
                    rows = query.for_update() if locking else query
                    chosen = choose([row for row in rows if row[position] == owner])
                    # Locked: each of these deletes its row (SQLite: no one else writes).
                    for handle in chosen:
                        self.connector.execute(self.statements.delete, (handle,))
                return chosen
            except Exception as exc:
                # The server rolled it back (MariaDB's deadlock with a concurrent move, a
                # save on another Galera node, PostgreSQL's serialization failure).
                if not is_write_conflict(exc):
                    raise
                if tries == MAX_CONFLICT_RETRIES:
                    raise SessionConflict(
                        "The user's sessions kept changing under this request; nothing was "
                        f"revoked. Try again. The database reported: {describe(exc)}."
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover
