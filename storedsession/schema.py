"""The session table's schema over time: its migrations, and the upgrades ``init`` makes.

``storedsession install-migration`` writes :func:`migration_source` (frozen: it creates
the table as the first version did) and :func:`upgrade_migration_source` to files;
``storedsession init`` reports (:func:`user_id_column`) and, with ``--upgrade``, makes
(:func:`upgrade_user_id`) the change that a table of an earlier version needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import peewee

from .database import is_mysql
from .exceptions import ConfigurationError
from .models import check_table_name, is_mariadb, mysql_user_id_collation, mysql_user_id_type
from .table import SessionTable

# -- migrations --------------------------------------------------------------------------
# The first one is frozen: projects have applied it, so its text never changes (a test
# holds its digest); every later change to the table is a migration of its own.
_MIGRATION = '''\
"""Create the session table %(table)r of storedsession.

Written by `storedsession install-migration` (storedsession %(version)s) for peewee's
migration runner. The table is declared here, frozen, rather than imported, so that this
file keeps creating the same table whatever storedsession becomes.
"""
from peewee import *


class LongBlobField(BlobField):
    # On MySQL/MariaDB a plain BLOB holds 64 KiB at most; sessions may be larger.
    def ddl_datatype(self, ctx):
        if isinstance(self.model._meta.database, MySQLDatabase):
            return SQL("LONGBLOB")
        return super().ddl_datatype(ctx)


def up(migrator, db):
    class StoredSession(Model):
        sid = FixedCharField(64, primary_key=True)
        payload = LongBlobField()
        user_id = CharField(255, null=True, index=True)
        created_at = BigIntegerField()
        last_seen_at = BigIntegerField()
        expires_at = BigIntegerField(null=True, index=True)
        idle_timeout = IntegerField(null=True)
        version = BigIntegerField(default=1)

        class Meta:
            database = db
            table_name = %(table)r
            legacy_table_names = False  # indexes named after the table

    db.create_tables([StoredSession])


def down(migrator, db):
    migrator.migrate(migrator.drop_table(%(table)r))
'''


def migration_source(table_name: str, version: str) -> str:
    """Return a migration for ``playhouse.migrations`` that creates the session table.

    Frozen: projects have applied it, so its text never changes (a test holds it), and
    changes to the table go in later migrations such as :func:`upgrade_migration_source`.
    It imports nothing from storedsession.
    """
    return _MIGRATION % {"table": check_table_name(table_name), "version": version}


_UPGRADE_MIGRATION = '''\
"""Make the user_id column of the session table %(table)r compare user ids exactly.

Written by `storedsession install-migration` (storedsession %(version)s) for peewee's
migration runner, to run after the migration that creates the table. On MySQL/MariaDB
that migration leaves user_id in the server's default collation, which finds
'abc123' = 'AbC123' = 'abc123 '; this gives it a binary NO PAD collation of utf8mb4,
online (the server refuses rather than copy the table or block writes). PostgreSQL and
SQLite compare exactly already: nothing to do there.

If the server refuses (a latin1 column needs a copy), this migration fails and prints a
statement: run it in a maintenance window, then record this migration as applied
(`pwmigrate ... fake`, or `Runner.fake()`). Like the first, it imports nothing from
storedsession, so that it keeps doing the same whatever storedsession becomes.
"""
from peewee import DatabaseError, MySQLDatabase

TABLE = %(table)r
# Seconds to wait for running transactions on the table before giving up: queries that
# arrive meanwhile wait behind the change.
LOCK_WAIT = 5


def _collation(db):
    version = tuple(db.server_version or ())
    if db.mariadb or version >= (10,):  # Oracle MySQL has no 10.x
        return "utf8mb4_nopad_bin" if version >= (10, 2, 2) else "utf8mb4_bin"
    return "utf8mb4_0900_bin" if version >= (8, 0, 17) else "utf8mb4_bin"


def up(migrator, db):
    if not isinstance(db, MySQLDatabase):
        return
    collation = _collation(db)
    current = db.execute_sql(
        "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %%s AND COLUMN_NAME = 'user_id'",
        (TABLE,),
    ).fetchone()
    if current is None or tuple(current) == ("utf8mb4", collation):
        return
    version = tuple(db.server_version or ())
    nocopy = (db.mariadb or version >= (10,)) and version >= (10, 3, 7)
    statement = (
        f"ALTER TABLE `{TABLE}` MODIFY `user_id` VARCHAR(255) CHARACTER SET utf8mb4 "
        f"COLLATE {collation} NULL"
    )
    online = f"ALGORITHM={'NOCOPY' if nocopy else 'INPLACE'}, LOCK=NONE"
    previous = db.execute_sql("SELECT @@SESSION.lock_wait_timeout").fetchone()[0]
    db.execute_sql(f"SET SESSION lock_wait_timeout = {LOCK_WAIT}")
    try:
        db.execute_sql(f"{statement}, {online}")
    except DatabaseError as exc:
        if exc.args and exc.args[0] in (1845, 1846):
            raise RuntimeError(
                f"The server cannot change the user_id column of {TABLE!r} online "
                f"({exc.args[-1]}): it would copy the table. Run this in a maintenance "
                f"window, then mark this migration as applied: {statement};"
            ) from None
        raise
    finally:
        db.execute_sql(f"SET SESSION lock_wait_timeout = {int(previous)}")


def down(migrator, db):
    # Nothing to undo: comparing user ids loosely again would only bring the bug back.
    pass
'''


def upgrade_migration_source(table_name: str, version: str) -> str:
    """Return the migration that makes an existing table compare user ids exactly.

    The second migration ``install-migration`` writes: on MySQL/MariaDB it changes the
    ``user_id`` column that :func:`migration_source` made (the server's default collation)
    to the one :class:`storedsession.models.UserIdField` declares, online.
    """
    return _UPGRADE_MIGRATION % {"table": check_table_name(table_name), "version": version}


# -- user_id compared exactly (MySQL/MariaDB) ---------------------------------------------
#: Seconds the upgrade waits for transactions on the table to end before it gives up: the
#: server queues queries arriving on the table behind the waiting change.
UPGRADE_LOCK_WAIT = 5

#: "ALGORITHM=... is not supported" and "... not supported. Reason: ...": the server would
#: have to copy the table (or lock it) to make the change.
_NOT_ONLINE = (1845, 1846)


class UpgradeNeedsCopy(ConfigurationError):
    """The server cannot make the change online; ``statement`` makes it with a copy."""

    def __init__(self, message: str, statement: str) -> None:
        super().__init__(message)
        self.statement = statement


@dataclass(frozen=True)
class UserIdColumn:
    """The ``user_id`` column of a MySQL/MariaDB session table, as it is and should be."""

    table: str
    charset: str | None
    collation: str | None
    wanted: str  #: the collation that compares exactly on this server
    column_type: str  #: the column's type with that collation
    online: str  #: the ALGORITHM and LOCK clause that keeps the change online

    @property
    def exact(self) -> bool:
        """Whether ids are compared exactly already."""
        return (self.charset, self.collation) == ("utf8mb4", self.wanted)

    def statement(self, online: bool = True) -> str:
        """Return the ALTER TABLE that makes the column exact (online, or with a copy)."""
        sql = f"ALTER TABLE `{self.table}` MODIFY `user_id` {self.column_type} NULL"
        return f"{sql}, {self.online}" if online else sql


def user_id_column(table: SessionTable) -> UserIdColumn | None:
    """Describe the table's ``user_id`` column; ``None`` where text compares exactly anyway.

    PostgreSQL and SQLite compare text exactly; on MySQL/MariaDB the column's collation
    decides, and tables made by earlier versions took the server's (case-, accent- and
    trailing-space-insensitive) default. Run it inside ``table.connected()``; ``None``
    too when the table does not exist.
    """
    database = table.database
    if not is_mysql(database):
        return None
    row = database.execute_sql(
        "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = 'user_id'",
        (table.table_name,),
    ).fetchone()
    if row is None:
        return None
    version = tuple(database.server_version or ())
    # MariaDB 10.3.7 added NOCOPY: no rebuild of the table, only of the user_id index.
    nocopy = is_mariadb(database) and version >= (10, 3, 7)
    return UserIdColumn(
        table=table.table_name,
        charset=row[0],
        collation=row[1],
        wanted=mysql_user_id_collation(database),
        column_type=mysql_user_id_type(database),
        online=f"ALGORITHM={'NOCOPY' if nocopy else 'INPLACE'}, LOCK=NONE",
    )


def upgrade_user_id(table: SessionTable, column: UserIdColumn) -> None:
    """Make ``column`` compare exactly, online; raise :class:`UpgradeNeedsCopy` if it cannot.

    ``LOCK=NONE`` makes the server refuse rather than block writes, and the algorithm
    clause makes it refuse rather than copy the table (which a latin1 column needs).
    Waiting for the table's running transactions gives up after
    :data:`UPGRADE_LOCK_WAIT` seconds (raising :class:`StoreUnavailable`), so that live
    queries do not queue behind the change for long.
    """
    with table.connected() as database:
        previous = database.execute_sql("SELECT @@SESSION.lock_wait_timeout").fetchone()[0]
        database.execute_sql(f"SET SESSION lock_wait_timeout = {int(UPGRADE_LOCK_WAIT)}")
        try:
            database.execute_sql(column.statement())
        except peewee.DatabaseError as exc:
            code = exc.args[0] if exc.args else None
            if code not in _NOT_ONLINE:
                raise
            reason = str(exc.args[1] if len(exc.args) > 1 else exc)
            reason = reason.partition("Reason: ")[2] or reason
            reason = reason.split(". Try ")[0].rstrip(".")
            offline = column.statement(online=False) + ";"
            raise UpgradeNeedsCopy(
                f"The server cannot change the user_id column of {column.table!r} online "
                f"({reason}): it would copy the table, blocking writes meanwhile; nothing "
                "was changed. Run this in a maintenance window, when writes to the table "
                f"can wait for the copy: {offline}",
                offline,
            ) from None
        finally:
            database.execute_sql(f"SET SESSION lock_wait_timeout = {int(previous)}")
