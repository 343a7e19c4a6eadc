"""User ids are compared exactly on every backend: case, accents and trailing spaces count.

MySQL/MariaDB compare text with the column's collation, and the server default
(``utf8mb4_general_ci``) finds ``'abc123' = 'AbC123' = 'abc123 ' = 'àbc123'`` and every
emoji equal to every other; a table created so by an earlier version is reported by
``storedsession init`` and upgraded online by ``storedsession init --upgrade``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import peewee
import pytest
from click.testing import CliRunner, Result
from playhouse import db_url

from storedsession import Session, SessionStore, SessionTable, StoreUnavailable, schema
from storedsession.cli import cli
from storedsession.schema import migration_source

from .support import backend_url

#: Ids that a case- and accent-insensitive PAD SPACE collation takes for one another.
LOOKALIKES = [
    "abc123",
    "AbC123",
    "ABC123",
    "abc123 ",
    "àbc123",
    "abc123\t",
    "😀",
    "😃",
    "用户",
    "用戶",
    "👩\u200d💻",
    "straße",
    "strasse",
]


def _login(store: SessionStore, user_id: str) -> Session:
    session = store.load(None)
    session["user"] = user_id
    session.user_id = user_id
    store.save(session)
    return session


def _check_exact(store: SessionStore, ids: list[str]) -> None:
    """Each id lists, revokes and signs out only its own sessions."""
    with store.connected():  # one connection for the ~200 statements
        _check_exact_connected(store, ids)


def _check_exact_connected(store: SessionStore, ids: list[str]) -> None:
    sessions = {user_id: _login(store, user_id) for user_id in ids}
    for user_id, session in sessions.items():
        loaded = store.load(session.id)
        assert loaded.user_id == user_id and loaded["user"] == user_id
        assert [info.handle for info in store.sessions_for(user_id)] == [session.handle]
    for user_id, session in sessions.items():
        for other in ids:
            if other != user_id:
                assert not store.revoke(session.handle, user_id=other), (user_id, other)
    assert all(not store.load(s.id).new for s in sessions.values())
    first, second, *rest = ids
    assert store.revoke_user(first) == 1
    assert store.load(sessions[first].id).new
    assert all(not store.load(sessions[u].id).new for u in [second, *rest])
    assert store.revoke(sessions[second].handle, user_id=second)
    assert all(not store.load(sessions[u].id).new for u in rest)
    assert store.revoke_user(rest[0]) == 1
    assert sorted(store.sessions_for(u)[0].handle for u in rest[1:]) == sorted(
        sessions[u].handle for u in rest[1:]
    )


def test_user_ids_compare_exactly(store: SessionStore) -> None:
    _check_exact(store, LOOKALIKES)


# -- MySQL/MariaDB: the column --------------------------------------------------------
def _column(store: SessionStore) -> tuple[str, str]:
    with store.connected():
        row = store.database.execute_sql(
            "SELECT CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = 'user_id'",
            (store.table_name,),
        ).fetchone()
    return row[0], row[1]


def test_mysql_user_id_column_is_a_no_pad_binary_collation(tmp_path, keys, table_name) -> None:
    store = SessionStore(backend_url("mysql", tmp_path), keys=keys, table_name=table_name)
    try:
        store.create_table()
        with store.connected():
            version = store.database.execute_sql("SELECT VERSION()").fetchone()[0]
        expected = "utf8mb4_nopad_bin" if "mariadb" in version.lower() else "utf8mb4_0900_bin"
        assert _column(store) == ("utf8mb4", expected)
    finally:
        store.drop_table()
        store.close()


@pytest.fixture
def latin1_database(tmp_path) -> Iterator[str]:
    """A MySQL/MariaDB database whose default character set is latin1; its URL."""
    url = backend_url("mysql", tmp_path)
    name = f"ss_latin1_{uuid.uuid4().hex[:12]}"
    admin = db_url.connect(url)
    with admin.connection_context():
        admin.execute_sql(f"CREATE DATABASE {name} CHARACTER SET latin1 COLLATE latin1_swedish_ci")
    try:
        yield url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connection_context():
            admin.execute_sql(f"DROP DATABASE {name}")
        admin.close()


def test_mysql_a_latin1_server_stores_any_user_id(latin1_database, keys, table_name) -> None:
    store = SessionStore(latin1_database, keys=keys, table_name=table_name)
    try:
        store.create_table()
        assert _column(store)[0] == "utf8mb4"
        _check_exact(store, LOOKALIKES)
    finally:
        store.drop_table()
        store.close()


# -- MySQL/MariaDB: a table created by an earlier version -----------------------------
def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), env={"STOREDSESSION_DATABASE_URL": None})


def create_old_table(store: SessionStore, charset: str | None = None) -> None:
    """Create the table with the DDL of earlier versions (the frozen first migration)."""
    namespace: dict[str, Any] = {}
    exec(compile(migration_source(store.table_name, "old"), "0001_create", "exec"), namespace)
    with store.connected():
        namespace["up"](None, store.database)
        if charset is not None:  # as on a server whose default character set is `charset`
            quoted = store.database.quote[0] + store.table_name + store.database.quote[1]
            store.database.execute_sql(f"ALTER TABLE {quoted} CONVERT TO CHARACTER SET {charset}")


@pytest.fixture
def old_table(tmp_path, keys, table_name) -> Iterator[Callable[..., SessionStore]]:
    """Build a store on a MySQL/MariaDB table created the old way; dropped afterwards."""
    built: list[SessionStore] = []

    def make(charset: str | None = None) -> SessionStore:
        store = SessionStore(backend_url("mysql", tmp_path), keys=keys, table_name=table_name)
        built.append(store)
        create_old_table(store, charset)
        return store

    yield make
    for store in built:
        store.drop_table()
        store.close()


def _statement(store: SessionStore, collation: str) -> str:
    return (
        f"ALTER TABLE `{store.table_name}` MODIFY `user_id` VARCHAR(255) CHARACTER SET "
        f"utf8mb4 COLLATE {collation} NULL"
    )


def test_mysql_old_table_still_compares_exactly_in_python(old_table) -> None:
    store = old_table()
    assert _column(store) == ("utf8mb4", "utf8mb4_general_ci")
    _check_exact(store, ["abc123", "AbC123", "abc123 ", "àbc123", "😀", "😃"])


def test_mysql_init_reports_and_upgrades_an_old_table(old_table, table_name) -> None:
    store = old_table()
    kept = {user_id: _login(store, user_id) for user_id in ("abc123", "AbC123", "😀")}
    db = ["--database", backend_url("mysql", None), "--table", table_name]

    report = invoke("init", *db)
    assert report.exit_code == 0, report.output
    statement = _statement(store, "utf8mb4_nopad_bin") + ", ALGORITHM=NOCOPY, LOCK=NONE;"
    assert f"The session table {table_name!r} exists already." in report.stdout
    assert "utf8mb4_general_ci" in report.stdout and "init --upgrade" in report.stdout
    assert statement in report.stdout.splitlines()
    assert _column(store) == ("utf8mb4", "utf8mb4_general_ci")  # reported, not changed

    upgraded = invoke("init", "--upgrade", *db)
    assert upgraded.exit_code == 0, upgraded.output
    assert "Upgraded the user_id column" in upgraded.stdout
    assert _column(store) == ("utf8mb4", "utf8mb4_nopad_bin")
    for user_id, session in kept.items():  # nobody was signed out
        assert store.load(session.id).user_id == user_id
    again = invoke("init", *db)
    assert again.stdout == f"The session table {table_name!r} exists already.\n"
    nothing = invoke("init", "--upgrade", *db)
    assert "nothing to upgrade" in nothing.stdout
    store.revoke_user("abc123")
    store.revoke_user("AbC123")
    store.revoke_user("😀")
    _check_exact(store, LOOKALIKES)


def test_mysql_upgrade_refuses_to_copy_a_latin1_table(old_table, table_name) -> None:
    store = old_table("latin1")
    assert _column(store)[0] == "latin1"
    session = _login(store, "àbc123")
    broken = store.load(None)
    broken["a"] = 1
    broken.user_id = "用户"  # latin1 cannot hold it
    with pytest.raises(StoreUnavailable):
        store.save(broken)
    db = ["--database", backend_url("mysql", None), "--table", table_name]
    report = invoke("init", *db)
    assert report.exit_code == 0 and "latin1" in report.stdout

    refused = invoke("init", "--upgrade", *db)
    assert refused.exit_code == 1, refused.output
    assert refused.stdout == "" and "Traceback" not in refused.output
    [line] = refused.stderr.splitlines()
    assert line.startswith("Error: ") and "copy the table" in line and "nothing was changed" in line
    assert _column(store)[0] == "latin1"
    # The statement for a maintenance window, as printed, works.
    statement = re.search(r"ALTER TABLE .*?;", line)
    assert statement is not None and "ALGORITHM" not in statement.group()
    assert statement.group() == _statement(store, "utf8mb4_nopad_bin") + ";"
    with store.connected():
        store.database.execute_sql(statement.group())
    assert _column(store) == ("utf8mb4", "utf8mb4_nopad_bin")
    assert store.load(session.id).user_id == "àbc123"
    assert invoke("init", *db).stdout == f"The session table {table_name!r} exists already.\n"
    store.revoke_user("àbc123")
    _check_exact(store, LOOKALIKES)


def test_mysql_upgrade_gives_up_while_a_long_transaction_holds_the_table(
    old_table, table_name, monkeypatch
) -> None:
    store = old_table()
    monkeypatch.setattr(schema, "UPGRADE_LOCK_WAIT", 1)
    other = db_url.connect(backend_url("mysql", None))
    db = ["--database", backend_url("mysql", None), "--table", table_name]
    try:
        with other.connection_context(), other.atomic():
            other.execute_sql(f"SELECT COUNT(*) FROM `{table_name}`").fetchone()
            result = invoke("init", "--upgrade", *db)
    finally:
        other.close()
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output and "Lock wait timeout" in result.stderr
    assert _column(store) == ("utf8mb4", "utf8mb4_general_ci")
    assert invoke("init", "--upgrade", *db).exit_code == 0
    assert _column(store) == ("utf8mb4", "utf8mb4_nopad_bin")


# -- every backend: init --upgrade ----------------------------------------------------
def test_init_upgrade_creates_or_leaves_a_current_table(database_url, table_name) -> None:
    db = ["--database", database_url, "--table", table_name]
    try:
        created = invoke("init", "--upgrade", *db)
        assert created.stdout == f"Created the session table {table_name!r}.\n"
        current = invoke("init", "--upgrade", *db)
        assert current.exit_code == 0
        assert current.stdout.startswith(f"The session table {table_name!r} exists already.\n")
        assert "nothing to upgrade" in current.stdout
    finally:
        table = SessionTable(database_url, table_name)
        table.drop_table()
        table.close()


def test_collation_for_each_server_version() -> None:
    from storedsession.models import mysql_user_id_collation

    def on(version: tuple[int, ...], mariadb: bool = False) -> str:
        database = peewee.MySQLDatabase(None)
        database.server_version, database.mariadb = version, mariadb
        return mysql_user_id_collation(database)

    assert on((10, 11, 19)) == "utf8mb4_nopad_bin"
    assert on((11, 4, 2)) == "utf8mb4_nopad_bin"
    assert on((10, 2, 2)) == "utf8mb4_nopad_bin"
    assert on((10, 1, 48)) == "utf8mb4_bin"  # MariaDB before NO PAD collations
    assert on((8, 0, 36)) == "utf8mb4_0900_bin"
    assert on((8, 4, 0)) == "utf8mb4_0900_bin"
    assert on((9, 1, 0)) == "utf8mb4_0900_bin"
    assert on((8, 0, 16)) == "utf8mb4_bin"  # MySQL before utf8mb4_0900_bin
    assert on((5, 7, 44)) == "utf8mb4_bin"


def test_mysql_upgrade_migration_refuses_to_copy_a_latin1_table(
    old_table, table_name, tmp_path
) -> None:
    from playhouse import migrations

    store = old_table("latin1")
    directory = tmp_path / "migrations"
    directory.mkdir()
    path = directory / f"0002_exact_user_id_{table_name}.py"
    path.write_text(schema.upgrade_migration_source(table_name, "test"))
    history = table_name + "_history"
    runner = migrations.Runner(store.database, str(directory), table_name=history)
    try:
        with store.connected():
            with pytest.raises(RuntimeError, match="maintenance window") as info:
                runner.up()
            assert "would copy the table" in str(info.value)
            assert runner.applied() == {}
        assert _column(store)[0] == "latin1"
    finally:
        with store.connected():
            runner.History.drop_table(safe=True)
