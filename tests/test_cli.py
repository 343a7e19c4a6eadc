"""The command line, through click's CliRunner and the installed console scripts."""

from __future__ import annotations

import hashlib
import os
import pty
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import peewee
import pytest
from click.testing import CliRunner, Result
from playhouse import migrations

from storedsession import Session, SessionStore, SessionTable, __version__, generate_key
from storedsession.cli import cli
from storedsession.keys import parse_keys
from storedsession.maintenance import RowOutcome, StoredRow, rotate_keys, rotate_row
from storedsession.schema import migration_source

from .support import FakeClock, fetch_rows
from .vectors import generate

BIN = Path(sys.executable).parent
#: A server that refuses connections, with a percent-encoded password ("s3cr@t").
SECRET_URLS = {
    "postgres": "postgresql://postgres:s3cr%40t@127.0.0.1:1/test",
    "mysql": "mysql://root:s3cr%40t@127.0.0.1:1/test",
}
DB_COMMANDS = [["init"], ["expire"], ["expire", "--dry-run"], ["stats"], ["rotate-keys"]]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    """Run ``storedsession ARGS`` in-process, with no STOREDSESSION_* settings but ``env``."""
    clean: dict[str, str | None] = {"STOREDSESSION_KEYS": None, "STOREDSESSION_DATABASE_URL": None}
    return CliRunner().invoke(cli, list(args), env={**clean, **(env or {})})


def script(
    name: str, *args: str, env: dict[str, str] | None = None, **options: Any
) -> subprocess.CompletedProcess[str]:
    """Run an installed console script, with no STOREDSESSION_* settings but ``env``."""
    path = BIN / name
    assert path.exists(), f"{path} is missing: pip install -e '.[test]'"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("STOREDSESSION_")}
    options.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(
        [str(path), *args],
        env={**clean, **(env or {})},
        text=True,
        stderr=subprocess.PIPE,
        timeout=120,
        check=False,
        **options,
    )


def assert_ok(result: Result, stdout: str | None = None) -> None:
    assert result.exit_code == 0, result.output
    assert result.exception is None
    if stdout is not None:
        assert result.stdout == stdout


def assert_error(result: Result, code: int, *phrases: str) -> str:
    """The command failed with ``code`` and one line on stderr; return that line."""
    assert result.exit_code == code, result.output
    assert isinstance(result.exception, SystemExit)  # not an uncaught exception
    assert "Traceback" not in result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]
    return lines[0]


def add(store: SessionStore, count: int, user_id: str | None = None) -> list[Session]:
    sessions = []
    for number in range(count):
        session = store.load(None)
        session["n"] = number
        session.user_id = user_id
        store.save(session)
        sessions.append(session)
    return sessions


def handles(store: SessionStore) -> set[str]:
    return {row[0] for row in fetch_rows(store)}


def key_id(key: str) -> str:
    return parse_keys(key)[0].key_id.hex()


def raw(store: SessionStore, statement: str, *params: Any) -> None:
    """Run one statement on the session table (``{t}`` is its name, ``?`` a parameter)."""
    database = store.database
    table = database.quote[0] + store.table_name + database.quote[1]
    with store.connected():
        database.execute_sql(statement.replace("{t}", table).replace("?", database.param), params)


def to_format_1(store: SessionStore, key: str, session: Session) -> None:
    """Rewrite a stored session's payload in format 1, as an older release left it."""
    plaintext = b'{"n":%d}' % session["n"]
    payload = generate.seal_v1(
        key, os.urandom(16), os.urandom(12), store.table_name, session.handle or "", plaintext
    )
    raw(store, "UPDATE {t} SET payload = ? WHERE sid = ?", payload, session.handle)


@pytest.fixture
def db(database_url: str, table_name: str) -> list[str]:
    """The options that point a command at the test's table."""
    return ["--database", database_url, "--table", table_name]


@pytest.fixture
def drop_after(database_url: str, table_name: str) -> Iterator[Callable[[str], None]]:
    """Drop tables the commands create: the test's own, and any named to this."""
    tables = [table_name]
    yield tables.append
    for name in tables:
        table = SessionTable(database_url, name)
        table.drop_table()
        table.close()


@pytest.fixture
def live(make_store: Callable[..., SessionStore]) -> SessionStore:
    """A store on the test's table that runs on real time, as the CLI does."""
    return make_store(clock=None)


@pytest.fixture
def past(make_store: Callable[..., SessionStore], clock: FakeClock) -> SessionStore:
    """A store whose sessions expired long ago in real time (14 days idle, 60 days back)."""
    clock.now = datetime.now(UTC) - timedelta(days=60)
    return make_store()


# -- init -----------------------------------------------------------------------------
def test_init_creates_the_table_once(db, database_url, table_name, keys, drop_after) -> None:
    assert_ok(invoke("init", *db), f"Created the session table {table_name!r}.\n")
    assert_ok(invoke("init", *db), f"The session table {table_name!r} exists already.\n")
    store = SessionStore(database_url, keys=keys, table_name=table_name)
    [session] = add(store, 1)
    assert store.load(session.id)["n"] == 0
    store.close()


def test_init_indexes_each_table_beside_another(db, database_url, table_name, drop_after) -> None:
    other = table_name + "_b"
    drop_after(other)
    assert_ok(invoke("init", *db))
    assert_ok(invoke("init", "--database", database_url, "--table", other))
    database = SessionTable(database_url).database
    for name in (table_name, other):
        indexed = {tuple(index.columns) for index in database.get_indexes(name)}
        assert {("expires_at",), ("user_id",)} <= indexed, name
    database.close()


# -- expire ---------------------------------------------------------------------------
def test_expire_removes_exactly_the_expired_sessions(db, past, live, make_store) -> None:
    expired = {s.handle for s in add(past, 3)}
    forever = make_store(clock=None, idle_timeout=None, absolute_timeout=None)
    kept = {s.handle for s in add(live, 2) + add(forever, 1)}
    assert_ok(invoke("expire", "--batch-size", "2", *db), "Expired 3 sessions.\n")
    assert handles(live) == kept and not expired & kept
    assert_ok(invoke("expire", *db), "No sessions to expire.\n")


def test_dry_run_counts_and_removes_none(db, past, live) -> None:
    add(past, 2)
    add(live, 1)
    before = handles(live)
    assert_ok(invoke("expire", "--dry-run", *db), "Would expire 2 sessions.\n")
    assert handles(live) == before


def test_expire_takes_the_database_from_the_environment(database_url, table_name, past) -> None:
    add(past, 1)
    result = invoke(
        "expire", "--table", table_name, env={"STOREDSESSION_DATABASE_URL": database_url}
    )
    assert_ok(result, "Expired 1 sessions.\n")


@pytest.mark.slow
def test_expire_console_script_needs_no_keys(db, past, live) -> None:
    add(past, 2)
    kept = {s.handle for s in add(live, 1)}
    dry = script("storedsession", "expire", "--dry-run", *db)
    assert (dry.returncode, dry.stdout, dry.stderr) == (0, "Would expire 2 sessions.\n", "")
    done = script("storedsession-expire", *db)
    assert (done.returncode, done.stdout, done.stderr) == (0, "Expired 2 sessions.\n", "")
    assert handles(live) == kept
    again = subprocess.run(
        [sys.executable, "-m", "storedsession", "expire", *db],
        env={k: v for k, v in os.environ.items() if not k.startswith("STOREDSESSION_")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (again.returncode, again.stdout) == (0, "No sessions to expire.\n")


@pytest.mark.parametrize(
    "option",
    [
        ["--max-load", "0"],
        ["--max-load", "1.5"],
        ["--max-load", "-1"],
        ["--max-load", "nan"],
        ["--max-load", "half"],
        ["--max-seconds", "0"],
        ["--max-seconds", "-5"],
        ["--max-seconds", "inf"],
    ],
    ids=" ".join,
)
def test_expire_refuses_a_max_load_or_max_seconds_out_of_range(db, past, option) -> None:
    add(past, 1)
    result = invoke("expire", *option, *db)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option[0]}'" in result.stderr
    assert "Traceback" not in result.output and result.stdout == ""
    assert len(handles(past)) == 1  # nothing deleted


def test_expire_with_max_load_removes_the_same(db, past, live) -> None:
    add(past, 3)
    kept = {s.handle for s in add(live, 1)}
    assert_ok(invoke("expire", "--max-load", "1", *db), "Expired 3 sessions.\n")
    add(past, 2)
    assert_ok(invoke("expire", "--max-load", "0.5", *db), "Expired 2 sessions.\n")
    assert handles(live) == kept


@pytest.mark.slow
def test_expire_max_seconds_stops_cleanly_and_says_how_many(db, past, live) -> None:
    add(past, 200)
    kept = {s.handle for s in add(live, 1)}
    # One row a batch, resting 499 times as long as each took: far more than 0.5 s.
    started = time.monotonic()
    done = script(
        "storedsession-expire",
        "--batch-size",
        "1",
        "--max-load",
        "0.002",
        "--max-seconds",
        "0.5",
        *db,
    )
    assert time.monotonic() - started < 30
    assert done.returncode == 0 and done.stderr == "", done.stderr
    first, second = done.stdout.splitlines()
    found = re.fullmatch(r"Expired (\d+) sessions\.", first)
    assert found, done.stdout
    removed = int(found.group(1))
    assert 0 < removed < 200
    assert second == (
        f"Stopped at --max-seconds 0.5 after removing {removed} sessions; the rest are "
        "left for the next run."
    )
    assert len(handles(live)) == 200 - removed + 1
    assert_ok(invoke("expire", *db), f"Expired {200 - removed} sessions.\n")
    assert handles(live) == kept


def _on_a_terminal(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run a console script with its stdout on a pseudo-terminal; return code and output."""
    leader, follower = pty.openpty()
    try:
        done = script(*args, env=env, stdout=follower)
    finally:
        os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the terminal has no writer left
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return done.returncode, b"".join(chunks).decode()


@pytest.mark.slow
def test_progress_bars_on_a_terminal_only(db, past, live, keys) -> None:
    add(past, 3)
    add(live, 1)
    code, output = _on_a_terminal("storedsession-expire", "--batch-size", "1", *db)
    assert code == 0
    assert "Expiring sessions" in output and "Expired 3 sessions." in output
    new_key = generate_key()
    code, output = _on_a_terminal(
        "storedsession", "rotate-keys", *db, env={"STOREDSESSION_KEYS": f"{new_key},{keys[0]}"}
    )
    assert code == 0
    assert "Re-encrypting sessions" in output and "Re-encrypted 1 session " in output
    # Not on a terminal: the summary alone.
    assert invoke("expire", *db).stdout == "No sessions to expire.\n"


# -- generate-key ---------------------------------------------------------------------
def test_generate_key_prints_a_fresh_key() -> None:
    first = invoke("generate-key")
    assert_ok(first)
    second = script("storedsession", "generate-key")
    assert second.returncode == 0 and second.stderr == ""
    keys = [first.stdout.strip(), second.stdout.strip()]
    assert len(parse_keys(keys)) == 2 and all(len(key) == 44 for key in keys)


# -- rotate-keys ----------------------------------------------------------------------
@pytest.fixture
def rotation_setup(make_store: Callable[..., SessionStore], keys: list[str]) -> dict[str, Any]:
    """Three sessions under the old key, one under the new, one under a foreign key."""
    new_key = generate_key()
    old = add(make_store(clock=None), 3, user_id="7")
    current = add(make_store(clock=None, keys=[new_key, keys[0]]), 1)
    foreign_store = make_store(clock=None, keys=[generate_key()])
    foreign = add(foreign_store, 1)
    return {
        "new_key": new_key,
        "old_key": keys[0],
        "old": old,
        "current": current,
        "foreign": foreign,
        "rows": {row[0]: row for row in fetch_rows(foreign_store)},
    }


def _check_rotated(setup: dict[str, Any], make_store: Callable[..., SessionStore]) -> None:
    only_new = make_store(clock=None, keys=[setup["new_key"]])
    for number, session in enumerate(setup["old"]):
        loaded = only_new.load(session.id)
        assert dict(loaded) == {"n": number} and loaded.user_id == "7"
    assert dict(only_new.load(setup["current"][0].id)) == {"n": 0}
    assert only_new.load(setup["foreign"][0].id).new
    after = {row[0]: row for row in fetch_rows(only_new)}
    for handle, row in setup["rows"].items():
        assert after[handle][-1] == row[-1]  # no version moved
    foreign = setup["foreign"][0].handle
    assert bytes(after[foreign][1]) == bytes(setup["rows"][foreign][1])  # left untouched


def test_rotate_keys_from_the_environment(db, rotation_setup, make_store) -> None:
    env = {"STOREDSESSION_KEYS": f"{rotation_setup['new_key']},{rotation_setup['old_key']}"}
    result = invoke("rotate-keys", "--batch-size", "2", *db, env=env)
    new_id = key_id(rotation_setup["new_key"])
    assert_ok(
        result,
        f"Re-encrypted 3 sessions under the first key (id {new_id}); 1 was under it "
        "already; 1 could not be read with any key and was left untouched.\n",
    )
    _check_rotated(rotation_setup, make_store)
    again = invoke("rotate-keys", *db, env=env)
    assert again.stdout.startswith(f"Re-encrypted 0 sessions under the first key (id {new_id}); 4")


def test_rotate_keys_console_script_with_a_keys_file(
    db, rotation_setup, make_store, tmp_path
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"# newest first\n{rotation_setup['new_key']}\n\n{rotation_setup['old_key']}\n"
    )
    # The file wins over the environment.
    done = script(
        "storedsession",
        "rotate-keys",
        "--keys-file",
        str(keys_file),
        *db,
        env={"STOREDSESSION_KEYS": generate_key()},
    )
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("Re-encrypted 3 sessions under the first key (id ")
    assert "; 1 was under it already;" in done.stdout
    _check_rotated(rotation_setup, make_store)


def test_rotation_never_overwrites_a_live_save(make_store, keys) -> None:
    new_key = generate_key()
    before = make_store(clock=None)  # the application before the new key is deployed
    after = make_store(clock=None, keys=[new_key, keys[0]])  # after; the rotation's keys
    only_new = make_store(clock=None, keys=[new_key])

    def stale(session: Session) -> StoredRow:
        [row] = [row for row in fetch_rows(before) if row[0] == session.handle]
        return StoredRow(row[0], bytes(row[1]), row[2], row[3], row[6], row[7])

    # Saved under the old key after the rotation read it: the row is re-read and rotated.
    [first] = add(before, 1)
    read = stale(first)
    first["n"] = "saved meanwhile"
    before.save(first)
    assert rotate_row(after, read) is RowOutcome.ROTATED
    assert dict(only_new.load(first.id)) == {"n": "saved meanwhile"}

    # Saved under the new key after the rotation read it: that save stands.
    [second] = add(before, 1)
    read = stale(second)
    loaded = after.load(second.id)
    loaded["n"] = "saved under the new key"
    after.save(loaded)
    assert rotate_row(after, read) is RowOutcome.CURRENT
    assert dict(only_new.load(second.id)) == {"n": "saved under the new key"}

    # Loaded before the rotation: the version did not move, so its save goes through.
    [third] = add(before, 1)
    loaded = after.load(third.id)
    assert rotate_row(after, stale(third)) is RowOutcome.ROTATED
    loaded["m"] = 1
    after.save(loaded)
    assert dict(only_new.load(third.id)) == {"n": 0, "m": 1}

    # Deleted meanwhile: not re-created.
    [fourth] = add(before, 1)
    read = stale(fourth)
    before.delete(fourth)
    assert rotate_row(after, read) is RowOutcome.GONE
    assert handles(before) == {first.handle, second.handle, third.handle}


def test_rotation_skips_and_counts_a_row_whose_stored_id_is_not_ascii(db, make_store, keys) -> None:
    new_key = generate_key()
    store = make_store(clock=None)
    [session] = add(store, 1, user_id="7")
    [row] = fetch_rows(store)
    odd = ("é" * 63) + "z"  # written by hand: the store only writes hex ids
    raw(
        store,
        "INSERT INTO {t} (sid, payload, user_id, created_at, last_seen_at, expires_at, "
        "idle_timeout, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        odd,
        *row[1:],
    )
    env = {"STOREDSESSION_KEYS": f"{new_key},{keys[0]}"}
    result = invoke("rotate-keys", "--batch-size", "1", *db, env=env)
    assert_ok(
        result,
        f"Re-encrypted 1 session under the first key (id {key_id(new_key)}); 0 were under "
        "it already; 0 could not be read with any key and were left untouched. 1 had a "
        "stored id that is not ASCII and was skipped.\n",
    )
    report = rotate_keys(make_store(clock=None, keys=[new_key, keys[0]]))
    assert (report.rotated, report.current, report.malformed) == (0, 1, 1)
    assert make_store(clock=None, keys=[new_key]).load(session.id).user_id == "7"


def test_rotation_moves_format_1_rows_under_the_first_key_to_format_2(db, make_store, keys) -> None:
    store = make_store(clock=None)
    legacy = add(store, 2, user_id="7")
    current = add(store, 1)
    for session in legacy:
        to_format_1(store, keys[0], session)
    env = {"STOREDSESSION_KEYS": keys[0]}
    before = _figures(invoke("stats", *db).stdout)
    assert before[f"Format 1, key {key_id(keys[0])}"] == "2"
    assert before[f"Format 2, key {key_id(keys[0])}"] == "1"
    result = invoke("rotate-keys", *db, env=env)
    assert result.stdout.startswith(
        f"Re-encrypted 2 sessions under the first key (id {key_id(keys[0])}); 1 was"
    )
    after = _figures(invoke("stats", *db).stdout)
    assert after[f"Format 2, key {key_id(keys[0])}"] == "3"
    assert not [label for label in after if label.startswith("Format 1")]
    strict = make_store(clock=None, legacy_envelopes=False)
    for session in legacy + current:
        assert dict(strict.load(session.id)) == {"n": session["n"]}


# -- stats ----------------------------------------------------------------------------
def _figures(output: str) -> dict[str, str]:
    return {
        key: value.strip() for key, value in (line.split(":", 1) for line in output.splitlines())
    }


def test_stats_figures(db, past, live, make_store) -> None:
    add(past, 2, user_id="9")
    add(past, 1)
    signed_in = add(live, 2, user_id="7")
    forever = add(make_store(clock=None, idle_timeout=None, absolute_timeout=None), 1)
    newest = add(live, 1)
    result = invoke("stats", *db)
    assert_ok(result)
    figures = _figures(result.stdout)
    assert (figures["Live"], figures["Expired"], figures["Total"]) == ("4", "3", "7")
    assert figures["Live with a user id"] == "2"
    stamp = "%Y-%m-%d %H:%M:%S UTC"
    assert figures["Oldest live, created"] == signed_in[0].created_at.strftime(stamp)
    assert figures["Newest live, created"] == max(
        s.created_at for s in signed_in + forever + newest
    ).strftime(stamp)
    size = figures["Size"]
    assert size != "unknown" and not size.startswith("0 bytes")
    assert live.table_name in figures["Table"]


def test_stats_of_an_empty_table(db, live) -> None:
    figures = _figures(invoke("stats", *db).stdout)
    assert figures["Total"] == "0" and figures["Oldest live, created"] == "-"
    assert not [label for label in figures if label.startswith(("Format", "Not an"))]


def test_stats_counts_rows_per_envelope_format_and_key_id(db, past, live, make_store, keys) -> None:
    """Keyless: read from the payloads' first bytes; expired rows count too."""
    other_key = generate_key()
    add(past, 1)  # expired, format 2
    add(live, 2)
    legacy = add(live, 3)
    for session in legacy:
        to_format_1(live, keys[0], session)
    add(make_store(clock=None, keys=[other_key]), 4)
    [odd] = add(live, 1)
    raw(live, "UPDATE {t} SET payload = ? WHERE sid = ?", b"\x07garbage", odd.handle)
    [empty] = add(live, 1)
    raw(live, "UPDATE {t} SET payload = ? WHERE sid = ?", b"", empty.handle)
    result = invoke("stats", *db)
    assert_ok(result)
    lines = result.stdout.splitlines()
    [size_at] = [i for i, line in enumerate(lines) if line.startswith("Size:")]
    envelope_lines = lines[size_at + 1 :]
    assert envelope_lines == [
        f"Format 2, key {key_id(other_key)}: 4",
        f"Format 2, key {key_id(keys[0])}: 3",
        f"Format 1, key {key_id(keys[0])}: 3",
        "Not an envelope:        2",
    ]
    assert _figures(result.stdout)["Total"] == "12"


# -- install-migration ----------------------------------------------------------------
def _schema(database: peewee.Database, table: str) -> tuple[Any, ...]:
    columns = sorted(
        (c.name, c.data_type.lower(), c.null, c.primary_key) for c in database.get_columns(table)
    )
    indexes = sorted((tuple(i.columns), i.unique) for i in database.get_indexes(table))
    return tuple(columns), tuple(indexes)


def _collations(database: peewee.Database, table: str) -> dict[str, str]:
    """The collation of each text column, on MySQL/MariaDB (where it decides equality)."""
    if not isinstance(database, peewee.MySQLDatabase):
        return {}
    rows = database.execute_sql(
        "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS WHERE "
        "TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s AND COLLATION_NAME IS NOT NULL",
        (table,),
    ).fetchall()
    return dict(rows)


def test_migration_runs_under_peewees_runner(
    database_url, table_name, keys, tmp_path, drop_after
) -> None:
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_earlier.py").write_text("def up(migrator, db):\n    pass\n")
    result = invoke("install-migration", "--dir", str(directory), "--table", table_name)
    create = directory / f"0002_create_{table_name}.py"
    upgrade = directory / f"0003_exact_user_id_{table_name}.py"
    assert_ok(result, f"Wrote {create}.\nWrote {upgrade}.\n")
    for path in (create, upgrade):
        assert "storedsession" not in path.read_text().split('"""')[2]  # imports nothing of it
    again = invoke("install-migration", "--dir", str(directory), "--table", table_name)
    assert_error(again, 1, "are there already", create.name, upgrade.name)

    history = table_name + "_history"
    drop_after(history)
    store = SessionStore(database_url, keys=keys, table_name=table_name, clock=None)
    runner = migrations.Runner(store.database, str(directory), table_name=history)
    with store.connected():
        assert runner.up() == ["0001_earlier", create.stem, upgrade.stem]
    session = store.load(None)
    session["big"] = "x" * 200_000  # more than MySQL's plain BLOB holds
    store.save(session)
    assert store.load(session.id)["big"] == "x" * 200_000

    # The same table, column for column, index for index and collation for collation, as
    # `init` makes.
    reference = table_name + "_init"
    drop_after(reference)
    assert_ok(invoke("init", "--database", database_url, "--table", reference))
    with store.connected():
        assert _schema(store.database, table_name) == _schema(store.database, reference)
        assert _collations(store.database, table_name) == _collations(store.database, reference)
        assert runner.down() == [upgrade.stem]  # keeps the exact comparison
        assert store.load(session.id)["big"] == "x" * 200_000
        assert runner.down() == [create.stem]
        assert not store.database.table_exists(table_name)
    store.close()


def test_the_first_migration_stays_frozen() -> None:
    # Projects have applied it: its text never changes (changes go in new migrations).
    source = migration_source("stored_sessions", "0.1.0")
    digest = "091f0648bd2ca7296815258a7cda95375d09a97d59dc4578a1e8f4260248e3fe"
    assert hashlib.sha256(source.encode()).hexdigest() == digest


def test_second_migration_upgrades_a_table_the_first_made(
    database_url, table_name, keys, tmp_path, drop_after
) -> None:
    directory = tmp_path / "migrations"
    assert_ok(invoke("install-migration", "--dir", str(directory), "--table", table_name))
    create = directory / f"0001_create_{table_name}.py"
    (directory / f"0002_exact_user_id_{table_name}.py").unlink()  # as an earlier version wrote
    history = table_name + "_history"
    drop_after(history)
    store = SessionStore(database_url, keys=keys, table_name=table_name)
    runner = migrations.Runner(store.database, str(directory), table_name=history)
    with store.connected():
        assert runner.up() == [create.stem]
    old = _collations(store.database, table_name)
    lookalikes = ["abc123", "AbC123", "abc123 ", "àbc123", "😀", "😃"]
    sessions = {user_id: add(store, 1, user_id)[0] for user_id in lookalikes}

    (directory / "0002_other_app_change.py").write_text("def up(migrator, db):\n    pass\n")
    upgrade = directory / f"0003_exact_user_id_{table_name}.py"
    result = invoke("install-migration", "--dir", str(directory), "--table", table_name)
    assert_ok(result, f"Wrote {upgrade}.\n")
    assert create.read_text() == migration_source(table_name, __version__)  # untouched
    with store.connected():
        assert runner.up() == ["0002_other_app_change", upgrade.stem]
        assert runner.up() == []
    if isinstance(store.database, peewee.MySQLDatabase):
        assert old["user_id"] == "utf8mb4_general_ci"
        assert _collations(store.database, table_name)["user_id"] == "utf8mb4_nopad_bin"
    for user_id, session in sessions.items():
        assert [i.handle for i in store.sessions_for(user_id)] == [session.handle]
        assert store.load(session.id).user_id == user_id
    store.close()


# -- errors ---------------------------------------------------------------------------
@pytest.mark.parametrize("command", DB_COMMANDS, ids=" ".join)
def test_no_database_given(command, keys) -> None:
    result = invoke(*command, env={"STOREDSESSION_KEYS": keys[0]})
    assert_error(result, 2, "No database given", "--database", "STOREDSESSION_DATABASE_URL")


@pytest.mark.slow
@pytest.mark.parametrize("server", sorted(SECRET_URLS))
@pytest.mark.parametrize("command", DB_COMMANDS, ids=" ".join)
def test_unreachable_server_without_the_password(command, server, keys) -> None:
    result = invoke(
        *command, "--database", SECRET_URLS[server], env={"STOREDSESSION_KEYS": keys[0]}
    )
    line = assert_error(result, 3, "cannot be reached", ":***@127.0.0.1:1/test")
    assert "s3cr" not in result.output and "40t" not in line


def test_unreachable_sqlite(tmp_path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/sessions.db"
    assert_error(invoke("stats", "--database", url), 3, "cannot be reached", url)


@pytest.mark.slow
def test_console_script_error_is_one_line(keys) -> None:
    done = script("storedsession-expire", "--database", SECRET_URLS["postgres"])
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ")
    assert "Traceback" not in done.stderr and "s3cr" not in done.stderr


def test_unusable_url_without_the_password() -> None:
    result = invoke("stats", "--database", "postgresqlx://postgres:s3cr%40t@db.example/test")
    assert_error(result, 2, "Cannot use the database URL", "postgres:***@db.example")
    assert "s3cr" not in result.output


@pytest.mark.parametrize("command", DB_COMMANDS[1:], ids=" ".join)
def test_missing_table(command, db, table_name, keys) -> None:
    result = invoke(*command, *db, env={"STOREDSESSION_KEYS": keys[0]})
    assert_error(result, 4, f"{table_name!r} does not exist", "storedsession init")


@pytest.mark.parametrize("command", [*DB_COMMANDS, ["install-migration"]], ids=" ".join)
def test_unusable_table_name(command, database_url, keys, tmp_path) -> None:
    where = (
        ["--dir", str(tmp_path)]
        if command == ["install-migration"]
        else ["--database", database_url]
    )
    result = invoke(*command, "--table", "no-dashes", *where, env={"STOREDSESSION_KEYS": keys[0]})
    assert_error(result, 2, "'no-dashes' is not usable")


@pytest.mark.parametrize(
    ("env_keys", "phrase"),
    [
        (None, "No session encryption key in STOREDSESSION_KEYS"),
        (" , ", "No session encryption key in STOREDSESSION_KEYS"),
        ("tooshort-but-secret", "Key #1 is not 32 bytes of URL-safe base64"),
        ("TWICE", "Key #2 is listed twice"),
    ],
)
def test_bad_or_missing_keys(env_keys, phrase, db, live, keys) -> None:
    if env_keys == "TWICE":
        env_keys = f"{keys[0]},{keys[0]}"
    env = {} if env_keys is None else {"STOREDSESSION_KEYS": env_keys}
    line = assert_error(invoke("rotate-keys", *db, env=env), 5, phrase)
    assert "tooshort-but-secret" not in line and keys[0] not in line
    if "listed twice" not in phrase:
        assert "storedsession generate-key" in line


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (None, "Cannot read the keys file"),
        (b"\xff\xfe", "Cannot read the keys file"),
        (b"# only a comment\n\n", "No session encryption key in the keys file"),
        (b"not-a-key-at-all\n", "Key #1 is not 32 bytes"),
    ],
)
def test_bad_keys_file(content, phrase, db, live, tmp_path) -> None:
    keys_file = tmp_path / "keys"
    if content is not None:
        keys_file.write_bytes(content)
    result = invoke("rotate-keys", "--keys-file", str(keys_file), *db)
    line = assert_error(result, 5, phrase)
    assert "not-a-key-at-all" not in line


def test_keys_never_on_the_command_line() -> None:
    result = invoke("rotate-keys", "--keys", generate_key())
    assert result.exit_code == 2 and "No such option" in result.output
