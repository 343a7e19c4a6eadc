"""The Bottle plugin, driven through WSGI on every backend, cookies read on the wire."""

from __future__ import annotations

import json
import logging
import socket
import threading
import warnings
from collections.abc import Callable
from typing import Any

import bottle
import pytest
import waitress
from waitress import wasyncore

from storedsession import ConfigurationError, SessionStore, StoreUnavailable
from storedsession.plugins.bottle import StoredSessionPlugin
from storedsession.web import ENVIRON_KEY

from .support import connection_given_back, fetch_rows, stored
from .wire import CACHE_CONTROL, HOSTILE, Reply, SlowRequest, assert_custom_cookie, wsgi_call


@pytest.fixture
def app() -> bottle.Bottle:
    app = bottle.Bottle()
    app.config["catchall"] = False
    return app


@pytest.fixture
def call(app: bottle.Bottle) -> Callable[..., Reply]:
    def send(path: str = "/", **options: Any) -> Reply:
        return wsgi_call(app, path, **options)

    return send


def install(app: bottle.Bottle, store: SessionStore, **options: Any) -> StoredSessionPlugin:
    plugin = StoredSessionPlugin(store, **options)
    app.install(plugin)

    @app.route("/count")
    def count(session):
        session["n"] = session.get("n", 0) + 1
        return {"n": session["n"]}

    @app.route("/read")
    def read(session):
        return {"n": session.get("n"), "new": session.new}

    @app.route("/untouched")
    def untouched(session):
        return "hello"

    @app.route("/logout")
    def logout(session):
        session.invalidate()
        return "bye"

    return plugin


# -- the scenarios ----------------------------------------------------------------------


def test_counter_across_requests(app, call, store) -> None:
    install(app, store)
    first = call("/count")
    assert first.json == {"n": 1}
    pair = first.session_pair()
    assert call("/count", cookie=pair).json == {"n": 2}
    third = call("/count", cookie=pair)
    assert third.json == {"n": 3}
    assert third.session_pair() == pair  # same id: a write does not rotate it
    assert len(fetch_rows(store)) == 1


def test_untouched_or_missing_key_sets_no_cookie_and_no_row(
    app, call, store, count_queries
) -> None:
    install(app, store)
    with count_queries(store) as q:
        untouched = call("/untouched")
        read = call("/read")
    assert q.count == 0
    assert untouched.set_cookies == [] and untouched.header("Vary") is None
    assert read.json == {"n": None, "new": True}
    assert read.set_cookies == [] and read.header("Vary") == "Cookie"
    assert fetch_rows(store) == []


def test_read_only_request_resends_no_cookie_until_touch_interval(
    app, call, store, clock, count_queries
) -> None:
    install(app, store)
    pair = call("/count").session_pair()
    clock.advance(30)
    with count_queries(store) as q:
        reply = call("/read", cookie=pair)
    assert reply.json["n"] == 1
    assert reply.set_cookies == [] and q.count == 1
    clock.advance(31)  # past the 60 s touch interval since the write
    with count_queries(store) as q:
        refreshed = call("/read", cookie=pair)
    assert q.count == 2  # read, then the "last seen" update
    assert refreshed.session_pair() == pair
    assert refreshed.cookie().max_age == 14 * 86400


@pytest.mark.parametrize(
    ("path", "with_cookie", "queries"),
    [
        ("/untouched", False, 0),
        ("/untouched", True, 0),
        ("/read", True, 1),
        ("/count", True, 2),
        ("/count", False, 1),
    ],
    ids=["untouched", "untouched-cookie", "read", "modify", "new"],
)
def test_query_counts(app, call, store, count_queries, path, with_cookie, queries) -> None:
    install(app, store)
    pair = call("/count").session_pair() if with_cookie else None
    with count_queries(store) as q:
        assert call(path, cookie=pair).status == 200
    assert q.count == queries, q.statements


def test_login_regenerates_then_redirects(app, call, store) -> None:
    install(app, store)

    @app.route("/login")
    def login(session):
        session.regenerate()
        session.user_id = 7
        session["user"] = "ada"
        bottle.redirect("/home")

    old = call("/count").session_pair()
    reply = call("/login", cookie=old)
    assert reply.status == 303 and reply.header("Location") == "http://example.com/home"
    new = reply.session_pair()
    assert new != old
    assert call("/read", cookie=new).json == {"n": 1, "new": False}
    assert call("/read", cookie=old).json == {"n": None, "new": True}
    assert [row[2] for row in fetch_rows(store)] == ["7"]


def test_abort_below_500_saves(app, call, store) -> None:
    install(app, store)

    @app.route("/forbidden")
    def forbidden(session):
        session["attempts"] = 1
        bottle.abort(403, "no")

    reply = call("/forbidden")
    assert reply.status == 403 and reply.header("Vary") == "Cookie"
    pair = reply.session_pair()
    assert call("/read", cookie=pair).json["new"] is False


def test_returned_response_carries_the_cookie(app, call, store) -> None:
    install(app, store)

    @app.route("/created")
    def created(session):
        session["n"] = 5
        bottle.response.set_header("X-Lost", "yes")  # a returned response replaces these
        return bottle.HTTPResponse("made", status=201, headers={"Vary": "Accept"})

    reply = call("/created")
    assert reply.status == 201 and reply.header("X-Lost") is None
    assert reply.header("Vary") == "Accept, Cookie"
    assert call("/read", cookie=reply.session_pair()).json["n"] == 5


def test_logout_sends_a_deletion_cookie_and_removes_the_row(app, call, store) -> None:
    install(app, store, cookie_domain="example.com", cookie_path="/", cookie_samesite="Strict")
    pair = call("/count", https=True).session_pair()
    reply = call("/logout", cookie=pair, https=True)
    deletion = reply.cookie()
    assert deletion is not None and deletion.value == ""
    assert deletion.attrs["max-age"] == "0"
    assert deletion.attrs["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert deletion.attrs["path"] == "/" and deletion.attrs["domain"] == "example.com"
    assert "secure" in deletion.attrs and "httponly" in deletion.attrs
    assert deletion.attrs["samesite"] == "Strict"
    assert fetch_rows(store) == []
    assert call("/read", cookie=pair).json == {"n": None, "new": True}


@pytest.mark.parametrize("catchall", [True, False])
def test_exception_saves_nothing_and_returns_the_connection(app, call, store, catchall) -> None:
    install(app, store)
    app.config["catchall"] = catchall

    @app.route("/boom")
    def boom(session):
        session["n"] = 99
        raise RuntimeError("boom")

    pair = call("/count").session_pair()
    if catchall:
        reply = call("/boom", cookie=pair)
        assert reply.status == 500 and reply.set_cookies == []
    else:
        with pytest.raises(RuntimeError):
            call("/boom", cookie=pair)
    assert connection_given_back(store)
    assert call("/read", cookie=pair).json["n"] == 1
    assert len(fetch_rows(store)) == 1


@pytest.mark.parametrize("status", [500, 503])
def test_error_response_at_or_above_500_saves_nothing(app, call, store, status) -> None:
    install(app, store)

    @app.route("/fail")
    def fail(session):
        session["n"] = 1
        bottle.abort(status, "down")

    reply = call("/fail")
    assert reply.status == status and reply.set_cookies == []
    assert fetch_rows(store) == []


@pytest.mark.parametrize("kind", ["garbage", "10kb", "non-ascii", "quotes", "handle"])
def test_hostile_cookies_never_cause_a_500(app, call, store, kind) -> None:
    install(app, store)
    stored = store.load(None)
    stored["owner"] = "someone else"
    store.save(stored)
    value = stored.handle if kind == "handle" else HOSTILE[kind]
    assert value is not None
    reply = call("/count", cookie=f"session={value}")
    assert reply.status == 200 and reply.json == {"n": 1}
    assert reply.cookie().value != value
    assert dict(store.load(stored.id)) == {"owner": "someone else"}


@pytest.mark.parametrize(
    ("https", "secure_option", "secure"),
    [
        (False, None, False),
        (True, None, True),
        (False, True, True),
        (True, False, False),
    ],
)
def test_cookie_attributes(app, call, store, https, secure_option, secure) -> None:
    install(
        app,
        store,
        cookie_name="sid",
        cookie_path="/app",
        cookie_domain="example.com",
        cookie_secure=secure_option,
        cookie_samesite="strict",
    )
    reply = call("/count", https=https)
    assert_custom_cookie(reply, secure)


def test_forwarded_headers_never_make_the_cookie_secure(app, call, store) -> None:
    install(app, store)
    reply = call("/count", headers={"X-Forwarded-Proto": "https", "Forwarded": "proto=https"})
    assert "secure" not in reply.cookie().attrs


def test_httponly_and_samesite_can_be_turned_off(app, call, store) -> None:
    install(app, store, cookie_httponly=False, cookie_samesite=None)
    attrs = call("/count").cookie().attrs
    assert "httponly" not in attrs and "samesite" not in attrs


def test_max_age_follows_the_remaining_lifetime(app, call, make_store, clock) -> None:
    store = make_store(idle_timeout=3600, absolute_timeout=5400)
    install(app, store)

    @app.route("/browser")
    def browser_session(session):
        session.set_expiry(0)
        return "ok"

    first = call("/count")
    assert first.cookie().max_age == 3600
    clock.advance(2000)
    # the idle limit would allow 3600 s more; the absolute limit leaves 3400
    assert call("/read", cookie=first.session_pair()).cookie().max_age == 3400
    browser = call("/browser", cookie=first.session_pair()).cookie()
    assert "max-age" not in browser.attrs and "expires" not in browser.attrs


def test_vary_is_merged_into_the_existing_header(app, call, store) -> None:
    install(app, store)

    @app.route("/vary")
    def vary(session):
        bottle.response.set_header("Vary", "Accept-Encoding")
        return {"n": session.get("n")}

    assert call("/vary").header_values("Vary") == ["Accept-Encoding, Cookie"]


def test_concurrent_logout_is_not_undone_by_a_slow_request(app, call, store, caplog) -> None:
    install(app, store)
    slow = SlowRequest(lambda: call("/slow", cookie=pair))

    @app.route("/slow")
    def handler(session):
        session.get("n")
        slow.loaded.set()
        assert slow.release.wait(10)
        session["cart"] = ["book"]
        return "done"

    pair = call("/count").session_pair()
    with caplog.at_level(logging.WARNING, logger="storedsession.security"):
        slow.start()
        logout = call("/logout", cookie=pair)
        assert logout.cookie().attrs["max-age"] == "0"
        reply = slow.finish()
    assert reply.status == 200 and reply.set_cookies == []
    assert fetch_rows(store) == []
    assert "deleted while a request used it" in caplog.text


def test_routes_skip_the_plugin(app, call, store, count_queries) -> None:
    plugin = install(app, store)
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
    install(app, store)

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


def test_a_custom_keyword_and_a_duplicate_plugin(app, call, store) -> None:
    app.install(StoredSessionPlugin(store, keyword="web_session"))
    with pytest.raises(bottle.PluginError):
        app.install(StoredSessionPlugin(store, keyword="web_session"))

    @app.route("/")
    def index(web_session):
        web_session["n"] = 1
        return "ok"

    assert call("/").cookie() is not None


@pytest.mark.parametrize("order", ["garbage-first", "two-valid"])
def test_a_cookie_sent_twice_uses_the_first_well_formed_value(
    app, call, store, order, count_queries
) -> None:
    install(app, store)
    first = call("/count").session_pair()
    other = call("/count").session_pair()
    call("/count", cookie=other)  # the other session holds n == 2
    header = {
        "garbage-first": f"session=garbage; theme=dark; {first}",
        "two-valid": f"{first}; theme=dark; {other}",
    }[order]
    with count_queries(store) as q:
        assert call("/read", cookie=header).json["n"] == 1
    assert q.count == 1


def test_webtest_set_cookie_keeps_the_session(app, store) -> None:
    with warnings.catch_warnings():  # webob, under webtest, imports the deprecated cgi
        warnings.simplefilter("ignore", DeprecationWarning)
        import webtest
    install(app, store)

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
    install(app, store)

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


# -- caching -------------------------------------------------------------------------


def _cache_routes(app: bottle.Bottle, app_value: str | None) -> None:
    def cached(out: Any) -> Any:
        if app_value is not None:
            bottle.response.set_header("Cache-Control", app_value)
        return out

    @app.route("/c/write")
    def write(session):
        session["n"] = session.get("n", 0) + 1
        return cached({"n": session["n"]})

    @app.route("/c/read")
    def peek(session):
        return cached({"n": session.get("n")})

    @app.route("/c/logout")
    def logout(session):
        session.invalidate()
        return cached("bye")

    @app.route("/c/plain")
    def plain():
        return cached("hello")


@pytest.mark.parametrize(("app_value", "expected"), CACHE_CONTROL)
def test_a_response_that_sets_the_session_cookie_is_private(
    app, call, store, clock, app_value, expected
) -> None:
    install(app, store)
    _cache_routes(app, app_value)
    written = call("/c/write")
    assert written.cookie() is not None
    assert written.header_values("Cache-Control") == [expected]
    pair = written.session_pair()
    # No session cookie on the response: the application's header is left alone.
    for path in ("/c/read", "/c/plain", "/untouched"):
        reply = call(path, cookie=pair)
        assert reply.cookie() is None
        assert reply.header("Cache-Control") == (None if path == "/untouched" else app_value)
    clock.advance(61)  # past the touch interval: the read re-sends the cookie
    touched = call("/c/read", cookie=pair)
    assert touched.cookie() is not None and touched.header_values("Cache-Control") == [expected]
    deleted = call("/c/logout", cookie=pair)
    assert deleted.cookie().value == "" and deleted.header_values("Cache-Control") == [expected]


def test_cache_control_of_raised_returned_and_repeated_headers(app, call, store) -> None:
    install(app, store)

    @app.route("/redirect")
    def redirect(session):
        session["n"] = 1
        bottle.response.set_header("Cache-Control", "public, max-age=60")
        bottle.redirect("/home")

    @app.route("/returned")
    def returned(session):
        session["n"] = 1
        return bottle.HTTPResponse("made", status=201, headers={"Cache-Control": "s-maxage=9"})

    @app.route("/repeated")
    def repeated(session):
        session["n"] = 1
        bottle.response.add_header("Cache-Control", "no-store")
        bottle.response.add_header("Cache-Control", "public")
        return "ok"

    reply = call("/redirect")
    assert reply.status == 303 and reply.header_values("Cache-Control") == ["private, max-age=60"]
    reply = call("/returned")
    assert reply.status == 201 and reply.header_values("Cache-Control") == ["private"]
    assert call("/repeated").header_values("Cache-Control") == ["no-store"]


@pytest.mark.parametrize(
    "options",
    [{"cookie_name": "__Host-session"}, {"cookie_name": "__secure-s"}, {"cookie_samesite": "None"}],
)
def test_cookies_browsers_drop_without_secure_are_always_secure(app, call, store, options) -> None:
    install(app, store, **options)
    name = options.get("cookie_name", "session")
    pair = call("/count").session_pair(name)  # plain HTTP
    assert "secure" in call("/count").cookie(name).attrs
    assert "secure" in call("/logout", cookie=pair).cookie(name).attrs


@pytest.mark.parametrize(
    "options",
    [
        {"cookie_path": "/; Domain=evil.example"},
        {"cookie_domain": "example.com\r\nSet-Cookie: x=y"},
        {"cookie_name": "__HOST-session", "cookie_path": "/app"},
        {"cookie_name": "__Secure-session", "cookie_secure": False},
        {"cookie_samesite": "none", "cookie_secure": False},
    ],
)
def test_unusable_cookie_options_fail_when_the_plugin_is_built(store, options) -> None:
    with pytest.raises(ConfigurationError):
        StoredSessionPlugin(store, **options)


# -- a failing database -----------------------------------------------------------------


def test_a_missing_table_answers_503_without_a_cookie(app, call, store) -> None:
    install(app, store)
    pair = call("/count").session_pair()
    store.drop_table()
    for reply in (call("/read", cookie=pair), call("/count")):
        assert reply.status == 503 and reply.set_cookies == []
    assert call("/untouched", cookie=pair).status == 200  # lazy: no query, no failure


def test_an_unreachable_database_answers_503(app, call, backend, keys) -> None:
    url = {
        "sqlite": "sqlite:////nonexistent-dir/sessions.db",
        "postgres": "postgresql://postgres@127.0.0.1:9/test",
        "pgbouncer": "postgresql://postgres@127.0.0.1:9/test",
        "mysql": "mysql://root@127.0.0.1:9/test",
    }[backend]
    install(app, SessionStore(url, keys=keys))
    cookie = "session=" + "A" * 43
    assert call("/read", cookie=cookie).status == 503
    reply = call("/count")
    assert reply.status == 503 and reply.set_cookies == []


def test_a_handler_that_swallows_the_failure_still_gets_503(app, call, store) -> None:
    install(app, store)

    @app.route("/swallow")
    def swallow(session):
        try:
            session.get("n")
        except StoreUnavailable:
            return "pretending all is well"
        return "loaded"

    pair = call("/count").session_pair()
    store.drop_table()
    reply = call("/swallow", cookie=pair)
    assert reply.status == 503 and reply.set_cookies == []
