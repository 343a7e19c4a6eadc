"""The database: URLs, pools, connections the store owns or borrows, and failures."""

from __future__ import annotations

import os
import stat

import peewee
import pytest
from click.testing import CliRunner
from playhouse import db_url

from storedsession import (
    ConfigurationError,
    SessionStore,
    StoreUnavailable,
    TableMissing,
    generate_key,
    ids,
)
from storedsession.cli import cli

from .support import backend_url


def test_url_built_sqlite_uses_wal_and_a_busy_timeout(tmp_path, keys) -> None:
    store = SessionStore(f"sqlite:///{tmp_path}/s.db", keys=keys)
    with store.connected():
        assert store.database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.database.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 1000
    store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres", "mysql"])
def test_pooled_urls_work(backend, tmp_path, keys, table_name) -> None:
    url = backend_url(backend, tmp_path)
    scheme, rest = url.split("://", 1)
    store = SessionStore(f"{scheme}+pool://{rest}", keys=keys, table_name=table_name)
    try:
        store.create_table()
        session = store.load(None)
        session["a"] = 1
        store.save(session)
        assert store.load(session.id)["a"] == 1
    finally:
        store.drop_table()
        store.close()


def test_store_closes_only_the_connections_it_opened(database_url, keys, table_name) -> None:
    database = db_url.connect(database_url)
    store = SessionStore(database, keys=keys, table_name=table_name)
    try:
        store.create_table()
        assert database.is_closed()  # opened for the call, closed after it
        database.connect()
        session = store.load(None)
        session["a"] = 1
        store.save(session)
        store.load(session.id)
        assert not database.is_closed()  # the application's connection stays open
        database.close()
        store.load(session.id)
        assert database.is_closed()
    finally:
        store.drop_table()
        database.close()


def test_an_app_database_and_sessions_apart(tmp_path, keys) -> None:
    app_db = peewee.SqliteDatabase(str(tmp_path / "app.db"))
    store = SessionStore(f"sqlite:///{tmp_path}/sessions.db", keys=keys)
    store.create_table()
    assert app_db.get_tables() == []
    assert store.database.get_tables() == ["stored_sessions"]
    store.close()


@pytest.mark.slow
@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:s3cr%40t-pw@127.0.0.1:1/test",
        "mysql://root:s3cr%40t-pw@127.0.0.1:1/test",
    ],
)
def test_unreachable_server_is_store_unavailable_without_password(url, keys) -> None:
    store = SessionStore(url, keys=keys)
    for call in (lambda: store.load(ids.new_public_id()), store.create_table):
        with pytest.raises(StoreUnavailable) as info:
            call()
        assert isinstance(info.value.__cause__, peewee.PeeweeException)
        assert "s3cr" not in str(info.value)
    session = store.load(None)  # no cookie: no query, no error
    session["a"] = 1
    with pytest.raises(StoreUnavailable):
        store.save(session)
    assert session.new and session.id is None  # no id points at a session not stored


@pytest.mark.parametrize(
    "url",
    [
        "nosuchdb://user:s3cr3t-pw@host/db",
        "postgresql://user:s3cr3t-pw@host",
        "sqlite://",
    ],
)
def test_bad_urls_are_configuration_errors_without_password(url, keys) -> None:
    with pytest.raises(ConfigurationError) as info:
        SessionStore(url, keys=keys)
    assert "s3cr3t" not in str(info.value)


def test_bad_options_are_configuration_errors(tmp_path, keys) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    for options in (
        {"table_name": "x; DROP TABLE y"},
        {"table_name": ""},
        {"max_size": 0},
        {"max_size": "1MB"},
        {"idle_timeout": -5},
        {"touch_interval": "often"},
    ):
        with pytest.raises(ConfigurationError):
            SessionStore(url, keys=keys, **options)
    with pytest.raises(ConfigurationError):
        SessionStore(42, keys=keys)  # type: ignore[arg-type]


def test_missing_table_names_the_fix(database_url, keys, table_name) -> None:
    store = SessionStore(database_url, keys=keys, table_name=table_name)
    with pytest.raises(TableMissing) as info:
        store.load(ids.new_public_id())
    assert "create_table()" in str(info.value) and "storedsession init" in str(info.value)
    session = store.load(None)
    session["a"] = 1
    with pytest.raises(TableMissing):
        store.save(session)
    assert isinstance(info.value, StoreUnavailable)
    store.close()


def test_create_table_is_idempotent(store: SessionStore) -> None:
    store.create_table()
    store.create_table()
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    store.create_table()
    assert store.load(session.id)["a"] == 1


def test_mysql_max_size_beyond_max_allowed_packet(tmp_path, keys, table_name) -> None:
    url = backend_url("mysql", tmp_path)
    store = SessionStore(url, keys=keys, table_name=table_name, max_size=64 * 1024 * 1024)
    try:
        with pytest.raises(ConfigurationError, match="max_allowed_packet"):
            store.create_table()
    finally:
        store.drop_table()
        store.close()


def test_mysql_payload_column_is_longblob(tmp_path, keys, table_name) -> None:
    url = backend_url("mysql", tmp_path)
    store = SessionStore(url, keys=keys, table_name=table_name)
    try:
        store.create_table()
        with store.connected():
            row = store.database.execute_sql(
                "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
                "DATABASE() AND TABLE_NAME = %s AND COLUMN_NAME = 'payload'",
                (table_name,),
            ).fetchone()
        assert row[0].lower() == "longblob"
    finally:
        store.drop_table()
        store.close()


@pytest.mark.parametrize("backend", ["postgres", "mysql"])
def test_reconnects_after_the_server_killed_the_connection(
    backend, tmp_path, keys, table_name
) -> None:
    url = backend_url(backend, tmp_path)
    scheme, rest = url.split("://", 1)
    store = SessionStore(f"{scheme}+pool://{rest}", keys=keys, table_name=table_name)
    admin = db_url.connect(url)
    try:
        store.create_table()
        session = store.load(None)
        session["a"] = 1
        store.save(session)
        with store.connected():
            if backend == "postgres":
                pid = store.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
            else:
                pid = store.database.execute_sql("SELECT CONNECTION_ID()").fetchone()[0]
        with admin.connection_context():
            if backend == "postgres":
                admin.execute_sql("SELECT pg_terminate_backend(%s)", (pid,))
            else:
                admin.execute_sql(f"KILL {int(pid)}")
        # The pooled connection is dead now: at most one request sees StoreUnavailable,
        # and the store recovers by itself.
        results = []
        for _ in range(3):
            try:
                results.append(store.load(session.id).get("a"))
            except StoreUnavailable:
                results.append("unavailable")
        assert results[-1] == 1 and results.count("unavailable") <= 1
    finally:
        store.drop_table()
        store.close()
        admin.close()


def test_store_works_with_a_second_key_generation(make_store) -> None:
    store = make_store(keys=[generate_key(), generate_key()])
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    assert store.load(session.id)["a"] == 1


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_sqlite_files_the_store_creates_are_owner_only(tmp_path, keys) -> None:
    previous = os.umask(0o022)
    try:
        path = tmp_path / "sessions.db"
        store = SessionStore(f"sqlite:///{path}", keys=keys)
        store.create_table()
        with store.connected():  # WAL: the -wal and -shm files exist while connected
            session = store.load(None)
            session["a"] = 1
            store.save(session)
            created = {p.name: _mode(p) for p in tmp_path.iterdir()}
        store.close()
        assert created == {"sessions.db": 0o600, "sessions.db-wal": 0o600, "sessions.db-shm": 0o600}

        # The CLI's store too; a file that exists keeps the mode its owner gave it.
        other = tmp_path / "cli.db"
        assert CliRunner().invoke(cli, ["init", "--database", f"sqlite:///{other}"]).exit_code == 0
        assert _mode(other) == 0o600
        shared = tmp_path / "shared.db"
        shared.touch(mode=0o640)
        os.chmod(shared, 0o640)
        store = SessionStore(f"sqlite:///{shared}", keys=keys)
        store.create_table()
        store.close()
        assert _mode(shared) == 0o640
    finally:
        os.umask(previous)


def test_peewees_query_log_shows_the_stores_statements(make_store, caplog) -> None:
    # The store runs its statements on the driver's cursor when nobody watches; once
    # peewee's log is at DEBUG, they go through peewee and show there as always.
    store = make_store()
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    with caplog.at_level("DEBUG", logger="peewee"):
        assert store.load(session.id)["a"] == 1
    assert any(store._sql.select in record.getMessage() for record in caplog.records)


def test_a_database_with_its_own_execute_sql_runs_every_statement_through_it(
    tmp_path, keys, table_name
) -> None:
    class Watched(peewee.SqliteDatabase):
        def execute_sql(self, sql: str, params: object = None) -> object:
            seen.append(sql)
            return super().execute_sql(sql, params)

    seen: list[str] = []
    database = Watched(str(tmp_path / "watched.db"))
    store = SessionStore(database, keys=keys, table_name=table_name)
    store.create_table()
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    seen.clear()
    with database.connection_context():
        assert store.load(session.id)["a"] == 1
    assert seen == [store._sql.select]


def test_one_statement_reaches_the_driver_per_load(tmp_path, keys, table_name) -> None:
    # Counted by SQLite itself, below peewee: the direct path runs what peewee would.
    store = SessionStore(f"sqlite:///{tmp_path}/traced.db", keys=keys, table_name=table_name)
    store.create_table()
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    traced: list[str] = []
    with store.connected():
        store.database.connection().set_trace_callback(traced.append)
        for _ in range(5):
            assert store.load(session.id)["a"] == 1
        store.database.connection().set_trace_callback(None)
    assert len(traced) == 5 and all(line.startswith("SELECT") for line in traced)
    store.close()
