"""Faults: a locked or full SQLite file, sweeps racing each other and traffic, an
interrupted rotation. Each must end in a clear error or a correct result, never in lost,
half-written or resurrected data."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import UTC

import peewee
import pytest

from storedsession import SessionStore, StoreUnavailable, expiry, generate_key
from storedsession.maintenance import rotate_keys

from .support import fetch_rows, stored


def test_sqlite_locked_past_the_busy_timeout(tmp_path, keys) -> None:
    path = tmp_path / "locked.db"
    database = peewee.SqliteDatabase(str(path), timeout=0.3, pragmas={"journal_mode": "wal"})
    store = SessionStore(database, keys=keys)
    store.create_table()
    public_id = stored(store, n=1)
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        session = store.load(public_id)  # WAL: readers are not blocked
        session["n"] = 2
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.save(session)
        assert time.monotonic() - started < 3  # no hang
        assert "locked" in str(info.value)
        fresh = store.load(None)
        fresh["new"] = 1
        with pytest.raises(StoreUnavailable):
            store.save(fresh)
        assert fresh.id is None  # no cookie may point at a session that was not stored
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.load(public_id)["n"] == 1  # previous data intact
    retry = store.load(public_id)
    retry["n"] = 2
    store.save(retry)  # and it works again once the lock is gone
    assert store.load(public_id)["n"] == 2


def test_sqlite_disk_full(tmp_path, keys) -> None:
    path = tmp_path / "full.db"
    setup = SessionStore(f"sqlite:///{path}", keys=keys)
    setup.create_table()
    public_id = stored(setup, n=1)
    with setup.connected():
        pages = setup.database.execute_sql("PRAGMA page_count").fetchone()[0]
    setup.close()
    capped = peewee.SqliteDatabase(
        str(path), pragmas={"journal_mode": "wal", "max_page_count": pages}
    )
    store = SessionStore(capped, keys=keys)
    session = store.load(public_id)
    session["blob"] = "x" * 200_000
    with pytest.raises(StoreUnavailable) as info:
        store.save(session)
    assert "full" in str(info.value)
    big = store.load(None)
    big["blob"] = "y" * 200_000
    with pytest.raises(StoreUnavailable):
        store.save(big)
    assert dict(store.load(public_id)) == {"n": 1}
    assert len(fetch_rows(store)) == 1


@pytest.mark.parametrize("walk_from", [10**9, 1], ids=["by-expiry", "innodb-walk"])
def test_two_sweeps_at_once_beside_live_writes(make_store, clock, monkeypatch, walk_from) -> None:
    # On MySQL, a table mostly expired is swept in primary key order: both ways race here.
    monkeypatch.setattr(expiry, "WALK_MIN_ROWS", walk_from)
    store = make_store(idle_timeout=600, touch_interval=0)
    doomed = [stored(store, n=0) for _ in range(120)]
    clock.advance(300)
    live = [stored(store, n=0) for _ in range(20)]
    clock.advance(301)  # the first 120 are expired, the last 20 are not
    counts: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(3)

    def sweep() -> None:
        try:
            start.wait()
            counts.append(store.expire(batch_size=7))
        except BaseException as exc:
            errors.append(exc)

    def traffic() -> None:
        try:
            start.wait()
            for _ in range(3):
                for public_id in live:
                    session = store.load(public_id)
                    assert not session.new
                    session["n"] += 1
                    store.save(session)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=sweep),
        threading.Thread(target=sweep),
        threading.Thread(target=traffic),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(counts) == 120  # the counts add up: no row deleted twice or missed
    assert all(store.load(public_id)["n"] == 3 for public_id in live)
    assert all(store.load(public_id).new for public_id in doomed)
    assert len(fetch_rows(store)) == 20  # nothing expired came back


class _Interrupt(Exception):
    pass


def test_rotation_interrupted_after_its_first_batch_then_finished(make_store, keys) -> None:
    old_store = make_store()
    sessions = {}
    for n in range(25):
        sessions[stored(old_store, n=n, text="é" * n)] = n
    new_key = generate_key()
    rotating = make_store(keys=[new_key, *keys])
    batches: list[int] = []

    def stop_after_first(size: int) -> None:
        batches.append(size)
        raise _Interrupt

    with pytest.raises(_Interrupt):
        rotate_keys(rotating, batch_size=10, progress=stop_after_first)
    assert batches == [10]
    report = rotate_keys(rotating, batch_size=10)
    assert report.rotated == 15 and report.current == 10 and report.unreadable == 0
    new_only = make_store(keys=[new_key])
    for public_id, n in sessions.items():
        assert dict(new_only.load(public_id)) == {"n": n, "text": "é" * n}


def test_two_expire_commands_at_once_beside_live_writes(
    database_url, table_name, keys, tmp_path
) -> None:
    """The console script, twice at once, while traffic writes: the counts add up."""
    import os
    import re
    import subprocess
    import sys
    from datetime import datetime, timedelta
    from pathlib import Path

    past = datetime.now(UTC) - timedelta(days=60)
    old = SessionStore(database_url, keys=keys, table_name=table_name, clock=lambda: past)
    store = SessionStore(database_url, keys=keys, table_name=table_name, touch_interval=0)
    try:
        store.create_table()
        for _ in range(300):
            stored(old, n=0)  # expired weeks ago, by the real clock
        live = [stored(store, n=0) for _ in range(10)]
        script = Path(sys.executable).parent / "storedsession-expire"
        env = {k: v for k, v in os.environ.items() if k != "STOREDSESSION_KEYS"}
        command = [
            str(script),
            "--database",
            database_url,
            "--table",
            table_name,
            "--batch-size",
            "7",
        ]
        stop = threading.Event()
        errors: list[BaseException] = []
        writes = [0]

        def traffic() -> None:
            try:
                while not stop.is_set():
                    for public_id in live:
                        session = store.load(public_id)
                        assert not session.new
                        session["n"] += 1
                        store.save(session)
                        writes[0] += 1
            except BaseException as exc:
                errors.append(exc)

        writer = threading.Thread(target=traffic)
        writer.start()
        sweeps = [
            subprocess.Popen(
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outputs = [sweep.communicate(timeout=120) for sweep in sweeps]
        stop.set()
        writer.join(30)
        assert errors == [] and writes[0] > 0
        assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
        counts = []
        for stdout, stderr in outputs:
            assert "Traceback" not in stderr
            found = re.fullmatch(
                r"Expired (\d+) sessions\.|No sessions to expire\.", stdout.strip()
            )
            assert found, stdout
            counts.append(int(found.group(1) or 0))
        assert sum(counts) == 300
        rows = fetch_rows(store)
        assert len(rows) == 10  # nothing live deleted, nothing expired back
        assert sum(store.load(public_id)["n"] for public_id in live) == writes[0]
    finally:
        store.drop_table()
        store.close()
        old.close()
