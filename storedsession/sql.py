"""The hot-path SQL, built once per store for its database's dialect.

Peewee's query builder costs several times the query itself on a fast backend, and a
peewee query object run twice returns its cached first result; so the statements a
request runs are plain strings, run by :meth:`~storedsession.database.Connector.execute`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import peewee

from .database import is_mysql, is_sqlite

#: The columns of a session's row that every read returns, in its order: the two that
#: are not integers, then the integers (which MySQL and PostgreSQL read packed in one).
_LEADING = "payload, user_id"
_NUMBERS = ("created_at", "last_seen_at", "expires_at", "idle_timeout", "version")
COLUMNS = f"{_LEADING}, {', '.join(_NUMBERS)}"

#: MySQL's ``select``: the five integers of :data:`COLUMNS` in one text column (NULL as
#: the empty string). PyMySQL parses the descriptor of every column of every result in
#: Python: four columns fewer take 190,000 instructions off a query of 460,000
#: (``SELECT`` and ``fetchone`` alone, under callgrind), a third of a session read.
_MYSQL_PACKED = (
    f"{_LEADING}, CONCAT(" + ", ',', ".join(f"COALESCE({column}, '')" for column in _NUMBERS) + ")"
)

#: PostgreSQL's ``select``: the five integers of :data:`COLUMNS` in one ``bigint[]``, which
#: the driver reads as a list of ints and Nones in C. psycopg2 decodes the name of every
#: column of every result through Python's UTF-8 codec: four columns fewer take 13,000
#: instructions off every read (``python -m bench.instructions``: 205,700 to 192,500).
_POSTGRES_PACKED = f"{_LEADING}, ARRAY[{', '.join(_NUMBERS)}]"


def _unpack_mysql(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Read a row of MySQL's ``select`` back as the seven columns of :data:`COLUMNS`."""
    payload, user_id, numbers = row
    if type(numbers) is bytes:  # a connection whose results are binary
        numbers = numbers.decode("ascii")
    created, last_seen, expires, idle, version = numbers.split(",")
    return (
        payload,
        user_id,
        int(created),
        int(last_seen),
        int(expires) if expires else None,
        int(idle) if idle else None,
        int(version),
    )


def _unpack_postgres(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """Read a row of PostgreSQL's ``select`` back as the seven columns of :data:`COLUMNS`."""
    payload, user_id, numbers = row
    return (payload, user_id, *numbers)


@dataclass(frozen=True)
class Statements:
    """The statements of one table on one database."""

    #: One session's row by its handle; read it with ``unpack`` when that is not None.
    select: str
    select_for_update: str
    #: Turns a row of ``select`` into the columns of :data:`COLUMNS`, in that order (None on
    #: SQLite, which reads them as they are).
    unpack: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None
    insert: str
    insert_ignores_conflict: bool
    update: str
    update_data: str
    regenerate: str
    touch: str
    delete: str
    #: One batch of expiry, run with (cutoff, limit, cutoff); on MySQL the ids of one
    #: batch, selected with (cutoff, limit) and deleted by ``expire_listed``.
    expire_batch: str
    #: MySQL only: ``expire_listed + " (%s, …)"`` deletes the listed ids, with (cutoff, *ids).
    expire_listed: str | None
    #: MySQL only: the ids of one batch in primary key order, with (after, cutoff, limit).
    expire_walk: str | None
    #: Whether any row has expired (cutoff): a batch that deleted nothing may have met
    #: only rows that changed while it ran.
    expire_left: str
    #: MySQL only: how many rows have expired, counting up to a limit (cutoff, limit).
    expire_probe: str | None
    #: MySQL only: the server's estimate of the table's rows.
    table_rows: str | None
    count_expired: str

    @classmethod
    def build(cls, database: peewee.Database, table_name: str) -> Statements:
        """Write the statements in ``database``'s quoting and parameter style."""
        p = database.param
        t = database.quote[0] + table_name + database.quote[1]
        mysql, sqlite = is_mysql(database), is_sqlite(database)
        # PostgreSQL aborts a whole transaction on a duplicate key; ON CONFLICT DO
        # NOTHING reports a collision as 0 rows instead. MySQL has no such clause that
        # ignores only duplicates (INSERT IGNORE also hides truncation): it raises.
        conflict = "" if mysql else " ON CONFLICT DO NOTHING"
        # Oldest first, through the index on the expiry time. The outer test of the expiry
        # is not redundant: a row that a live request touched after the batch chose it
        # (while the DELETE waited for its lock) is re-checked at its new expiry and kept.
        chosen = f"FROM {t} WHERE expires_at <= {p} ORDER BY expires_at LIMIT {p}"
        listed = walk = probe = table_rows = None
        if mysql:
            # A locking DELETE ... ORDER BY ... LIMIT on InnoDB locks every index entry it
            # reads, live rows past the cutoff included (a deadlock with live saves and
            # other sweeps): read the ids without locks, delete them by primary key.
            expire = f"SELECT sid {chosen}"
            listed = f"DELETE FROM {t} WHERE expires_at <= {p} AND sid IN"
            # InnoDB keeps rows in primary key order, and ids are random: when much of the
            # table has expired, walking it in that order reads each page once, where the
            # expiry order reads a page for nearly every row.
            walk = (
                f"SELECT sid FROM {t} FORCE INDEX (PRIMARY) WHERE sid > {p} "
                f"AND expires_at <= {p} ORDER BY sid LIMIT {p}"
            )
            probe = (
                f"SELECT COUNT(*) FROM (SELECT 1 FROM {t} WHERE expires_at <= {p} "
                f"LIMIT {p}) AS expired"
            )
            table_rows = (
                "SELECT TABLE_ROWS FROM information_schema.TABLES "
                f"WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '{table_name}'"
            )
        elif sqlite:
            expire = f"DELETE FROM {t} WHERE sid IN (SELECT sid {chosen}) AND expires_at <= {p}"
        else:
            # By physical row address: no second lookup through the primary key index,
            # which costs PostgreSQL more than the deletion itself.
            expire = (
                f"DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid {chosen})) "
                f"AND expires_at <= {p}"
            )
        # SQLite builds a row's values in C at a few hundred instructions a column: it
        # reads them as they are, where packing and unpacking would cost more.
        read = COLUMNS if sqlite else _MYSQL_PACKED if mysql else _POSTGRES_PACKED
        return cls(
            select=f"SELECT {read} FROM {t} WHERE sid = {p}",
            # SQLite has no row locks: its write transaction (BEGIN IMMEDIATE) serializes.
            select_for_update=(
                f"SELECT {read} FROM {t} WHERE sid = {p}" + ("" if sqlite else " FOR UPDATE")
            ),
            unpack=None if sqlite else _unpack_mysql if mysql else _unpack_postgres,
            insert=(
                f"INSERT INTO {t} (sid, {COLUMNS}) VALUES ({p}, {p}, {p}, {p}, {p}, {p}, {p}, 1)"
                + conflict
            ),
            insert_ignores_conflict=not mysql,
            update=(
                f"UPDATE {t} SET payload = {p}, user_id = {p}, last_seen_at = {p}, "
                f"expires_at = {p}, idle_timeout = {p}, version = version + 1 "
                f"WHERE sid = {p} AND version = {p}"
            ),
            # Without user_id: SET on an indexed column rewrites its index entry even
            # when the value is unchanged, which costs a third of a write on SQLite.
            update_data=(
                f"UPDATE {t} SET payload = {p}, last_seen_at = {p}, expires_at = {p}, "
                f"version = version + 1 WHERE sid = {p} AND version = {p}"
            ),
            # A new id is the same row under a new key, not a new row: see
            # Writer._regenerate_once. The guard turns a taken id into 0 rows
            # (a failed UPDATE would abort a PostgreSQL transaction); MySQL cannot read
            # the table it updates (error 1093), and raises a duplicate key instead.
            regenerate=(
                f"UPDATE {t} SET sid = {p}, payload = {p}, user_id = {p}, last_seen_at = {p}, "
                f"expires_at = {p}, idle_timeout = {p}, version = 1 "
                f"WHERE sid = {p} AND version = {p}"
                + ("" if mysql else f" AND NOT EXISTS (SELECT 1 FROM {t} WHERE sid = {p})")
            ),
            touch=f"UPDATE {t} SET last_seen_at = {p}, expires_at = {p} WHERE sid = {p}",
            delete=f"DELETE FROM {t} WHERE sid = {p}",
            expire_batch=expire,
            expire_listed=listed,
            expire_left=f"SELECT 1 FROM {t} WHERE expires_at <= {p} LIMIT 1",
            expire_walk=walk,
            expire_probe=probe,
            table_rows=table_rows,
            count_expired=f"SELECT COUNT(*) FROM {t} WHERE expires_at <= {p}",
        )
