"""What only the Bottle plugin has: route skipping, the keyword, the environ entry,
bottle's own responses and catchall, webtest and waitress. The contract every adapter
keeps is in test_adapter_contract.py.
"""

from __future__ import annotations

import json
import socket
import threading
import warnings
from typing import Any

import bottle
import pytest
import waitress
from waitress import wasyncore

from storedsession import SessionStore
from storedsession.plugins.bottle import StoredSessionPlugin
from storedsession.web import ENVIRON_KEY

from .fronts import BottleFront
from .support import connection_given_back, fetch_rows, stored
from .wire import Reply, wsgi_call


@pytest.fixture
def bottle_front(store: SessionStore) -> BottleFront:
    """This module's front: a fresh Bottle app with the plugin and the four routes."""
    return BottleFront(store)


@pytest.fixture
def app(bottle_front: BottleFront) -> bottle.Bottle:
    return bottle_front.app


@pytest.fixture
def call(bottle_front: BottleFront) -> Any:
    return bottle_front.get


def test_returned_response_carries_the_cookie(app, call, store) -> None:
    @app.route("/created")
    def created(session):
        session["n"] = 5
        bottle.response.set_header("X-Lost", "yes")  # a returned response replaces these
        return bottle.HTTPResponse("made", status=201, headers={"Vary": "Accept"})

    reply = call("/created")
    assert reply.status == 201 and reply.header("X-Lost") is None
    assert reply.header("Vary") == "Accept, Cookie"
    assert call("/read", cookie=reply.session_pair()).json["n"] == 5


def test_with_catchall_off_an_exception_escapes_and_saves_nothing(app, call, store) -> None:
    # With catchall on (a 500 reply) this is in the contract, for every adapter.
    @app.route("/boom")
    def boom(session):
        session["n"] = 99
        raise RuntimeError("boom")

    pair = call("/count").session_pair()
    with pytest.raises(RuntimeError):
        call("/boom", cookie=pair)
    assert connection_given_back(store)
    assert call("/read", cookie=pair).json["n"] == 1
    assert len(fetch_rows(store)) == 1


def test_routes_skip_the_plugin(bottle_front, app, call, store, count_queries) -> None:
    plugin = bottle_front.plugin
    seen: list[bool] = []

    @app.route("/off", storedsession=False)
    def off():
        seen.append(ENVIRON_KEY in bottle.request.environ)
        return "off"

    @app.route("/by-type", skip=[StoredSessionPlugin])
    def by_type():
        seen.append(ENVIRON_KEY in bottle.request.environ)
        return "off"

    @app.route("/by-name", skip=["storedsession"])
    def by_name():
        seen.append(ENVIRON_KEY in bottle.request.environ)
        return "off"

    @app.route("/by-instance", skip=[plugin])
    def by_instance():
        seen.append(ENVIRON_KEY in bottle.request.environ)
        return "off"

    pair = call("/count").session_pair()
    with count_queries(store) as q:
        for path in ("/off", "/by-type", "/by-name", "/by-instance"):
            reply = call(path, cookie=pair)
            assert reply.status == 200 and reply.set_cookies == []
            assert reply.header("Vary") is None
    assert seen == [False] * 4 and q.count == 0


def test_callbacks_without_the_keyword_find_the_session_in_environ(app, call, store) -> None:
    @app.route("/plain/<name>")
    def plain(name):
        session = bottle.request.environ[ENVIRON_KEY]
        session["name"] = name
        return "ok"

    pair = call("/plain/ada").session_pair()
    assert dict(store.load(pair.partition("=")[2])) == {"name": "ada"}


def test_a_closure_over_a_non_callable_is_handled(store) -> None:
    def build(greeting: str) -> bottle.Bottle:
        app = bottle.Bottle()
        app.config["catchall"] = False
        app.install(StoredSessionPlugin(store))

        @app.route("/")
        def index(session):
            session["greeting"] = greeting
            return greeting

        return app

    app = build("hello")
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(wsgi_call(app)), daemon=True)
    thread.start()
    thread.join(10)  # bottle's own get_callback_args() would never return here
    assert replies and replies[0].body == b"hello"
    assert dict(store.load(replies[0].cookie().value)) == {"greeting": "hello"}


def test_a_custom_keyword_and_a_duplicate_plugin(store) -> None:
    app = bottle.Bottle()
    app.config["catchall"] = False
    app.install(StoredSessionPlugin(store, keyword="web_session"))
    with pytest.raises(bottle.PluginError):
        app.install(StoredSessionPlugin(store, keyword="web_session"))

    @app.route("/")
    def index(web_session):
        web_session["n"] = 1
        return "ok"

    assert wsgi_call(app).cookie() is not None


def test_webtest_set_cookie_keeps_the_session(app, store) -> None:
    with warnings.catch_warnings():  # webob, under webtest, imports the deprecated cgi
        warnings.simplefilter("ignore", DeprecationWarning)
        import webtest

    @app.route("/login")
    def login(session):
        session.regenerate()
        session.user_id = 7
        session["user"] = "ada"
        return {"sent": bottle.request.environ["HTTP_COOKIE"]}

    @app.route("/me")
    def me(session):
        return {"user": session.get("user"), "n": session.get("n")}

    public_id = stored(store, n=1)
    # A host with a dot: for "localhost" webtest files set_cookie's cookie under
    # ".localhost" and the server's under "localhost.local", and then sends both.
    browser = webtest.TestApp(app, extra_environ={"HTTP_HOST": "example.com"})
    browser.set_cookie("session", public_id)
    assert browser.get("/login").json == {"sent": f'session="{public_id}"'}  # quoted
    assert browser.get("/me").json == {"user": "ada", "n": 1}
    assert browser.get("/count").json == {"n": 2}
    assert browser.get("/me").json == {"user": "ada", "n": 2}
    assert [row[2] for row in fetch_rows(store)] == ["7"]


def test_two_cookie_fields_through_waitress_are_not_split_on_its_comma(app, store) -> None:
    # RFC 6265 §5.4: a user agent sends one Cookie field. waitress joins repeated fields
    # with ", "; since a comma never starts a pair, a later field cannot smuggle in a
    # session: the request reads as a new, empty session.
    @app.route("/raw")
    def raw(session):
        return {"raw": bottle.request.environ["HTTP_COOKIE"], "n": session.get("n")}

    live = stored(store, n=1)
    server: Any = waitress.create_server(app, host="127.0.0.1", port=0, threads=1)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        request = (
            "GET /raw HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n"
            f"Cookie: pref=x\r\nCookie: session={live}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", server.effective_port), timeout=10) as conn:
            conn.sendall(request.encode("latin-1"))
            answer = b"".join(iter(lambda: conn.recv(65536), b""))
    finally:
        server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map, ignore_all=True))
        thread.join(10)
        server.task_dispatcher.shutdown(timeout=5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body) == {"raw": f"pref=x, session={live}", "n": None}
    assert b"Set-Cookie" not in head
    assert dict(store.load(live)) == {"n": 1}


def test_cache_control_of_a_returned_response(app, call, store) -> None:
    # A raised redirect and repeated headers are in the contract, for every adapter.
    @app.route("/returned")
    def returned(session):
        session["n"] = 1
        return bottle.HTTPResponse("made", status=201, headers={"Cache-Control": "s-maxage=9"})

    reply = call("/returned")
    assert reply.status == 201 and reply.header_values("Cache-Control") == ["private"]
