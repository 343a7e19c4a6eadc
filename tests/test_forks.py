"""Forked workers never use what their parent opened, and the parent keeps working.

The parent builds its store from a plain URL and uses it before forking, as an app does
when it creates its table at start-up under ``gunicorn --preload``; then children and the
parent work at once. Server connections are told apart by their server-side ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import multiprocessing
import os
import threading
import uuid
from typing import Any

import pytest

from storedsession import SessionStore

from .support import stored

PID_SQL = {"postgres": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}
CHILDREN, ROUNDS = 3, 30


def connection_id(store: SessionStore, backend: str) -> Any:
    """Which connection this thread uses: the server's id for it, or SQLite's handle."""
    with store.connected():
        if backend == "sqlite":
            return id(store.database.connection())
        if backend == "pgbouncer":  # the server's pid changes per transaction there
            return store.database.connection().info.backend_pid  # PgBouncer's own, per client
        return store.database.execute_sql(PID_SQL[backend]).fetchone()[0]


class Warnings(logging.Handler):
    """Counts the warnings a process logs (a decryption failure is one)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1


def work(store: SessionStore, backend: str, shared: str, key: str) -> dict[str, Any]:
    """What one worker does: its own session, and its own key of a shared one."""
    warnings = Warnings()
    logging.getLogger("storedsession").addHandler(warnings)
    try:
        mine = stored(store, n=0)
        for n in range(1, ROUNDS + 1):
            session = store.load(mine)
            session["n"] += 1
            store.save(session)
            session = store.load(shared)
            session[key] = n
            store.save(session)
        return {
            "n": store.load(mine)["n"],
            "connection": connection_id(store, backend),
            "warnings": warnings.count,
        }
    finally:
        logging.getLogger("storedsession").removeHandler(warnings)


def _child(store: SessionStore, backend: str, shared: str, key: str, results: Any) -> None:
    try:
        results.put((key, work(store, backend, shared, key)))
    except BaseException as exc:
        results.put((key, {"error": repr(exc)}))


def test_multiprocessing_children_and_the_parent_work_at_once(make_store, backend) -> None:
    store = make_store()  # the table is created before the fork, on the pool's connection
    shared = stored(store, start=True)
    before = connection_id(store, backend)
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [
        context.Process(target=_child, args=(store, backend, shared, f"child{i}", results))
        for i in range(CHILDREN)
    ]
    for child in children:
        child.start()
    parent: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: parent.update(work(store, backend, shared, "parent")))
    thread.start()  # the parent works while its children do
    reports = dict(results.get(timeout=60) for _ in children)
    thread.join(60)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert all("error" not in r for r in reports.values()), reports
    assert [r["n"] for r in reports.values()] == [ROUNDS] * CHILDREN
    assert [r["warnings"] for r in reports.values()] == [0] * CHILDREN
    assert parent["n"] == ROUNDS and parent["warnings"] == 0
    if backend != "sqlite":  # SQLite's handles are objects: ids repeat across processes
        assert before not in {r["connection"] for r in reports.values()}
    # The children forgot the parent's connection without closing it: still the same one.
    assert connection_id(store, backend) == before
    expected = {"start": True, "parent": ROUNDS, **{f"child{i}": ROUNDS for i in range(CHILDREN)}}
    assert dict(store.load(shared)) == expected


def _async_child(store: SessionStore, shared: str, key: str, results: Any) -> None:
    async def work() -> int:
        session = await store.aload(shared)
        session[key] = os.getpid()
        await store.asave(session)
        return await store._workers.run(threading.get_ident)

    try:
        results.put((key, asyncio.run(work())))
    except BaseException as exc:
        results.put((key, repr(exc)))


def test_forked_children_run_async_work_in_threads_of_their_own(make_store) -> None:
    store = make_store()
    shared = stored(store, start=True)
    # The parent's worker threads are started, and idle, when it forks: a child that
    # handed its jobs to the executor it inherited would wait for them for ever.
    asyncio.run(store.aload(shared))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    children = [
        context.Process(target=_async_child, args=(store, shared, f"child{i}", results))
        for i in range(CHILDREN)
    ]
    for child in children:
        child.start()
    try:
        parent = asyncio.run(store.aload(shared))  # the parent works while its children do
        reports = dict(results.get(timeout=30) for _ in children)
        for child in children:
            child.join(30)
    finally:
        for child in children:
            if child.is_alive():  # a hung child must not outlive the test
                child.kill()
    assert [child.exitcode for child in children] == [0] * CHILDREN
    assert all(isinstance(thread, int) for thread in reports.values()), reports
    assert parent["start"] is True
    final = store.load(shared)
    assert sorted(final) == sorted(["start", *(f"child{i}" for i in range(CHILDREN))])


def _fork_without_hooks(url: str, keys: list[str], table: str, backend: str, out: Any) -> None:
    """In a clean process: use the store, fork past os.fork's hooks, use it in both."""
    store = SessionStore(url, keys=keys, table_name=table)
    shared = stored(store, start=True)
    before = connection_id(store, backend)
    store.connected().__enter__()  # the parent holds its connection across the fork
    inherited = store.database.connection()
    read, write = os.pipe()
    pid = ctypes.PyDLL(None).fork()  # as uWSGI's prefork does: no at-fork hooks run
    if pid == 0:
        code = 1
        try:
            report = work(store, backend, shared, "child")
            report["inherited_in_use"] = store.database._state.conn is inherited
            os.write(write, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    parent = work(store, backend, shared, "parent")
    with os.fdopen(read) as pipe:
        child = pipe.read()
    _, status = os.waitpid(pid, 0)
    out.put(
        {
            "child": child,
            "status": status,
            "parent": parent,
            "before": before,
            "after": connection_id(store, backend),
            "shared": dict(store.load(shared)),
        }
    )


def test_a_fork_that_bypasses_os_fork_is_detected(make_store, backend, database_url, keys) -> None:
    store = make_store()
    context = multiprocessing.get_context("spawn")  # no stray threads at the raw fork
    out = context.Queue()
    process = context.Process(
        target=_fork_without_hooks,
        args=(database_url, keys, store.table_name, backend, out),
    )
    process.start()
    try:
        result = out.get(timeout=60)
    finally:
        process.join(30)
        with contextlib.suppress(Exception):
            process.kill()
    assert result["status"] == 0, result
    child = json.loads(result["child"])
    assert child["n"] == ROUNDS and child["warnings"] == 0
    assert child["inherited_in_use"] is False
    if backend != "sqlite":
        assert child["connection"] != result["before"]
    assert result["after"] == result["before"]
    assert result["parent"]["n"] == ROUNDS
    assert result["shared"] == {"start": True, "parent": ROUNDS, "child": ROUNDS}


def _create(url: str, keys: list[str], table: str, start: Any, errors: Any) -> None:
    try:
        store = SessionStore(url, keys=keys, table_name=table)
        start.wait(30)
        store.create_table()
        stored(store, n=0)
    except BaseException as exc:
        errors.put(repr(exc))


@pytest.mark.slow
def test_workers_starting_together_all_create_the_table(backend, database_url, keys) -> None:
    """Without --preload every gunicorn worker runs the app's create_table() at once."""
    table = f"ss_race_{uuid.uuid4().hex[:12]}"
    context = multiprocessing.get_context("fork")
    for _ in range(8):  # a race: give it a few chances to show
        start, errors = context.Barrier(4), context.Queue()
        workers = [
            context.Process(target=_create, args=(database_url, keys, table, start, errors))
            for _ in range(4)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(60)
        store = SessionStore(database_url, keys=keys, table_name=table)
        try:
            assert errors.empty(), errors.get()
            assert [worker.exitcode for worker in workers] == [0] * 4
            assert store.count_expired() == 0 and len(store_rows(store)) == 4
        finally:
            store.drop_table()
            store.close()


def store_rows(store: SessionStore) -> list[Any]:
    with store.connected():
        return list(store.model.select(store.model.sid).tuples())
