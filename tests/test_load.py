"""Real servers under a bounded load: no error, no lost change, no cross-talk, no resurrection.

The Bottle app runs under waitress (threaded WSGI) and the Falcon ASGI app under uvicorn
(the apps of tests/fronts.py's fronts, with this module's routes), both in this process on
a loopback port, on PostgreSQL and MariaDB through the pooled URLs we recommend. The load
generator is a few hundred threads, each a keep-alive HTTP client with its own cookie,
all started at once for a fixed number of requests. Then a storm on one session, each
request changing its own key: every request answers 200 (a 503 is a change the user lost)
and every change is kept; and a logout in the middle of such a storm: the row stays gone
and the old cookie reads as a new, empty session. Everything is bounded: counts, socket
timeouts, joins; the servers stop in fixture teardown.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import peewee
import pytest
import uvicorn
import waitress
from playhouse import db_url
from waitress import wasyncore

from storedsession import SessionStore

from .fronts import Web, build
from .support import backend_url, fetch_rows
from .wire import SetCookie

# Load: hundreds of clients through real servers, seconds per test.
pytestmark = pytest.mark.slow

CLIENTS = 200  # concurrent keep-alive clients, each with a session of its own
REQUESTS = 5  # requests per client
STORM = 50  # concurrent requests on one session, each changing its own key
ROUNDS = 3  # requests per storm thread
POOL = 40  # the app's pool (max_connections), well under the servers' limits
WSGI_THREADS = 16  # waitress worker threads: at most this many pooled connections
TIMEOUT = 120.0  # seconds: any one socket operation, and the whole of one load


# -- what the clients do, the same for both apps ------------------------------------------


def visit(web: Web) -> Any:
    """Count this client's visits; a session that is not its own shows in the answer."""
    session = web.session
    session.setdefault("client", web.query("client"))
    session["n"] = session.get("n", 0) + 1
    return {"client": session["client"], "n": session["n"]}


def set_key(web: Web) -> Any:
    """Set one key of an existing session; never create one (the app needs a login)."""
    if web.session.new:
        return {"gone": True}
    web.session[str(web.query("key"))] = int(web.query("value") or 0)
    return {"ok": True}


def read(web: Web) -> Any:
    return {"new": web.session.new, "keys": sorted(web.session)}


def logout(web: Web) -> Any:
    web.session.invalidate()
    return {"bye": True}


def served_app(kind: str, store: SessionStore) -> Any:
    """The framework's app of front ``kind`` (tests/fronts.py) with the routes above."""
    front = build(kind, store)
    for path, handler in (("/hit", visit), ("/set", set_key), ("/read", read), ("/logout", logout)):
        front.route(path, handler)
    return front.app


# -- the servers --------------------------------------------------------------------------


class Waitress:
    """The Bottle app under waitress, in a thread of this process."""

    def __init__(self, store: SessionStore) -> None:
        self.server: Any = waitress.create_server(
            served_app("bottle", store),
            host="127.0.0.1",
            port=0,
            threads=WSGI_THREADS,
            connection_limit=CLIENTS + 50,
            channel_timeout=120,
            asyncore_use_poll=True,
        )
        self.port = int(self.server.effective_port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        # Closing waitress's sockets is done in its own loop thread (a trigger thunk):
        # once its map is empty, the loop returns.
        server = self.server
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
        self.thread.join(10)
        server.task_dispatcher.shutdown(timeout=5)
        assert not self.thread.is_alive(), "waitress did not stop"


class Uvicorn:
    """The Falcon ASGI app under uvicorn, in a thread of this process with its own loop."""

    def __init__(self, store: SessionStore) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0), backlog=1024)
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(
            served_app("falcon-asgi", store),
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "no uvicorn"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(15)
        self.socket.close()
        assert not self.thread.is_alive(), "uvicorn did not stop"


@dataclass
class Site:
    port: int
    healthy: SessionStore  # a second store, outside the server, to check what is stored


def assert_room_for_the_pool(url: str) -> None:
    """Fail clearly, not with "too many connections", if the server is too busy."""
    admin = db_url.connect(url)
    with admin.connection_context():
        if isinstance(admin, peewee.MySQLDatabase):
            limit = admin.execute_sql("SELECT @@max_connections").fetchone()[0]
            used = admin.execute_sql("SELECT COUNT(*) FROM information_schema.PROCESSLIST")
        else:
            limit = admin.execute_sql("SHOW max_connections").fetchone()[0]
            used = admin.execute_sql("SELECT COUNT(*) FROM pg_stat_activity")
        free = int(limit) - int(used.fetchone()[0])
    # The app never holds more than one connection per worker thread (waitress's, or
    # the store's async_threads).
    assert free >= WSGI_THREADS + 4, f"the server has only {free} free connections"


@pytest.fixture(params=["postgres", "mysql"])
def database(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    """The URL of a database server (skips, or fails in CI, when it is down)."""
    return backend_url(request.param, tmp_path)


@pytest.fixture(params=["waitress-bottle", "uvicorn-falcon-asgi"])
def site(
    request: pytest.FixtureRequest, database: str, keys: list[str], table_name: str
) -> Iterator[Site]:
    """A server on a loopback port with its app on a fresh table, stopped afterwards."""
    url = database
    assert_room_for_the_pool(url)
    healthy = SessionStore(url, keys=keys, table_name=table_name)
    healthy.create_table()
    scheme, rest = url.split("://", 1)
    store = SessionStore(
        f"{scheme}+pool://{rest}?max_connections={POOL}", keys=keys, table_name=table_name
    )
    server: Waitress | Uvicorn | None = None
    try:
        server = (Waitress if request.param == "waitress-bottle" else Uvicorn)(store)
        yield Site(server.port, healthy)
    finally:
        if server is not None:
            server.stop()
        store.close()
        healthy.drop_table()
        healthy.close()


# -- the load generator -------------------------------------------------------------------


class Browser:
    """One keep-alive HTTP client that keeps the session cookie it is given."""

    def __init__(self, port: int, cookie: str | None = None) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        self.cookie = cookie
        self.set_cookies: list[SetCookie] = []

    def get(self, path: str) -> tuple[int, Any]:
        """Send a GET on the kept-alive connection; return the status and the JSON body."""
        headers = {"Cookie": self.cookie} if self.cookie else {}
        self.connection.request("GET", path, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        self.set_cookies = [
            SetCookie.parse(line) for line in response.headers.get_all("Set-Cookie") or []
        ]
        for cookie in self.set_cookies:
            if cookie.name == "session" and cookie.max_age != 0:
                self.cookie = f"session={cookie.value}"
        try:
            return response.status, json.loads(body)
        except ValueError:
            return response.status, body[:200]

    def close(self) -> None:
        self.connection.close()


def run_at_once(count: int, work: Callable[[int], None]) -> float:
    """Run ``work(0) … work(count - 1)`` in threads started together; return the seconds.

    Fails with the first errors if any thread raised or did not finish in time.
    """
    errors: list[tuple[int, BaseException]] = []
    start = threading.Barrier(count + 1)

    def run(number: int) -> None:
        try:
            start.wait(TIMEOUT)
            work(number)
        except BaseException as exc:
            errors.append((number, exc))

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    start.wait(TIMEOUT)
    began = time.monotonic()
    deadline = began + TIMEOUT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.monotonic() - began
    assert not any(thread.is_alive() for thread in threads), "the load did not finish in time"
    assert errors == [], f"{len(errors)} clients failed, first: {errors[:3]}"
    return elapsed


def public_id(cookie: str | None) -> str:
    assert cookie is not None
    return cookie.partition("=")[2]


# -- the scenarios ------------------------------------------------------------------------


def test_hundreds_of_clients_each_keep_their_own_count(site: Site) -> None:
    cookies: list[str | None] = [None] * CLIENTS

    def client(number: int) -> None:
        browser = Browser(site.port)
        try:
            for step in range(1, REQUESTS + 1):
                status, body = browser.get(f"/hit?client=c{number}")
                assert status == 200, (status, body)
                assert body == {"client": f"c{number}", "n": step}  # exact, and its own
            cookies[number] = browser.cookie
        finally:
            browser.close()

    elapsed = run_at_once(CLIENTS, client)
    print(
        f"\n{CLIENTS} clients x {REQUESTS} requests: {elapsed:.2f} s, "
        f"{CLIENTS * REQUESTS / elapsed:.0f} requests/s"
    )
    assert len(set(cookies)) == CLIENTS
    assert len(fetch_rows(site.healthy)) == CLIENTS
    for number, cookie in enumerate(cookies):
        assert dict(site.healthy.load(public_id(cookie))) == {"client": f"c{number}", "n": REQUESTS}


def test_one_session_many_keys_at_once_loses_nothing(site: Site) -> None:
    owner = Browser(site.port)
    assert owner.get("/hit?client=owner") == (200, {"client": "owner", "n": 1})
    owner.close()

    def writer(number: int) -> None:
        browser = Browser(site.port, owner.cookie)
        try:
            for step in range(ROUNDS):
                assert browser.get(f"/set?key=k{number}&value={step}") == (200, {"ok": True})
        finally:
            browser.close()

    elapsed = run_at_once(STORM, writer)
    print(f"\n{STORM} threads x {ROUNDS} writes on one session: {elapsed:.2f} s")
    expected = {"client": "owner", "n": 1, **{f"k{n}": ROUNDS - 1 for n in range(STORM)}}
    assert dict(site.healthy.load(public_id(owner.cookie))) == expected
    assert len(fetch_rows(site.healthy)) == 1


def test_a_logout_during_a_storm_resurrects_nothing(site: Site) -> None:
    owner = Browser(site.port)
    owner.get("/hit?client=owner")
    owner.close()
    old = owner.cookie
    answered = threading.Semaphore(0)  # one release per write answered
    logged_out = threading.Event()
    outcomes: list[str] = []

    def logout_halfway() -> None:
        for _ in range(STORM * ROUNDS // 2):
            assert answered.acquire(timeout=TIMEOUT)
        browser = Browser(site.port, old)
        try:
            status, body = browser.get("/logout")
            assert (status, body) == (200, {"bye": True})
            assert [c.max_age for c in browser.set_cookies] == [0]
        finally:
            browser.close()
            logged_out.set()

    def writer(number: int) -> None:
        if number == STORM:
            return logout_halfway()
        browser = Browser(site.port, old)
        try:
            for step in range(ROUNDS):
                status, body = browser.get(f"/set?key=k{number}&value={step}")
                assert status == 200 and body in ({"ok": True}, {"gone": True}), (status, body)
                outcomes.append("ok" if body == {"ok": True} else "gone")
                answered.release()
            assert logged_out.wait(TIMEOUT)
            browser.cookie = old  # the old cookie, whatever the answers said
            assert browser.get(f"/set?key=k{number}&value=99") == (200, {"gone": True})
            assert browser.set_cookies == []
        finally:
            browser.close()

    run_at_once(STORM + 1, writer)
    assert "ok" in outcomes  # the storm did write before the logout
    assert fetch_rows(site.healthy) == []  # nothing came back, nothing new was created
    assert site.healthy.load(public_id(old)).new
    late = Browser(site.port, old)
    try:
        assert late.get("/read") == (200, {"new": True, "keys": []})
        assert late.set_cookies == []
    finally:
        late.close()
    assert fetch_rows(site.healthy) == []
