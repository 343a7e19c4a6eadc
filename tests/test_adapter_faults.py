"""The database fails for real under the adapters: at load, at save, at delete.

Bottle, Falcon WSGI and Falcon ASGI, on PostgreSQL and MariaDB behind the pooled URLs we
recommend. Nothing is mocked; the database fails in the ways production sees:

- the server kills the app's connection in the middle of the statement
  (``pg_terminate_backend`` / ``KILL``, while an admin lock holds that statement up);
- the handler learns its own connection's id and has the server kill it before the save;
- the database's port closes under the app (a loopback relay in front of the server drops
  every connection and stops listening, then listens again on the same port);
- a connection is killed while it waits in the pool, and the pool runs out of connections.

Every time the adapter answers 503 without ``Set-Cookie``, the stored session is intact
(read back through a second, healthy store), and the next request once the database is
back works in the same app: no restart, no broken connection kept in the pool.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import peewee
import pytest
from playhouse import db_url

from storedsession import SessionStore

from .fronts import FRONTS, Front, Web, build
from .support import backend_url, fetch_rows
from .wire import Reply

# Fault injection: killed connections, closed ports and pool waits of seconds.
pytestmark = pytest.mark.slow

DEFAULT_PORTS = {"postgres": 5432, "mysql": 3306}
PID_SQL = {"postgres": "SELECT pg_backend_pid()", "mysql": "SELECT CONNECTION_ID()"}


@pytest.fixture(params=["postgres", "mysql"])
def server(request: pytest.FixtureRequest, tmp_path: Any) -> tuple[str, str]:
    """The backend name and its plain URL (skips, or fails in CI, when it is down)."""
    return request.param, backend_url(request.param, tmp_path)


def with_query(url: str, **params: object) -> str:
    """``url`` (plain: every server URL is pooled) with pool parameters in its query."""
    query = "&".join(f"{name}={value}" for name, value in params.items())
    return f"{url}{'&' if '?' in url else '?'}{query}"


def kill(backend: str, url: str, pid: int) -> None:
    """Have the server end connection ``pid``, as an operator or a failover would."""
    admin = db_url.connect(url)
    with admin.connection_context():
        if backend == "postgres":
            assert admin.execute_sql("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]
        else:
            admin.execute_sql(f"KILL {int(pid)}")


def current_pid(backend: str, store: SessionStore) -> int:
    """The server-side id of the connection this thread uses (the held one, if any)."""
    with store.connected():
        return int(store.database.execute_sql(PID_SQL[backend]).fetchone()[0])


# -- ways to fail the database ------------------------------------------------------------


class Stall:
    """Hold up the app's next statement on ``table`` with an admin lock, then kill it.

    For ``"load"`` the lock stops reads too; otherwise reads pass and writes wait. A
    watcher finds the connection whose statement waits on the lock (the table name is
    unique to the test, so no other connection is touched), the server kills it, and the
    lock is released at once: the database is back as soon as the request has failed.
    """

    def __init__(self, backend: str, url: str, table: str, phase: str) -> None:
        self.backend, self.url, self.table, self.phase = backend, url, table, phase
        self.killed: list[int] = []
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Stall:
        self._thread.start()
        assert self._ready.wait(10), "the admin lock was never taken"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(20)
        assert not self._thread.is_alive(), "the stall never ended"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        locker, watcher = db_url.connect(self.url), db_url.connect(self.url)
        try:
            with locker.connection_context(), watcher.connection_context():
                if self.backend == "postgres":
                    mode = "ACCESS EXCLUSIVE" if self.phase == "load" else "EXCLUSIVE"
                    with locker.atomic():
                        locker.execute_sql(f'LOCK TABLE "{self.table}" IN {mode} MODE')
                        self._kill_the_waiter(watcher)
                else:
                    mode = "WRITE" if self.phase == "load" else "READ"
                    locker.execute_sql(f"LOCK TABLES `{self.table}` {mode}")
                    try:
                        self._kill_the_waiter(watcher)
                    finally:
                        locker.execute_sql("UNLOCK TABLES")
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def _kill_the_waiter(self, watcher: peewee.Database) -> None:
        if self.backend == "postgres":
            sql = (
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock' "
                "AND query LIKE %s"
            )
        else:
            sql = (
                "SELECT ID FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() "
                "AND STATE LIKE '%%lock%%' AND INFO LIKE %s"
            )
        self._ready.set()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            rows = watcher.execute_sql(sql, (f"%{self.table}%",)).fetchall()
            if rows:
                for (pid,) in rows:
                    kill(self.backend, self.url, pid)
                    self.killed.append(pid)
                return
            time.sleep(0.01)


class Relay:
    """A loopback TCP relay in front of the database server, whose port can close.

    The app connects to the relay's port. :meth:`cut` closes that port (connections are
    refused) and resets every relayed connection; :meth:`restore` listens on the same port
    again, as a database coming back would.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._relayed: set[socket.socket] = set()
        self.restore()

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the relay's."""
        parts = urlsplit(url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def restore(self) -> None:
        """Listen (again) on the relay's port."""
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        """Close the port and reset every relayed connection, both ways."""
        with self._lock:
            listener, self._listener = self._listener, None
            relayed, self._relayed = self._relayed, set()
        if listener is not None:
            _abort(listener)
        for sock in relayed:
            _abort(sock)

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _abort(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    _abort(client)
                    _abort(upstream)
                    return
                self._relayed |= {client, upstream}
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    for sock in (source, sink):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` at once, with a reset rather than an orderly goodbye."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


# -- the app -----------------------------------------------------------------------------


class Inside:
    """What the handlers run after the session was loaded (and changed), before the adapter
    saves it: the place to break the database "at save" or "at delete"."""

    def __init__(self) -> None:
        self.run: Callable[[], None] = lambda: None


def add_routes(front: Front, backend: str, inside: Inside) -> None:
    """``/count`` and ``/logout`` that call ``inside``, and ``/pid`` telling the server's id
    of the connection the request uses (``/read`` is the front's own)."""

    def count(web: Web) -> Any:
        web.session["n"] = web.session.get("n", 0) + 1
        inside.run()
        return {"n": web.session["n"]}

    def logout(web: Web) -> Any:
        web.session.get("n")
        web.session.invalidate()
        inside.run()
        return "bye"

    def pid(web: Web) -> Any:
        web.session.get("n")  # WSGI: the session's connection is now held; this is its pid
        return {"pid": current_pid(backend, front.store)}

    for path, handler in (("/count", count), ("/logout", logout), ("/pid", pid)):
        front.route(path, handler, blocking=True)  # the faults' admin connections block


@pytest.fixture
def inside() -> Inside:
    return Inside()


@pytest.fixture
def setup(
    server: tuple[str, str], keys: list[str], table_name: str, inside: Inside
) -> Iterator[Callable[..., tuple[Front, SessionStore]]]:
    """Build ``(front, healthy store)`` on a fresh table; ``url`` defaults to the server's."""
    backend, url = server
    built: list[SessionStore] = []
    healthy = SessionStore(url, keys=keys, table_name=table_name)
    healthy.create_table()

    def make(kind: str, app_url: str | None = None, **pool: object) -> tuple[Front, SessionStore]:
        pool.setdefault("max_connections", 8)
        store = SessionStore(with_query(app_url or url, **pool), keys=keys, table_name=table_name)
        built.append(store)
        front = build(kind, store)
        add_routes(front, backend, inside)
        return front, healthy

    yield make
    for store in built:
        store.close()
    healthy.drop_table()
    healthy.close()


def assert_failed_cleanly(reply: Reply) -> None:
    assert reply.status == 503, (reply.status, reply.body[:300])
    assert reply.header_values("Set-Cookie") == []


def assert_intact(healthy: SessionStore, pair: str, n: int = 1) -> None:
    assert dict(healthy.load(pair.partition("=")[2])) == {"n": n}
    assert len(fetch_rows(healthy)) == 1


def request_at(app: Front, phase: str, pair: str) -> Reply:
    """The request that meets the fault in ``phase``; the same request is the retry."""
    if phase == "create":
        return app.get("/count")
    if phase == "delete":
        return app.get("/logout", cookie=pair)
    return app.get("/count", cookie=pair)  # load, save


def assert_back(app: Front, healthy: SessionStore, phase: str, pair: str) -> None:
    """The same request, once the database is back, succeeds in the same app."""
    reply = request_at(app, phase, pair)
    assert reply.status == 200, (reply.status, reply.body[:300])
    if phase == "create":
        assert reply.json == {"n": 1} and reply.session_pair() != pair
        assert len(fetch_rows(healthy)) == 2
    elif phase == "delete":
        assert reply.cookie().attrs["max-age"] == "0"
        assert healthy.load(pair.partition("=")[2]).new and fetch_rows(healthy) == []
    else:
        assert reply.json == {"n": 2} and reply.session_pair() == pair
        assert_intact(healthy, pair, n=2)
    assert app.get("/read", cookie=pair).status == 200


PHASES = ("load", "create", "save", "delete")


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind", FRONTS)
def test_connection_killed_during_the_statement(setup, server, table_name, kind, phase) -> None:
    backend, url = server
    app, healthy = setup(kind)
    pair = app.get("/count").session_pair()
    with Stall(backend, url, table_name, phase) as stall:
        reply = request_at(app, phase, pair)
    assert len(stall.killed) == 1, "no statement waited on the lock"
    assert_failed_cleanly(reply)
    assert_intact(healthy, pair)
    assert_back(app, healthy, phase, pair)


@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("kind", FRONTS)
def test_database_port_closes_under_the_app(setup, server, inside, kind, phase) -> None:
    backend, url = server
    parts = urlsplit(url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or DEFAULT_PORTS[backend]))
    try:
        app, healthy = setup(kind, relay.url(url))
        pair = app.get("/count").session_pair()
        app.get("/read", cookie=pair)  # the pool now holds a connection through the relay
        if phase == "load":
            relay.cut()
        else:
            inside.run = relay.cut  # after the session was loaded, before it is saved
        assert_failed_cleanly(request_at(app, phase, pair))
        inside.run = lambda: None
        assert_failed_cleanly(request_at(app, phase, pair))  # still down: still 503
        assert_intact(healthy, pair)
        relay.restore()
        assert_back(app, healthy, phase, pair)
    finally:
        relay.close()


@pytest.mark.parametrize("phase", ["save", "delete"])
@pytest.mark.parametrize("kind", ["bottle", "falcon-wsgi"])
def test_held_connection_killed_inside_the_handler(setup, server, inside, kind, phase) -> None:
    """WSGI holds one connection per request: kill it between the load and the save."""
    backend, url = server
    app, healthy = setup(kind)
    pair = app.get("/count").session_pair()
    inside.run = lambda: kill(backend, url, current_pid(backend, app.store))
    assert_failed_cleanly(request_at(app, phase, pair))
    assert_intact(healthy, pair)
    inside.run = lambda: None
    assert_back(app, healthy, phase, pair)


@pytest.mark.parametrize("kind", FRONTS)
def test_connection_killed_while_idle_in_the_pool(setup, server, kind) -> None:
    backend, url = server
    app, healthy = setup(kind)
    pair = app.get("/count").session_pair()
    pid = app.get("/pid", cookie=pair).json["pid"]  # the pool's one idle connection
    kill(backend, url, pid)
    statuses = [app.get("/count", cookie=pair).status for _ in range(3)]
    assert statuses.count(503) <= 1 and statuses[-1] == 200, statuses
    assert set(statuses) <= {200, 503}
    assert_intact(healthy, pair, n=1 + statuses.count(200))
    assert app.get("/pid", cookie=pair).json["pid"] != pid


@pytest.mark.parametrize("kind", FRONTS)
def test_an_exhausted_pool_answers_503_after_its_wait(setup, kind) -> None:
    """Every pooled connection is taken (here by another thread): 503 after the wait."""
    app, healthy = setup(kind, max_connections=1, timeout=1)
    pair = app.get("/count").session_pair()
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with app.store.connected():
            taken.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert taken.wait(10)
        for request in (
            lambda: app.get("/count", cookie=pair),
            lambda: app.get("/count"),
            lambda: app.get("/logout", cookie=pair),
        ):
            started = time.monotonic()
            reply = request()
            assert time.monotonic() - started >= 0.9  # the pool's timeout=1, not at once
            assert_failed_cleanly(reply)
    finally:
        release.set()
        holder.join(10)
    assert_intact(healthy, pair)
    assert_back(app, healthy, "save", pair)


@pytest.mark.parametrize("kind", FRONTS)
def test_a_full_pool_makes_a_request_wait_for_a_connection(setup, kind) -> None:
    """With the default wait (10 s), a connection freed meanwhile serves the request."""
    app, healthy = setup(kind, max_connections=1)
    pair = app.get("/count").session_pair()
    taken = threading.Event()

    def hold() -> None:
        with app.store.connected():
            taken.set()
            time.sleep(0.5)

    holder = threading.Thread(target=hold)
    holder.start()
    assert taken.wait(10)
    started = time.monotonic()
    reply = app.get("/count", cookie=pair)
    waited = time.monotonic() - started
    holder.join(10)
    assert reply.status == 200, (reply.status, reply.body[:300])
    assert 0.3 <= waited < 5, waited
    assert_intact(healthy, pair, n=2)
