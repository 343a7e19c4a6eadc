"""The Falcon middleware under WSGI and ASGI, on every backend, cookies read on the wire."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import falcon
import falcon.asgi
import falcon.testing
import pytest

from storedsession import ConfigurationError, SessionStore, StoreUnavailable
from storedsession.plugins.falcon import StoredSessionMiddleware

from .support import connection_given_back, fetch_rows
from .wire import CACHE_CONTROL, HOSTILE, Reply, SlowRequest, assert_custom_cookie

Handler = Callable[[falcon.Request, falcon.Response], None]


@pytest.fixture(params=[True, False], ids=["asgi", "wsgi"])
def asgi(request: pytest.FixtureRequest) -> bool:
    return request.param


def _spy(app: Any, asgi: bool, seen: threading.local) -> Any:
    """Wrap ``app`` to record the raw response header lines, as a client gets them."""
    if asgi:

        async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
            async def capture(event: dict[str, Any]) -> None:
                if event["type"] == "http.response.start":
                    seen.headers = [
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in event["headers"]
                    ]
                await send(event)

            await app(scope, receive, capture)

        return asgi_app

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.headers = list(headers)
            return start_response(status, headers, exc_info)

        return app(environ, capture)

    return wsgi_app


def count(req: falcon.Request, resp: falcon.Response) -> None:
    session = req.context.session
    session["n"] = session.get("n", 0) + 1
    resp.media = {"n": session["n"]}


def read(req: falcon.Request, resp: falcon.Response) -> None:
    session = req.context.session
    resp.media = {"n": session.get("n"), "new": session.new}


def untouched(req: falcon.Request, resp: falcon.Response) -> None:
    resp.text = "hello"


def logout(req: falcon.Request, resp: falcon.Response) -> None:
    req.context.session.invalidate()
    resp.text = "bye"


class Client:
    """A Falcon app of either protocol with the middleware, and a TestClient for it."""

    def __init__(self, asgi: bool, store: SessionStore, **options: Any) -> None:
        self.asgi = asgi
        self.app = (falcon.asgi.App if asgi else falcon.App)(
            middleware=[StoredSessionMiddleware(store, **options)]
        )
        self._seen = threading.local()
        self.wire = _spy(self.app, asgi, self._seen)
        self.client = falcon.testing.TestClient(self.wire)
        for path, handler in [
            ("/count", count),
            ("/read", read),
            ("/untouched", untouched),
            ("/logout", logout),
        ]:
            self.route(path, handler)

    def route(self, path: str, handler: Handler, **attributes: Any) -> None:
        """Serve ``handler`` at ``path`` from a resource of this app's protocol."""
        if self.asgi:

            async def on_get(resource: Any, req: Any, resp: Any) -> None:
                handler(req, resp)
        else:

            def on_get(resource: Any, req: Any, resp: Any) -> None:  # type: ignore[misc]
                handler(req, resp)

        self.app.add_route(path, type("Resource", (), {"on_get": on_get, **attributes})())

    def _options(
        self, cookie: str | None, https: bool, headers: dict[str, str] | None
    ) -> dict[str, Any]:
        headers = dict(headers or {})
        if cookie is not None:
            headers["Cookie"] = cookie
        return {"headers": headers, "protocol": "https" if https else "http"}

    def get(
        self,
        path: str = "/",
        *,
        cookie: str | None = None,
        https: bool = False,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        result = self.client.simulate_get(path, **self._options(cookie, https, headers))
        return Reply(result.status_code, self._seen.headers, result.content)

    def get_in_own_loop(self, path: str, *, cookie: str | None = None) -> Reply:
        """Like :meth:`get`, safe from another thread (TestClient shares one loop)."""
        if not self.asgi:
            return self.get(path, cookie=cookie)

        async def run() -> falcon.testing.Result:
            async with falcon.testing.ASGIConductor(self.wire) as conductor:
                return await conductor.simulate_get(path, **self._options(cookie, False, None))

        result = asyncio.run(run())
        return Reply(result.status_code, self._seen.headers, result.content)


@pytest.fixture
def client(asgi: bool, store: SessionStore) -> Client:
    return Client(asgi, store)


# -- the scenarios ----------------------------------------------------------------------


def test_counter_across_requests(client, store) -> None:
    first = client.get("/count")
    assert first.json == {"n": 1}
    pair = first.session_pair()
    assert client.get("/count", cookie=pair).json == {"n": 2}
    third = client.get("/count", cookie=pair)
    assert third.json == {"n": 3} and third.session_pair() == pair
    assert len(fetch_rows(store)) == 1


def test_untouched_or_missing_key_sets_no_cookie_and_no_row(client, store, count_queries) -> None:
    with count_queries(store) as q:
        untouched = client.get("/untouched")
        read = client.get("/read")
    assert q.count == 0
    assert untouched.set_cookies == [] and untouched.header("Vary") is None
    assert read.json == {"n": None, "new": True}
    assert read.set_cookies == [] and read.header("Vary") == "Cookie"
    assert fetch_rows(store) == []


def test_read_only_request_resends_no_cookie_until_touch_interval(
    client, store, clock, count_queries
) -> None:
    pair = client.get("/count").session_pair()
    clock.advance(30)
    with count_queries(store) as q:
        reply = client.get("/read", cookie=pair)
    assert reply.json["n"] == 1 and reply.set_cookies == [] and q.count == 1
    clock.advance(31)
    with count_queries(store) as q:
        refreshed = client.get("/read", cookie=pair)
    assert q.count == 2
    assert refreshed.session_pair() == pair
    assert refreshed.cookie().max_age == 14 * 86400


@pytest.mark.parametrize(
    ("path", "with_cookie", "wsgi_queries", "asgi_queries"),
    [
        ("/untouched", False, 0, 0),
        ("/untouched", True, 0, 1),
        ("/read", True, 1, 1),
        ("/count", True, 2, 2),
        ("/count", False, 1, 1),
    ],
    ids=["untouched", "untouched-cookie", "read", "modify", "new"],
)
def test_query_counts(
    client, store, count_queries, path, with_cookie, wsgi_queries, asgi_queries
) -> None:
    pair = client.get("/count").session_pair() if with_cookie else None
    with count_queries(store) as q:
        assert client.get(path, cookie=pair).status == 200
    assert q.count == (asgi_queries if client.asgi else wsgi_queries), q.statements


def test_asgi_never_queries_on_the_event_loop(store) -> None:
    client = Client(True, store)
    loop_threads: set[int] = set()
    query_threads: set[int] = set()

    def note_loop(req: falcon.Request, resp: falcon.Response) -> None:
        loop_threads.add(threading.get_ident())
        count(req, resp)

    client.route("/note", note_loop)
    store.database.query_hooks.append(lambda event: query_threads.add(threading.get_ident()))
    pair = client.get("/note").session_pair()
    client.get("/note", cookie=pair)
    client.get("/logout", cookie=pair)
    assert loop_threads and query_threads and not loop_threads & query_threads


def test_login_regenerates_then_redirects(client, store) -> None:
    def login(req: falcon.Request, resp: falcon.Response) -> None:
        session = req.context.session
        session.regenerate()
        session.user_id = 7
        session["user"] = "ada"
        raise falcon.HTTPFound("/home")

    client.route("/login", login)
    old = client.get("/count").session_pair()
    reply = client.get("/login", cookie=old)
    assert reply.status == 302 and reply.header("Location") == "/home"
    new = reply.session_pair()
    assert new != old
    assert client.get("/read", cookie=new).json == {"n": 1, "new": False}
    assert client.get("/read", cookie=old).json == {"n": None, "new": True}
    assert [row[2] for row in fetch_rows(store)] == ["7"]


def test_client_errors_below_500_save(client, store) -> None:
    def forbidden(req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session["attempts"] = 1
        raise falcon.HTTPForbidden()

    client.route("/forbidden", forbidden)
    reply = client.get("/forbidden")
    assert reply.status == 403 and "Cookie" in reply.header("Vary")
    assert client.get("/read", cookie=reply.session_pair()).json["new"] is False


def test_logout_sends_a_deletion_cookie_and_removes_the_row(asgi, store) -> None:
    client = Client(asgi, store, cookie_name="__Host-session", cookie_samesite="Strict")
    pair = client.get("/count", https=True).session_pair("__Host-session")
    reply = client.get("/logout", cookie=pair, https=True)
    deletion = reply.cookie("__Host-session")
    assert deletion is not None and deletion.value == ""
    assert deletion.attrs["max-age"] == "0"
    assert deletion.attrs["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert deletion.attrs["path"] == "/" and "domain" not in deletion.attrs
    assert "secure" in deletion.attrs and "httponly" in deletion.attrs
    assert deletion.attrs["samesite"] == "Strict"
    assert fetch_rows(store) == []
    assert client.get("/read", cookie=pair, https=True).json == {"n": None, "new": True}


def test_deletion_cookie_keeps_the_domain(client, asgi, store) -> None:
    client = Client(asgi, store, cookie_domain="example.com")
    pair = client.get("/count").session_pair()
    deletion = client.get("/logout", cookie=pair).cookie()
    assert deletion.attrs["domain"] == "example.com" and "secure" not in deletion.attrs


def test_exception_saves_nothing_and_returns_the_connection(client, store) -> None:
    def boom(req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session["n"] = 99
        raise RuntimeError("boom")

    client.route("/boom", boom)
    pair = client.get("/count").session_pair()
    reply = client.get("/boom", cookie=pair)
    assert reply.status == 500 and reply.set_cookies == []
    assert connection_given_back(store)
    assert client.get("/read", cookie=pair).json["n"] == 1


@pytest.mark.parametrize("how", ["raised", "status"])
def test_responses_at_or_above_500_save_nothing(client, store, how) -> None:
    def fail(req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session["n"] = 1
        if how == "raised":
            raise falcon.HTTPServiceUnavailable()
        resp.status = falcon.HTTP_500

    client.route("/fail", fail)
    reply = client.get("/fail")
    assert reply.status in (500, 503) and reply.set_cookies == []
    assert fetch_rows(store) == []


@pytest.mark.parametrize("kind", ["garbage", "10kb", "non-ascii", "quotes", "handle"])
def test_hostile_cookies_never_cause_a_500(client, store, kind) -> None:
    stored = store.load(None)
    stored["owner"] = "someone else"
    store.save(stored)
    value = stored.handle if kind == "handle" else HOSTILE[kind]
    assert value is not None
    reply = client.get("/count", cookie=f"session={value}")
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
def test_cookie_attributes(asgi, store, https, secure_option, secure) -> None:
    client = Client(
        asgi,
        store,
        cookie_name="sid",
        cookie_path="/app",
        cookie_domain="example.com",
        cookie_secure=secure_option,
        cookie_samesite="strict",
    )
    reply = client.get("/count", https=https)
    assert_custom_cookie(reply, secure)


def test_forwarded_headers_never_make_the_cookie_secure(client) -> None:
    reply = client.get("/count", headers={"X-Forwarded-Proto": "https", "Forwarded": "proto=https"})
    assert "secure" not in reply.cookie().attrs


def test_max_age_follows_the_remaining_lifetime(asgi, make_store, clock) -> None:
    client = Client(asgi, make_store(idle_timeout=3600, absolute_timeout=5400))
    client.route("/browser", lambda req, resp: req.context.session.set_expiry(0))
    first = client.get("/count")
    assert first.cookie().max_age == 3600
    clock.advance(2000)
    assert client.get("/read", cookie=first.session_pair()).cookie().max_age == 3400
    browser = client.get("/browser", cookie=first.session_pair()).cookie()
    assert "max-age" not in browser.attrs and "expires" not in browser.attrs


def test_vary_is_merged_into_the_existing_header(client) -> None:
    def vary(req: falcon.Request, resp: falcon.Response) -> None:
        resp.vary = ("Accept-Encoding",)
        read(req, resp)

    client.route("/vary", vary)
    assert client.get("/vary").header_values("Vary") == ["Accept-Encoding, Cookie"]


def test_the_apps_own_cookies_are_kept(client) -> None:
    def both(req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_cookie("theme", "dark", secure=False)
        resp.append_header("Set-Cookie", "lang=en; Path=/")
        count(req, resp)

    client.route("/both", both)
    names = sorted(cookie.name for cookie in client.get("/both").set_cookies)
    assert names == ["lang", "session", "theme"]


def test_concurrent_logout_is_not_undone_by_a_slow_request(client, store, caplog) -> None:
    slow = SlowRequest(lambda: client.get_in_own_loop("/slow", cookie=pair))

    if client.asgi:

        class Slow:
            async def on_get(self, req: Any, resp: Any) -> None:
                req.context.session.get("n")
                slow.loaded.set()
                assert await asyncio.to_thread(slow.release.wait, 10)
                req.context.session["cart"] = ["book"]
    else:

        class Slow:  # type: ignore[no-redef]
            def on_get(self, req: Any, resp: Any) -> None:
                req.context.session.get("n")
                slow.loaded.set()
                assert slow.release.wait(10)
                req.context.session["cart"] = ["book"]

    client.app.add_route("/slow", Slow())
    pair = client.get("/count").session_pair()
    with caplog.at_level(logging.WARNING, logger="storedsession.security"):
        slow.start()
        assert client.get("/logout", cookie=pair).cookie().attrs["max-age"] == "0"
        reply = slow.finish()
    assert reply.status == 200 and reply.set_cookies == []
    assert fetch_rows(store) == []
    assert "deleted while a request used it" in caplog.text


def test_a_resource_opts_out(client, store, count_queries) -> None:
    def changes(req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session["ignored"] = True

    client.route("/off", untouched, storedsession=False)
    client.route("/off-changing", changes, storedsession=False)
    pair = client.get("/count").session_pair()
    with count_queries(store) as q:
        off = client.get("/off", cookie=pair)
    # Under ASGI the session is loaded before routing, so the cookie costs its one query.
    assert q.count == (1 if client.asgi else 0)
    assert off.status == 200 and off.set_cookies == [] and off.header("Vary") is None
    changed = client.get("/off-changing", cookie=pair)
    assert changed.set_cookies == [] and changed.header("Vary") is None
    assert "ignored" not in store.load(pair.partition("=")[2])


@pytest.mark.parametrize("order", ["garbage-first", "two-valid"])
def test_a_cookie_sent_twice_uses_the_first_well_formed_value(
    client, store, order, count_queries
) -> None:
    first = client.get("/count").session_pair()
    other = client.get("/count").session_pair()
    client.get("/count", cookie=other)
    header = {
        "garbage-first": f"session=garbage; theme=dark; {first}",
        "two-valid": f"{first}; theme=dark; {other}",
    }[order]
    with count_queries(store) as q:
        assert client.get("/read", cookie=header).json["n"] == 1
    assert q.count == 1


# -- caching -------------------------------------------------------------------------


@pytest.mark.parametrize(("app_value", "expected"), CACHE_CONTROL)
def test_a_response_that_sets_the_session_cookie_is_private(
    client, store, clock, app_value, expected
) -> None:
    def cached(handler: Handler) -> Handler:
        def run(req: falcon.Request, resp: falcon.Response) -> None:
            if app_value is not None:
                resp.set_header("Cache-Control", app_value)
            handler(req, resp)

        return run

    for path, handler in [("/c/write", count), ("/c/read", read), ("/c/logout", logout)]:
        client.route(path, cached(handler))
    client.route("/c/plain", cached(untouched))
    written = client.get("/c/write")
    assert written.cookie() is not None
    assert written.header_values("Cache-Control") == [expected]
    pair = written.session_pair()
    # No session cookie on the response: the application's header is left alone.
    for path in ("/c/read", "/c/plain", "/untouched"):
        reply = client.get(path, cookie=pair)
        assert reply.cookie() is None
        assert reply.header("Cache-Control") == (None if path == "/untouched" else app_value)
    clock.advance(61)  # past the touch interval: the read re-sends the cookie
    touched = client.get("/c/read", cookie=pair)
    assert touched.cookie() is not None and touched.header_values("Cache-Control") == [expected]
    deleted = client.get("/c/logout", cookie=pair)
    assert deleted.cookie().value == "" and deleted.header_values("Cache-Control") == [expected]


def test_cache_control_of_raised_and_repeated_headers(client) -> None:
    def redirect(req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session["n"] = 1
        raise falcon.HTTPFound("/home", headers={"Cache-Control": "public, max-age=60"})

    def repeated(req: falcon.Request, resp: falcon.Response) -> None:
        resp.cache_control = ["public", "s-maxage=600"]
        resp.append_header("Cache-Control", "no-store")
        count(req, resp)

    client.route("/redirect", redirect)
    client.route("/repeated", repeated)
    reply = client.get("/redirect")
    assert reply.status == 302 and reply.header_values("Cache-Control") == ["private, max-age=60"]
    assert client.get("/repeated").header_values("Cache-Control") == ["no-store"]


@pytest.mark.parametrize(
    "options",
    [{"cookie_name": "__Host-session"}, {"cookie_name": "__secure-s"}, {"cookie_samesite": "None"}],
)
def test_cookies_browsers_drop_without_secure_are_always_secure(asgi, store, options) -> None:
    client = Client(asgi, store, **options)
    name = options.get("cookie_name", "session")
    pair = client.get("/count").session_pair(name)  # plain HTTP
    assert "secure" in client.get("/count").cookie(name).attrs
    assert "secure" in client.get("/logout", cookie=pair).cookie(name).attrs


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
def test_unusable_cookie_options_fail_when_the_middleware_is_built(store, options) -> None:
    with pytest.raises(ConfigurationError):
        StoredSessionMiddleware(store, **options)


# -- a failing database -----------------------------------------------------------------


def test_a_missing_table_answers_503_without_a_cookie(client, store) -> None:
    pair = client.get("/count").session_pair()
    store.drop_table()
    for reply in (client.get("/read", cookie=pair), client.get("/count")):
        assert reply.status == 503 and reply.set_cookies == []
    # A request that never uses its session does not fail (under ASGI its preload did).
    assert client.get("/untouched", cookie=pair).status == 200


def test_an_unreachable_database_answers_503(asgi, backend, keys) -> None:
    url = {
        "sqlite": "sqlite:////nonexistent-dir/sessions.db",
        "postgres": "postgresql://postgres@127.0.0.1:9/test",
        "pgbouncer": "postgresql://postgres@127.0.0.1:9/test",
        "mysql": "mysql://root@127.0.0.1:9/test",
    }[backend]
    client = Client(asgi, SessionStore(url, keys=keys))
    assert client.get("/read", cookie="session=" + "A" * 43).status == 503
    reply = client.get("/count")
    assert reply.status == 503 and reply.set_cookies == []


def test_a_responder_that_swallows_the_failure_still_gets_503(client, store) -> None:
    def swallow(req: falcon.Request, resp: falcon.Response) -> None:
        try:
            req.context.session.get("n")
        except StoreUnavailable:
            resp.text = "pretending all is well"

    client.route("/swallow", swallow)
    pair = client.get("/count").session_pair()
    store.drop_table()
    reply = client.get("/swallow", cookie=pair)
    assert reply.status == 503 and reply.set_cookies == []
