"""Expiry sweeps: delete expired rows in short batches, as fast as the database allows.

Each batch is one short statement, sized to take about :data:`BATCH_SECONDS`
(:data:`SQLITE_BATCH_SECONDS` on SQLite, whose one writer makes every live write wait for
it), so that no sweep holds locks for long and no fixed pause wastes the time between
batches. A sweep beside heavy traffic can be given a share of wall time (``max_load``)
and a deadline (``max_seconds``). A batch that meets a deadlock or a lock wait timeout
(another sweep, a live save) is retried after a short jittered back-off.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from time import monotonic, sleep
from typing import NamedTuple

import peewee

from .checks import is_whole
from .database import is_sqlite
from .sql import Statements

#: A batch's time budget on a database server: long enough to amortise a round trip and a
#: commit, short enough that no statement holds its row locks for long.
BATCH_SECONDS = 0.01
#: The budget on SQLite, where every live write waits for the batch to finish.
SQLITE_BATCH_SECONDS = 0.002
#: Every batch's budget when the sweep shares the database with traffic (``max_load``
#: below 1): a live write that commits while a batch runs flushes the batch's log with its
#: own, so it waits for about the batch. Measured with ``python -m bench.expiry
#: --max-load 0.5`` on PostgreSQL: with 10 ms batches write p99 went from 1.08 to 2.82 ms,
#: with 2 ms batches from 0.93 to 1.60.
SHARED_BATCH_SECONDS = 0.002
#: The default upper bound of a batch, in rows: below what a Galera cluster replicates as
#: one write set (``wsrep_max_ws_size``, 2 GiB) even when every row holds ``max_size``'s
#: default 1 MiB (5000 would not be); at 10 ms a batch it still sweeps 100,000 rows a second.
MAX_BATCH = 1000
#: The default ``max_load``: the sweep may spend all of its wall time deleting.
FULL_LOAD = 1.0
#: The size of the first batch, before any timing is known.
FIRST_BATCH = 100
#: The smallest batch the sizing goes down to: a batch slower than its budget even at this
#: size is slow for a fixed cost (a commit's flush, a busy server), which smaller batches
#: would only pay more often.
MIN_BATCH = 20
#: How many recent batches the pace is the median of.
PACE_WINDOW = 5
#: MySQL: walk the table in primary key order when at least this share of its rows
#: (as the server estimates them) has expired, and at least WALK_MIN_ROWS.
WALK_SHARE = 0.1
WALK_MIN_ROWS = 10_000
#: How many batches in a row may delete nothing while expired rows are still there.
IDLE_BATCHES = 10
#: How often one batch is tried when it meets a deadlock or a lock wait timeout.
RETRIES = 12
#: Back-off before the n-th retry: uniform in [0, min(RETRY_CAP, RETRY_BASE * 2**n)].
RETRY_BASE = 0.01
RETRY_CAP = 1.0

#: MySQL/MariaDB error codes a retry can get past: deadlock, lock wait timeout.
_MYSQL_TRANSIENT = frozenset({1213, 1205})
#: PostgreSQL SQLSTATEs a retry can get past: serialization failure, deadlock detected,
#: lock not available (``lock_timeout``).
_POSTGRES_TRANSIENT = frozenset({"40001", "40P01", "55P03"})


class SweepResult(NamedTuple):
    """What a sweep did: how many rows it deleted, and whether it reached the end."""

    removed: int
    finished: bool


def check_options(batch_size: int, max_load: float, max_seconds: float | None) -> None:
    """Raise ``ValueError`` for options no sweep can follow."""
    if not is_whole(batch_size, 1):
        raise ValueError("batch_size must be a positive whole number.")
    if not _number(max_load) or not 0 < max_load <= 1:
        raise ValueError("max_load must be a number in (0, 1]: the share of time spent deleting.")
    if max_seconds is not None and (not _number(max_seconds) or max_seconds <= 0):
        raise ValueError("max_seconds must be a positive number of seconds, or None.")


def _number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def sweep(
    database: peewee.Database,
    sql: Statements,
    cutoff: int,
    *,
    batch_size: int = MAX_BATCH,
    max_load: float = FULL_LOAD,
    max_seconds: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> SweepResult:
    """Delete the rows that expired at ``cutoff`` (epoch ms) in batches; report what it did.

    The caller holds the connection. Batches aim at the database's time budget (on MySQL,
    the budget of the DELETE that holds the locks, not of the lock-free read that finds
    the rows), growing and shrinking between :data:`MIN_BATCH` and ``batch_size`` rows.
    With ``max_load`` below 1, a batch that took ``t`` seconds is followed by ``t * (1 -
    max_load) / max_load`` seconds of rest. With ``max_seconds``, no batch starts after
    that long.
    """
    check_options(batch_size, max_load, max_seconds)
    started = monotonic()
    deadline = None if max_seconds is None else started + max_seconds
    rest = (1 - max_load) / max_load
    batches = _Batches(database, sql, cutoff)
    budget = batches.budget if max_load == 1 else min(batches.budget, SHARED_BATCH_SECONDS)
    sizing = _Sizing(budget, batch_size)
    total = 0
    with batches.checkpoints():
        while True:
            outcome = _with_retries(batches, sizing.size, deadline)
            if outcome is None:  # the deadline passed while a retry waited
                return SweepResult(total, False)
            deleted, more, took = outcome
            if not more:
                return SweepResult(total, True)
            total += deleted
            if progress is not None and deleted:
                progress(deleted)
            sizing.observe(deleted, batches.held if batches.held is not None else took)
            if rest:
                pause = took * rest
                if deadline is not None:
                    pause = min(pause, deadline - monotonic())
                if pause > 0:
                    sleep(pause)
            if deadline is not None and monotonic() >= deadline:
                return SweepResult(total, False)


class _Sizing:
    """The next batch's size: the recent pace times the time budget.

    The pace is the median of the last few batches, so that one slow batch (a checkpoint,
    a page flush) does not shrink the next ones, while a lasting slowdown (locks held by
    live traffic) does within a few batches. A batch at most doubles the one before.
    """

    __slots__ = ("budget", "largest", "paces", "size", "smallest")

    def __init__(self, budget: float, largest: int) -> None:
        self.budget, self.largest = budget, largest
        self.smallest = min(MIN_BATCH, largest)
        self.size = min(FIRST_BATCH, largest)
        self.paces: list[float] = []

    def observe(self, deleted: int, took: float) -> None:
        """Account for a batch that deleted ``deleted`` rows in ``took`` seconds."""
        if deleted <= 0:
            return
        self.paces = [*self.paces[-(PACE_WINDOW - 1) :], deleted / took if took > 0 else math.inf]
        aimed = statistics.median(self.paces) * self.budget
        self.size = max(self.smallest, min(self.largest, 2 * self.size, _round(aimed)))


def _round(value: float) -> int:
    return round(value) if math.isfinite(value) else 2**31


class _Batches:
    """One database's way of deleting a batch, and where the sweep has got to."""

    def __init__(self, database: peewee.Database, sql: Statements, cutoff: int) -> None:
        self.database, self.sql, self.cutoff = database, sql, cutoff
        self.budget = SQLITE_BATCH_SECONDS if is_sqlite(database) else BATCH_SECONDS
        self.after: str | None = "" if self._mostly_expired() else None  # the walk's place
        #: MySQL: how long the last batch's DELETE held its locks. Its first step, a read
        #: without locks, is work (for ``max_load``) but holds nothing up: the time
        #: budget is the DELETE's alone.
        self.held: float | None = None
        self.idle = 0  # batches in a row that deleted nothing

    def _mostly_expired(self) -> bool:
        sql = self.sql
        if sql.expire_walk is None or sql.expire_probe is None or sql.table_rows is None:
            return False
        row = self.database.execute_sql(sql.table_rows).fetchone()
        estimate = int(row[0] or 0) if row else 0
        enough = max(WALK_MIN_ROWS, int(estimate * WALK_SHARE))
        probe = self.database.execute_sql(sql.expire_probe, (self.cutoff, enough)).fetchone()
        return int(probe[0]) >= enough

    def __call__(self, size: int) -> tuple[int, bool]:
        """Delete one batch of at most ``size`` rows; return how many, and whether to go on."""
        database, sql, cutoff = self.database, self.sql, self.cutoff
        if sql.expire_listed is None:
            deleted = int(database.execute_sql(sql.expire_batch, (cutoff, size, cutoff)).rowcount)
            if deleted > 0:
                self.idle = 0
                return deleted, True
            # PostgreSQL passes over a row that another transaction changed while the
            # batch ran (its new version has another address), or that another sweep
            # deleted: go on while expired rows are left, but not forever.
            self.idle += 1
            left = database.execute_sql(sql.expire_left, (cutoff,)).fetchone() is not None
            return 0, left and self.idle < IDLE_BATCHES
        # MySQL: read the ids without locking anything, then delete those rows by their
        # primary key, locking only them (see Statements.build).
        if self.after is None:
            rows = database.execute_sql(sql.expire_batch, (cutoff, size)).fetchall()
        else:
            assert sql.expire_walk is not None
            rows = database.execute_sql(sql.expire_walk, (self.after, cutoff, size)).fetchall()
        if not rows:
            return 0, False
        ids = [row[0] for row in rows]
        placeholders = ", ".join([database.param] * len(ids))
        statement = f"{sql.expire_listed} ({placeholders})"
        started = monotonic()
        deleted = int(database.execute_sql(statement, (cutoff, *ids)).rowcount)
        self.held = monotonic() - started
        if self.after is not None:
            self.after = ids[-1]
        # Listed rows that were not deleted were taken by another sweep or refreshed by a
        # request: the next read skips them either way.
        return deleted, True

    @contextmanager
    def checkpoints(self) -> Iterator[None]:
        """On SQLite, make the sweep's own commits copy the log back into the database.

        SQLite checkpoints at the commit that finds its write-ahead log over a threshold
        (1000 pages by default). A sweep writes many pages: with half that threshold on
        its own connection, its commits reach it first, so that live writes do not pay
        for checkpoints. The setting is restored afterwards (the connection may be the
        application's).
        """
        if not is_sqlite(self.database):
            yield
            return
        row = self.database.execute_sql("PRAGMA wal_autocheckpoint").fetchone()
        before = int(row[0]) if row else 0
        if before <= 1:  # turned off: the application checkpoints on its own terms
            yield
            return
        self.database.execute_sql(f"PRAGMA wal_autocheckpoint = {before // 2}")
        try:
            yield
        finally:
            self.database.execute_sql(f"PRAGMA wal_autocheckpoint = {before}")


def _with_retries(
    batches: _Batches, size: int, deadline: float | None
) -> tuple[int, bool, float] | None:
    """Run one batch: return the rows it deleted, whether to go on, and the seconds it took.

    Return ``None`` when the deadline passed while waiting to retry.
    """
    for attempt in range(RETRIES):
        started = monotonic()
        try:
            deleted, more = batches(size)
        except peewee.DatabaseError as exc:
            # Inside the caller's transaction, the server has rolled back more than this
            # batch: only the caller can decide what to do.
            database = batches.database
            if attempt == RETRIES - 1 or not transient(exc) or database.in_transaction():
                raise
            wait = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**attempt))  # noqa: S311
            if deadline is not None and monotonic() + wait >= deadline:
                return None
            sleep(wait)
            continue
        return deleted, more, monotonic() - started
    raise AssertionError("unreachable")  # pragma: no cover


def transient(exc: BaseException) -> bool:
    """Tell whether a database error is a deadlock or lock timeout that a retry can pass."""
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
    cause = cause or exc.__cause__ or exc.__context__
    if cause is None:
        return False
    code = getattr(cause, "pgcode", None) or getattr(cause, "sqlstate", None)
    if code is not None:
        return code in _POSTGRES_TRANSIENT
    args: tuple[object, ...] = getattr(cause, "args", ())
    return bool(args) and args[0] in _MYSQL_TRANSIENT
