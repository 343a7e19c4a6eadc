"""Signing out while regenerate() moves a session to a new id, on every backend.

The interleaving is forced, not hoped for: a peewee query hook on the regenerating store
pauses it right after one of its statements (inside its transaction, when it has one),
starts the revoke in another thread, and lets the regenerate go on only once the server
reports the revoke waiting for a row lock (or the revoke has finished). Real servers, real
transactions; each test walks through every pause point many times, bounded in time.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from playhouse import db_url

from storedsession import Session, SessionInterrupted, SessionStore, ids, signals

ITERATIONS = 50
TIME_LIMIT = 60.0  # seconds per test, however many iterations are left
PAUSE_LIMIT = 2.0  # seconds a paused regenerate waits for the revoke to block or finish
SQLITE_PAUSE = 0.03  # SQLite cannot report a waiting writer: give it this long
#: How the regenerate runs: alone; after losing a race (its retry under a row lock, in a
#: transaction of the store's own); inside a transaction the application opened.
SCENARIOS = ("plain", "after_a_conflict", "in_app_transaction")
PAUSE_POINTS = range(6)  # after its 1st..6th statement, its load included (or after it all)


class LockWatch:
    """Tells whether a statement on the test's table waits for a row lock, as the server says."""

    def __init__(self, backend: str, url: str, table: str) -> None:
        self.pattern = f"%{table}%"
        self.database = None if backend == "sqlite" else db_url.connect(url)
        self.poll = 0.002
        if backend in ("postgres", "pgbouncer"):
            self.sql = (
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND pid <> pg_backend_pid() AND query LIKE %s"
            )
        else:
            self.sql = (
                "SELECT COUNT(*) FROM information_schema.INNODB_TRX "
                "WHERE trx_state = 'LOCK WAIT' AND trx_query LIKE %s"
            )
            # InnoDB refreshes this table only when it was not read for 0.1 s.
            self.poll = 0.11

    def wait_until_blocked(self, worker: threading.Thread) -> bool:
        """Return once ``worker`` waits for a lock (True) or has finished or timed out."""
        if self.database is None:
            worker.join(SQLITE_PAUSE)
            return False
        deadline = time.monotonic() + PAUSE_LIMIT
        while worker.is_alive() and time.monotonic() < deadline:
            (count,) = self.database.execute_sql(self.sql, (self.pattern,)).fetchone()
            if count:
                return True
            time.sleep(self.poll)
        return False

    def close(self) -> None:
        if self.database is not None:
            self.database.close()


@pytest.fixture
def watch(backend: str, database_url: str, table_name: str) -> Iterator[LockWatch]:
    found = LockWatch(backend, database_url, table_name)
    yield found
    found.close()


@dataclass
class Worker:
    """The other request, run in a thread: what it returned or raised."""

    call: Callable[[], Any]
    result: Any = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self.call()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> Any:
        if self.thread.ident is None:  # the pause point came after the last statement
            self.thread.start()
        self.thread.join(30)
        assert not self.thread.is_alive(), "the revoke never finished"
        if self.error is not None:
            raise self.error
        return self.result


@contextmanager
def pause_after(
    store: SessionStore, nth: int, worker: Worker, watch: LockWatch
) -> Iterator[list[bool]]:
    """Pause ``store``'s thread after its ``nth`` statement (0-based) to run ``worker``.

    Yields a list that gets True when the server saw ``worker`` wait for a lock meanwhile.
    """
    seen = 0
    blocked: list[bool] = []
    owner = threading.get_ident()

    def hook(event: Any) -> None:
        nonlocal seen
        if threading.get_ident() != owner:
            return
        seen += 1
        if seen == nth + 1:
            worker.thread.start()
            blocked.append(watch.wait_until_blocked(worker.thread))

    store.database.query_hooks.append(hook)
    try:
        yield blocked
    finally:
        store.database.query_hooks.remove(hook)


@contextmanager
def deletions_by(store: SessionStore) -> Iterator[list[str]]:
    """Collect the handle (``sid=``) of every ``session_delete`` that ``store`` sends."""
    handles: list[str] = []

    def receiver(sender: Any, sid: str, **kwargs: Any) -> None:
        if sender is store:
            handles.append(sid)

    signals.session_delete.connect(receiver)
    try:
        yield handles
    finally:
        signals.session_delete.disconnect(receiver)


def signed_in(store: SessionStore, user: str, **data: Any) -> Session:
    session = store.load(None)
    session.update(data or {"n": 1})
    session.user_id = user
    store.save(session)
    return session


def regenerate(store: SessionStore, other: SessionStore, public_id: str, scenario: str) -> str:
    """Regenerate the session the way ``scenario`` says; return its new id."""
    session = store.load(public_id)
    assert not session.new
    session.regenerate()
    if scenario == "after_a_conflict":
        first = other.load(public_id)
        first["other"] = 1
        other.save(first)  # saved first: the regenerate's versioned write will miss
    if scenario == "in_app_transaction":
        with store.connected(), store.database.atomic():
            store.save(session)
    else:
        store.save(session)
    assert session.id is not None and session.id != public_id
    return session.id


def rows_of(store: SessionStore, user: str) -> set[str]:
    model = store.model
    with store.connected():
        return {
            handle for (handle,) in model.select(model.sid).where(model.user_id == user).tuples()
        }


def cases(iterations: int = ITERATIONS) -> Iterator[tuple[int, str, int]]:
    """Every (scenario, pause point) in turn, ``iterations`` times at most, in TIME_LIMIT."""
    deadline = time.monotonic() + TIME_LIMIT
    combinations = [(s, p) for p in PAUSE_POINTS for s in SCENARIOS]
    for number in range(iterations):
        if time.monotonic() > deadline:
            return
        scenario, point = combinations[number % len(combinations)]
        yield number, scenario, point


def race_revoke_user(
    moving: SessionStore, revoking: SessionStore, watch: LockWatch, iterations: int
) -> int:
    """Race revoke_user against each kind of regenerate; return how often it had to wait."""
    waited = 0
    for number, scenario, point in cases(iterations):
        user = f"user-{number}"
        here = signed_in(revoking, user)  # "this device": kept
        target = signed_in(revoking, user)
        assert target.id is not None
        old_handle = target.handle
        worker = Worker(lambda user=user, here=here: revoking.revoke_user(user, keep=here))
        with deletions_by(revoking) as deleted:
            with pause_after(moving, point, worker, watch) as blocked:
                try:
                    new_id: str | None = regenerate(moving, revoking, target.id, scenario)
                except SessionInterrupted:
                    new_id = None  # the revoke came first: the session ended there
            count = worker.finish()
        waited += any(blocked)
        where = f"{scenario}, paused after statement {point + 1}"
        assert rows_of(revoking, user) == {here.handle}, f"a session survived ({where})"
        assert count == 1, where
        # session_delete: once, naming the stored id of the row that went.
        expected = old_handle if new_id is None else ids.handle_for(new_id)
        assert deleted == [expected], where
        if new_id is not None:
            assert moving.load(new_id).new, where
    return waited


@pytest.mark.slow
def test_revoke_user_ends_a_session_being_regenerated(make_store, watch, backend) -> None:
    waited = race_revoke_user(make_store(), make_store(), watch, ITERATIONS)
    if backend != "sqlite":
        assert waited, "no iteration made the revoke wait for the regenerate"


#: A stricter isolation level than the default, for the revoking store's connections.
STRICTER = {
    "sqlite": "",  # SQLite has one: serializable
    "postgres": "?isolation_level=REPEATABLE%20READ",  # a moved row: serialization failure
    "pgbouncer": "?isolation_level=REPEATABLE%20READ",  # set with each BEGIN: fine there
    "mysql": "?init_command=SET%20SESSION%20TRANSACTION%20ISOLATION%20LEVEL%20SERIALIZABLE",
}


@pytest.mark.slow
def test_revoke_user_under_a_stricter_isolation_level(
    make_store, watch, backend, database_url
) -> None:
    """PostgreSQL's REPEATABLE READ cannot follow a moved row: it fails the transaction
    with a serialization failure, and revoke_user runs again under a new snapshot."""
    revoking = make_store(database=database_url + STRICTER[backend])
    if backend in ("postgres", "pgbouncer"):
        with revoking.connected(), revoking.database.atomic():
            (level,) = revoking.database.execute_sql("SHOW transaction_isolation").fetchone()
        assert level == "repeatable read"
    race_revoke_user(make_store(), revoking, watch, len(SCENARIOS) * len(PAUSE_POINTS))


def storm(moving: SessionStore, revoking: SessionStore, user: str, sessions: int) -> set[str]:
    """Regenerate ``sessions`` sessions of ``user`` over and over, each in a thread of its
    own, and call revoke_user meanwhile; return the rows of the user right after it."""
    started = [signed_in(revoking, user).id for _ in range(sessions)]
    unexpected: list[BaseException] = []
    barrier = threading.Barrier(sessions + 1)
    stop = threading.Event()  # a survivor would keep moving for ever

    def keep_moving(public_id: str) -> None:
        barrier.wait()
        try:
            while not stop.is_set():
                session = moving.load(public_id)
                if session.new:
                    return  # revoked between two regenerates
                session.regenerate()
                moving.save(session)
                public_id = session.id
        except SessionInterrupted:
            return  # revoked during this one
        except BaseException as exc:
            unexpected.append(exc)

    threads = [threading.Thread(target=keep_moving, args=(i,), daemon=True) for i in started]
    for thread in threads:
        thread.start()
    barrier.wait()
    time.sleep(random.uniform(0, 0.02))
    revoked = revoking.revoke_user(user)
    left = rows_of(revoking, user)  # at once, before the movers stop
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert unexpected == []
    assert revoked + len(left) == sessions
    return left


@pytest.mark.slow
def test_revoke_user_during_a_storm_of_regenerates(make_store) -> None:
    """Free-running: as soon as revoke_user returns, the user has no session left."""
    moving, revoking = make_store(), make_store()
    deadline = time.monotonic() + TIME_LIMIT / 3
    rounds = 0
    while rounds < 10 and time.monotonic() < deadline:
        left = storm(moving, revoking, f"storm-{rounds}", sessions=4)
        assert left == set(), f"round {rounds}: {len(left)} session(s) survived revoke_user"
        rounds += 1
    assert rounds >= 5


@pytest.mark.slow
def test_revoke_one_device_racing_its_regenerate(make_store, watch) -> None:
    """Either the revoke comes first and the regenerate is interrupted, or the move comes
    first and the revoke follows the session to its new id: the device is signed out
    either way, never duplicated, and the signal names the row that went."""
    moving, revoking = make_store(), make_store()
    orders: set[str] = set()
    for number, scenario, point in cases():
        user = f"device-{number}"
        target = signed_in(revoking, user)
        assert target.id is not None
        old_handle = target.handle
        worker = Worker(lambda h=old_handle, u=user: revoking.revoke(h, user_id=u))
        with deletions_by(revoking) as deleted:
            with pause_after(moving, point, worker, watch):
                try:
                    new_id: str | None = regenerate(moving, revoking, target.id, scenario)
                except SessionInterrupted:
                    new_id = None
            revoked = worker.finish()
        where = f"{scenario}, paused after statement {point + 1}"
        assert revoked, where
        assert rows_of(revoking, user) == set(), where
        if new_id is None:  # the revoke came first: the move found its row gone
            assert deleted == [old_handle], where
            orders.add("revoke first")
        else:  # the move came first: the revoke followed it
            assert deleted == [ids.handle_for(new_id)], where
            assert moving.load(new_id).new, where
            orders.add("move first")
    assert orders == {"revoke first", "move first"}


def test_revoke_follows_a_handle_listed_before_the_device_signed_in_again(make_store) -> None:
    """The handle shown on a sessions page stays good for "sign out that device" after
    that device logs in again (a regenerate), given the user as the page knows it."""
    store = make_store()
    device = signed_in(store, "returning")
    listed = store.sessions_for("returning")[0].handle
    session = store.load(device.id)
    session.regenerate()
    store.save(session)
    assert session.handle != listed
    assert store.revoke(listed, user_id="someone-else") is False
    assert store.revoke(listed, user_id="returning") is True
    assert store.load(session.id).new
    assert store.sessions_for("returning") == []


def test_revoke_one_device_while_its_move_is_in_flight(make_store, watch) -> None:
    moving, revoking = make_store(), make_store()
    target = signed_in(revoking, "mover")
    assert target.id is not None
    worker = Worker(lambda: revoking.revoke(target.handle, user_id="mover"))
    # Paused after the statement that moves the row, before the transaction commits.
    with pause_after(moving, 1, worker, watch):
        new_id = regenerate(moving, revoking, target.id, "in_app_transaction")
    assert worker.finish() is True
    assert moving.load(new_id).new
