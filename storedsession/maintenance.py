"""Chores of an operator: re-encrypt sessions under the newest key, count them, migrate.

``storedsession rotate-keys`` and ``storedsession stats`` run against the table the
application is serving from, so every write here is one short conditional statement that
loses to any save a live request makes. The table's schema (migrations, upgrades) is
:mod:`storedsession.schema`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import peewee

from .crypto import DecryptionFailed
from .database import is_mysql, is_sqlite
from .store import SessionStore

#: How often a row that live traffic changed under the rotation is re-read and retried.
ROTATION_RETRIES = 3


class RowOutcome(Enum):
    """What the rotation did with one row."""

    ROTATED = "rotated"  #: re-encrypted under the first key
    CURRENT = "current"  #: already under the first key: nothing to do
    UNREADABLE = "unreadable"  #: no configured key opens it: left untouched
    CHANGED = "changed"  #: live traffic kept changing it: left for the next run
    GONE = "gone"  #: deleted meanwhile (logout, expiry, new id)


@dataclass
class Rotation:
    """How many rows :func:`rotate_keys` left in each :class:`RowOutcome`."""

    rotated: int = 0
    current: int = 0
    unreadable: int = 0
    changed: int = 0
    gone: int = 0

    def add(self, outcome: RowOutcome) -> None:
        """Count one row."""
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)


def rotate_keys(
    store: SessionStore, batch_size: int = 500, *, progress: Callable[[int], None] | None = None
) -> Rotation:
    """Re-encrypt every stored session under the store's first key; report what happened.

    Rows are walked in ``sid`` order, ``batch_size`` at a time, each batch starting after
    the last id of the one before (no ``OFFSET`` that rows deleted meanwhile would shift).
    Rows already under the first key are skipped without a write, so running it again
    after an interruption goes on where it stopped. ``progress`` is called with the size
    of each batch.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError("batch_size must be a positive whole number.")
    model = store.model
    report = Rotation()
    last = ""
    while True:
        query = (
            model.select(model.sid, model.payload, model.version)
            .where(model.sid > last)
            .order_by(model.sid)
            .limit(batch_size)
            .tuples()
        )
        with store.connected():
            rows = list(query)
            for sid, payload, version in rows:
                report.add(rotate_row(store, sid, payload, version))
        if not rows:
            return report
        last = rows[-1][0]
        if progress is not None:
            progress(len(rows))


def rotate_row(store: SessionStore, sid: str, payload: bytes, version: int) -> RowOutcome:
    """Re-encrypt the row ``sid``, read as ``payload`` at ``version``, under the first key.

    The write is conditional on ``version`` and leaves it as it is: the plaintext does not
    change, so a request that loaded the row before still saves over it as usual, while a
    request that saved first makes this write match nothing. The row is then re-read and
    tried again, a bounded number of times.
    """
    model, envelope = store.model, store.envelope
    for _ in range(ROTATION_RETRIES):
        payload = bytes(payload)
        if not envelope.needs_rotation(payload):
            return RowOutcome.CURRENT
        try:
            plaintext = envelope.open(payload, sid)
        except DecryptionFailed:
            return RowOutcome.UNREADABLE
        update = model.update(payload=envelope.seal(plaintext, sid)).where(
            (model.sid == sid) & (model.version == version)
        )
        with store.connected():
            if update.execute() == 1:
                return RowOutcome.ROTATED
            row = (
                model.select(model.payload, model.version).where(model.sid == sid).tuples().first()
            )
        if row is None:
            return RowOutcome.GONE
        payload, version = row
    return RowOutcome.CHANGED


@dataclass(frozen=True)
class Stats:
    """Figures of one session table, judged by the stored expiry times.

    ``oldest`` and ``newest`` are the creation times of the oldest and newest live
    sessions; ``size`` is in bytes, ``None`` when the database cannot tell, and
    ``size_of`` says what it measures.
    """

    live: int
    expired: int
    with_user: int
    oldest: datetime | None
    newest: datetime | None
    size: int | None
    size_of: str

    @property
    def total(self) -> int:
        """Every stored session, live or expired."""
        return self.live + self.expired


def _utc(ms: Any) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def stats(store: SessionStore) -> Stats:
    """Count the table's sessions in one query, and measure it where the database can."""
    model, now = store.model, store.now()
    live = model.expires_at.is_null() | (model.expires_at > now)

    def when(condition: Any, value: Any, default: Any = None) -> Any:
        return peewee.Case(None, [(condition, value)], default)

    query = model.select(
        peewee.fn.COUNT(model.sid),
        peewee.fn.SUM(when(model.expires_at <= now, 1, 0)),
        peewee.fn.SUM(when(live & model.user_id.is_null(False), 1, 0)),
        peewee.fn.MIN(when(live, model.created_at)),
        peewee.fn.MAX(when(live, model.created_at)),
    ).tuples()
    with store.connected():
        total, expired, with_user, oldest, newest = query.get()
        size, size_of = table_size(store)
    expired = int(expired or 0)
    return Stats(
        live=int(total) - expired,
        expired=expired,
        with_user=int(with_user or 0),
        oldest=_utc(oldest),
        newest=_utc(newest),
        size=size,
        size_of=size_of,
    )


def table_size(store: SessionStore) -> tuple[int | None, str]:
    """Return the bytes the table takes and what that figure covers, inside a connection."""
    database, name = store.database, store.table_name
    if isinstance(database, peewee.PostgresqlDatabase):
        row = database.execute_sql(
            "SELECT pg_total_relation_size(quote_ident(%s)::regclass)", (name,)
        ).fetchone()
        return int(row[0]), "table and indexes"
    if is_mysql(database):
        row = database.execute_sql(
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = DATABASE() AND table_name = %s",
            (name,),
        ).fetchone()
        return (None if row is None else int(row[0])), "table and indexes, server estimate"
    if is_sqlite(database):
        try:
            row = database.execute_sql(
                "SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                "(SELECT name FROM sqlite_master WHERE tbl_name = ?)",
                (name,),
            ).fetchone()
            return int(row[0] or 0), "table and indexes"
        except peewee.OperationalError:  # SQLite built without the dbstat table
            pages = database.execute_sql("PRAGMA page_count").fetchone()[0]
            page_size = database.execute_sql("PRAGMA page_size").fetchone()[0]
            return int(pages) * int(page_size), "the whole database file"
    return None, "unknown"
