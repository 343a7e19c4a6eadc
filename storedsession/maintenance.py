"""Chores of an operator: re-encrypt sessions under the newest key, count them, migrate.

``storedsession rotate-keys`` and ``storedsession stats`` run against the table the
application is serving from, so every write here is one short conditional statement that
loses to any save a live request makes. The rotation also moves rows of envelope format 1
to format 2 (which authenticates ``user_id``, creation time and idle timeout), sealing
each to the columns it holds at that moment: what format 1 never bound is taken as it is.
A row whose stored id the store cannot have written (not ASCII) is counted and skipped.
``storedsession stats`` counts envelopes per format and key id from the payloads' first
bytes: :func:`stats`, :func:`envelope_counts` and :func:`table_size` take a
:class:`~storedsession.table.SessionTable`, since they need no keys. The table's schema
(migrations, upgrades) is :mod:`storedsession.schema`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple

import peewee

from .checks import is_whole
from .crypto import FORMAT_VERSION, LEGACY_FORMAT, DecryptionFailed
from .database import is_mysql, is_sqlite
from .lifetime import now_ms, utc
from .store import SessionStore
from .table import SessionTable

#: How often a row that live traffic changed under the rotation is re-read and retried.
ROTATION_RETRIES = 3


class RowOutcome(Enum):
    """What the rotation did with one row."""

    ROTATED = "rotated"  #: re-encrypted under the first key, in the current format
    CURRENT = "current"  #: already under the first key, in the current format: nothing to do
    UNREADABLE = "unreadable"  #: no configured key opens it: left untouched
    MALFORMED = "malformed"  #: its stored id is not one the store writes (not ASCII): skipped
    CHANGED = "changed"  #: live traffic kept changing it: left for the next run
    GONE = "gone"  #: deleted meanwhile (logout, expiry, new id)


@dataclass
class Rotation:
    """How many rows :func:`rotate_keys` left in each :class:`RowOutcome`."""

    rotated: int = 0
    current: int = 0
    unreadable: int = 0
    malformed: int = 0
    changed: int = 0
    gone: int = 0

    def add(self, outcome: RowOutcome) -> None:
        """Count one row."""
        setattr(self, outcome.value, getattr(self, outcome.value) + 1)


class StoredRow(NamedTuple):
    """The columns of one row that a rotation reads, in the order it selects them."""

    handle: str
    payload: bytes
    user_id: str | None
    created: int
    idle: int | None
    version: int


def _columns(model: Any) -> tuple[Any, ...]:
    return (model.payload, model.user_id, model.created_at, model.idle_timeout, model.version)


def rotate_keys(
    store: SessionStore, batch_size: int = 500, *, progress: Callable[[int], None] | None = None
) -> Rotation:
    """Re-encrypt every stored session under the store's first key; report what happened.

    Rows are walked in handle order, ``batch_size`` at a time, each batch starting after
    the last id of the one before (no ``OFFSET`` that rows deleted meanwhile would shift).
    Rows already in the current format under the first key are skipped without a write, so
    running it again after an interruption goes on where it stopped; rows in an earlier
    format are rewritten even under the first key. ``progress`` is called with the size of
    each batch.
    """
    if not is_whole(batch_size, 1):
        raise ValueError("batch_size must be a positive whole number.")
    model = store.model
    report = Rotation()
    last = ""
    while True:
        query = (
            model.select(model.sid, *_columns(model))
            .where(model.sid > last)
            .order_by(model.sid)
            .limit(batch_size)
            .tuples()
        )
        with store.connected():
            rows = [StoredRow(*row) for row in query]
            for row in rows:
                report.add(rotate_row(store, row))
        if not rows:
            return report
        last = rows[-1].handle
        if progress is not None:
            progress(len(rows))


def rotate_row(store: SessionStore, row: StoredRow) -> RowOutcome:
    """Re-encrypt one row, as read, under the first key in the current format.

    The payload is sealed anew to the row's own ``user_id``, creation time and idle
    timeout, and written on the condition that ``version`` did not move, leaving it as it
    is: the data does not change, so a request that loaded the row before still saves over
    it as usual, while a request that saved first makes this write match nothing. The row
    is then re-read and tried again, a bounded number of times.
    """
    model, envelope = store.model, store.envelope
    handle = row.handle
    if not handle.isascii():  # written by hand: no envelope can be bound to it
        return RowOutcome.MALFORMED
    for _ in range(ROTATION_RETRIES):
        try:
            payload = bytes(row.payload)
            if not envelope.needs_rotation(payload):
                return RowOutcome.CURRENT
            metadata, data = envelope.open(payload, handle, row.user_id, row.created, row.idle)
        except (DecryptionFailed, TypeError):  # TypeError: SQLite keeps text in a blob
            return RowOutcome.UNREADABLE
        sealed = envelope.seal(data, handle, row.user_id, row.created, row.idle, metadata)
        update = model.update(payload=sealed).where(
            (model.sid == handle) & (model.version == row.version)
        )
        with store.connected():
            if update.execute() == 1:
                return RowOutcome.ROTATED
            again = model.select(*_columns(model)).where(model.sid == handle).tuples().first()
        if again is None:
            return RowOutcome.GONE
        row = StoredRow(handle, *again)
    return RowOutcome.CHANGED


class EnvelopeCount(NamedTuple):
    """How many stored rows are in one envelope format under one key id.

    ``format`` and ``key_id`` (hex) are ``None`` for payloads that are no envelope of a
    known format.
    """

    format: int | None
    key_id: str | None
    rows: int


_KNOWN_FORMATS = (LEGACY_FORMAT, FORMAT_VERSION)


def envelope_counts(table: SessionTable) -> tuple[EnvelopeCount, ...]:
    """Count the rows per envelope format and key id, inside a connection; needs no keys.

    Only the first five bytes of each payload are read, in SQL: nothing is decrypted and
    no payload crosses the wire. Newest format first, then the most rows.
    """
    model = table.model
    head = peewee.fn.SUBSTR(model.payload, 1, 5)
    query = model.select(head, peewee.fn.COUNT(model.sid)).group_by(peewee.SQL("1")).tuples()
    counts: dict[tuple[int | None, str | None], int] = {}
    for raw, count in query:
        prefix = b"" if raw is None else bytes(raw)  # SQLite gives NULL for an empty blob
        if len(prefix) == 5 and prefix[0] in _KNOWN_FORMATS:
            kind: tuple[int | None, str | None] = (prefix[0], prefix[1:].hex())
        else:
            kind = (None, None)
        counts[kind] = counts.get(kind, 0) + int(count)
    return tuple(
        sorted(
            (EnvelopeCount(fmt, key_id, count) for (fmt, key_id), count in counts.items()),
            key=lambda c: (c.format is None, -(c.format or 0), -c.rows, c.key_id or ""),
        )
    )


@dataclass(frozen=True)
class Stats:
    """Figures of one session table, judged by the stored expiry times.

    ``oldest`` and ``newest`` are the creation times of the oldest and newest live
    sessions; ``size`` is in bytes, ``None`` when the database cannot tell, and
    ``size_of`` says what it measures. ``envelopes`` counts every stored row (expired ones
    too, as the rotation sees them) per envelope format and key id.
    """

    live: int
    expired: int
    with_user: int
    oldest: datetime | None
    newest: datetime | None
    size: int | None
    size_of: str
    envelopes: tuple[EnvelopeCount, ...] = ()

    @property
    def total(self) -> int:
        """Every stored session, live or expired."""
        return self.live + self.expired


def _utc(ms: Any) -> datetime | None:
    return None if ms is None else utc(int(ms))  # MySQL's MIN() may give a Decimal


def stats(table: SessionTable) -> Stats:
    """Count the table's sessions and their envelopes, and measure it where it can."""
    model, now = table.model, now_ms()
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
    with table.connected():
        total, expired, with_user, oldest, newest = query.get()
        size, size_of = table_size(table)
        envelopes = envelope_counts(table)
    expired = int(expired or 0)
    return Stats(
        live=int(total) - expired,
        expired=expired,
        with_user=int(with_user or 0),
        oldest=_utc(oldest),
        newest=_utc(newest),
        size=size,
        size_of=size_of,
        envelopes=envelopes,
    )


def table_size(table: SessionTable) -> tuple[int | None, str]:
    """Return the bytes the table takes and what that figure covers, inside a connection."""
    database, name = table.database, table.table_name
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
