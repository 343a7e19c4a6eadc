"""The adapter contract, written once: every front (Bottle, Falcon WSGI, Falcon ASGI) on
every backend, cookies read on the wire. What only one framework has is tested in
test_bottle.py and test_falcon.py.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from storedsession import ConfigurationError, SessionStore, StoreUnavailable, serialization

from .fronts import Web, count, read, untouched
from .support import calls_of, connection_given_back, fetch_rows
from .wire import CACHE_CONTROL, HOSTILE, SlowRequest

# -- the scenarios ----------------------------------------------------------------------


def test_counter_across_requests(front, store) -> None:
    first = front.get("/count")
    assert first.json == {"n": 1}
    pair = first.session_pair()
    assert front.get("/count", cookie=pair).json == {"n": 2}
    third = front.get("/count", cookie=pair)
    assert third.json == {"n": 3}
    assert third.session_pair() == pair  # same id: a write does not rotate it
    assert len(fetch_rows(store)) == 1


def test_untouched_or_missing_key_sets_no_cookie_and_no_row(front, store, count_queries) -> None:
    with count_queries(store) as q:
        untouched = front.get("/untouched")
        read = front.get("/read")
    assert q.count == 0
    assert untouched.set_cookies == [] and untouched.header("Vary") is None
    assert read.json == {"n": None, "new": True}
    assert read.set_cookies == [] and read.header("Vary") == "Cookie"
    assert fetch_rows(store) == []


def test_read_only_request_resends_no_cookie_until_touch_interval(
    front, store, clock, count_queries
) -> None:
    pair = front.get("/count").session_pair()
    clock.advance(30)
    with count_queries(store) as q:
        reply = front.get("/read", cookie=pair)
    assert reply.json["n"] == 1
    assert reply.set_cookies == [] and q.count == 1
    clock.advance(31)  # past the 60 s touch interval since the write
    with count_queries(store) as q:
        refreshed = front.get("/read", cookie=pair)
    assert q.count == 2  # read, then the "last seen" update
    assert refreshed.session_pair() == pair
    assert refreshed.cookie().max_age == 14 * 86400


@pytest.mark.parametrize("with_cookie", [True, False], ids=["stored", "new"])
def test_a_write_request_serializes_the_session_once(front, with_cookie) -> None:
    pair = front.get("/count").session_pair() if with_cookie else None
    # Under ASGI the plan is made on the event loop and the write runs in a worker
    # thread: both count (calls_of sees the threads the request starts).
    with calls_of(serialization.dumps) as dumps:
        reply = front.get_in_own_loop("/count", cookie=pair)
    assert reply.json == {"n": 2 if with_cookie else 1}
    assert len(dumps) == 1
    assert reply.cookie() is not None and (pair is None or reply.session_pair() == pair)


@pytest.mark.parametrize(
    ("path", "with_cookie", "queries", "preloaded_queries"),
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
    front, store, count_queries, path, with_cookie, queries, preloaded_queries
) -> None:
    pair = front.get("/count").session_pair() if with_cookie else None
    with count_queries(store) as q:
        assert front.get(path, cookie=pair).status == 200
    assert q.count == (preloaded_queries if front.preloads else queries), q.statements


def test_login_regenerates_then_redirects(front, store) -> None:
    def login(web: Web) -> Any:
        web.session.regenerate()
        web.session.user_id = 7
        web.session["user"] = "ada"
        web.redirect("/home")

    front.route("/login", login)
    old = front.get("/count").session_pair()
    reply = front.get("/login", cookie=old)
    assert reply.status == front.redirect_status
    assert reply.header("Location") == front.redirect_base + "/home"
    new = reply.session_pair()
    assert new != old
    assert front.get("/read", cookie=new).json == {"n": 1, "new": False}
    assert front.get("/read", cookie=old).json == {"n": None, "new": True}
    assert [row[2] for row in fetch_rows(store)] == ["7"]


def test_an_error_below_500_saves(front) -> None:
    def forbidden(web: Web) -> Any:
        web.session["attempts"] = 1
        web.abort(403)

    front.route("/forbidden", forbidden)
    reply = front.get("/forbidden")
    assert reply.status == 403
    # Falcon's error serializer adds "Vary: Accept" of its own.
    assert reply.header("Vary") == ("Cookie" if front.kind == "bottle" else "Accept, Cookie")
    assert front.get("/read", cookie=reply.session_pair()).json["new"] is False


@pytest.mark.parametrize(
    ("options", "domain"),
    [
        ({"cookie_domain": "example.com", "cookie_path": "/", "cookie_samesite": "Strict"}, True),
        ({"cookie_name": "__Host-session", "cookie_samesite": "Strict"}, False),
    ],
    ids=["domain", "host-prefix"],
)
def test_logout_sends_a_deletion_cookie_and_removes_the_row(front, store, options, domain) -> None:
    front = front.new(store, **options)
    name = options.get("cookie_name", "session")
    pair = front.get("/count", https=True).session_pair(name)
    reply = front.get("/logout", cookie=pair, https=True)
    deletion = reply.cookie(name)
    assert deletion is not None and deletion.value == ""
    assert deletion.attrs["max-age"] == "0"
    assert deletion.attrs["expires"] == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert deletion.attrs["path"] == "/"
    if domain:
        assert deletion.attrs["domain"] == "example.com"
    else:
        assert "domain" not in deletion.attrs
    assert "secure" in deletion.attrs and "httponly" in deletion.attrs
    assert deletion.attrs["samesite"] == "Strict"
    assert fetch_rows(store) == []
    assert front.get("/read", cookie=pair, https=True).json == {"n": None, "new": True}


def test_deletion_cookie_keeps_the_domain(front, store) -> None:
    front = front.new(store, cookie_domain="example.com")
    pair = front.get("/count").session_pair()
    deletion = front.get("/logout", cookie=pair).cookie()
    assert deletion.attrs["domain"] == "example.com" and "secure" not in deletion.attrs


def test_exception_saves_nothing_and_returns_the_connection(front, store) -> None:
    def boom(web: Web) -> Any:
        web.session["n"] = 99
        raise RuntimeError("boom")

    front.answer_crashes_with_500()
    front.route("/boom", boom)
    pair = front.get("/count").session_pair()
    reply = front.get("/boom", cookie=pair)
    assert reply.status == 500 and reply.set_cookies == []
    assert connection_given_back(store)
    assert front.get("/read", cookie=pair).json["n"] == 1
    assert len(fetch_rows(store)) == 1


@pytest.mark.parametrize("how", ["raised", "set"])
@pytest.mark.parametrize("status", [500, 503])
def test_responses_at_or_above_500_save_nothing(front, store, how, status) -> None:
    def fail(web: Web) -> Any:
        web.session["n"] = 1
        if how == "raised":
            web.abort(status)
        web.set_status(status)
        return "down"

    front.route("/fail", fail)
    reply = front.get("/fail")
    assert reply.status == status and reply.set_cookies == []
    assert fetch_rows(store) == []


@pytest.mark.parametrize("kind", ["garbage", "10kb", "non-ascii", "quotes", "handle"])
def test_hostile_cookies_never_cause_a_500(front, store, kind) -> None:
    stored = store.load(None)
    stored["owner"] = "someone else"
    store.save(stored)
    value = stored.handle if kind == "handle" else HOSTILE[kind]
    assert value is not None
    reply = front.get("/count", cookie=f"session={value}")
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
def test_cookie_attributes(front, store, https, secure_option, secure) -> None:
    front = front.new(
        store,
        cookie_name="sid",
        cookie_path="/app",
        cookie_domain="example.com",
        cookie_secure=secure_option,
        cookie_samesite="strict",
    )
    reply = front.get("/count", https=https)
    cookie = reply.cookie("sid")
    assert cookie is not None and reply.cookie("session") is None
    assert cookie.attrs["path"] == "/app" and cookie.attrs["domain"] == "example.com"
    assert cookie.attrs["samesite"] == "Strict" and "httponly" in cookie.attrs
    assert ("secure" in cookie.attrs) is secure
    assert cookie.max_age == 14 * 86400 and "expires" in cookie.attrs  # the default life


def test_forwarded_headers_never_make_the_cookie_secure(front) -> None:
    reply = front.get("/count", headers={"X-Forwarded-Proto": "https", "Forwarded": "proto=https"})
    assert "secure" not in reply.cookie().attrs


def test_httponly_and_samesite_can_be_turned_off(front, store) -> None:
    front = front.new(store, cookie_httponly=False, cookie_samesite=None)
    attrs = front.get("/count").cookie().attrs
    assert "httponly" not in attrs and "samesite" not in attrs


def test_max_age_follows_the_remaining_lifetime(front, make_store, clock) -> None:
    front = front.new(make_store(idle_timeout=3600, absolute_timeout=5400))
    front.route("/browser", lambda web: web.session.set_expiry(0))
    first = front.get("/count")
    assert first.cookie().max_age == 3600
    clock.advance(2000)
    # the idle limit would allow 3600 s more; the absolute limit leaves 3400
    assert front.get("/read", cookie=first.session_pair()).cookie().max_age == 3400
    browser = front.get("/browser", cookie=first.session_pair()).cookie()
    assert "max-age" not in browser.attrs and "expires" not in browser.attrs


def test_vary_is_merged_into_the_existing_header(front) -> None:
    def vary(web: Web) -> Any:
        web.set_header("Vary", "Accept-Encoding")
        return read(web)

    front.route("/vary", vary)
    assert front.get("/vary").header_values("Vary") == ["Accept-Encoding, Cookie"]


def test_the_apps_own_cookies_are_kept(front) -> None:
    def both(web: Web) -> Any:
        web.set_cookie("theme", "dark")
        web.add_header("Set-Cookie", "lang=en; Path=/")
        return count(web)

    front.route("/both", both)
    names = sorted(cookie.name for cookie in front.get("/both").set_cookies)
    assert names == ["lang", "session", "theme"]


def test_concurrent_logout_is_not_undone_by_a_slow_request(front, store, caplog) -> None:
    slow = SlowRequest(lambda: front.get_in_own_loop("/slow", cookie=pair))

    def handler(web: Web) -> Any:
        web.session.get("n")
        slow.loaded.set()
        # Under ASGI this blocks the slow request's own loop only (get_in_own_loop).
        assert slow.release.wait(10)
        web.session["cart"] = ["book"]
        return "done"

    front.route("/slow", handler)
    pair = front.get("/count").session_pair()
    with caplog.at_level(logging.WARNING, logger="storedsession.security"):
        slow.start()
        logout = front.get("/logout", cookie=pair)
        assert logout.cookie().attrs["max-age"] == "0"
        reply = slow.finish()
    assert reply.status == 200 and reply.set_cookies == []
    assert fetch_rows(store) == []
    assert "deleted while a request used it" in caplog.text


@pytest.mark.parametrize("order", ["garbage-first", "two-valid"])
def test_a_cookie_sent_twice_uses_the_first_well_formed_value(
    front, store, order, count_queries
) -> None:
    first = front.get("/count").session_pair()
    other = front.get("/count").session_pair()
    front.get("/count", cookie=other)  # the other session holds n == 2
    header = {
        "garbage-first": f"session=garbage; theme=dark; {first}",
        "two-valid": f"{first}; theme=dark; {other}",
    }[order]
    with count_queries(store) as q:
        assert front.get("/read", cookie=header).json["n"] == 1
    assert q.count == 1


# -- caching -------------------------------------------------------------------------


@pytest.mark.parametrize(("app_value", "expected"), CACHE_CONTROL)
def test_a_response_that_sets_the_session_cookie_is_private(
    front, store, clock, app_value, expected
) -> None:
    def cached(handler: Any) -> Any:
        def run(web: Web) -> Any:
            if app_value is not None:
                web.set_header("Cache-Control", app_value)
            return handler(web)

        return run

    for path, handler in [("/c/write", count), ("/c/read", read), ("/c/plain", untouched)]:
        front.route(path, cached(handler))

    def logout(web: Web) -> Any:
        web.session.invalidate()
        return "bye"

    front.route("/c/logout", cached(logout))
    written = front.get("/c/write")
    assert written.cookie() is not None
    assert written.header_values("Cache-Control") == [expected]
    pair = written.session_pair()
    # No session cookie on the response: the application's header is left alone.
    for path in ("/c/read", "/c/plain", "/untouched"):
        reply = front.get(path, cookie=pair)
        assert reply.cookie() is None
        assert reply.header("Cache-Control") == (None if path == "/untouched" else app_value)
    clock.advance(61)  # past the touch interval: the read re-sends the cookie
    touched = front.get("/c/read", cookie=pair)
    assert touched.cookie() is not None and touched.header_values("Cache-Control") == [expected]
    deleted = front.get("/c/logout", cookie=pair)
    assert deleted.cookie().value == "" and deleted.header_values("Cache-Control") == [expected]


def test_cache_control_of_a_raised_redirect(front) -> None:
    def redirect(web: Web) -> Any:
        web.session["n"] = 1
        web.redirect("/home", headers={"Cache-Control": "public, max-age=60"})

    front.route("/redirect", redirect)
    reply = front.get("/redirect")
    assert reply.status == front.redirect_status
    assert reply.header_values("Cache-Control") == ["private, max-age=60"]


@pytest.mark.parametrize(
    "lines",
    [["no-store", "public"], ["public, s-maxage=600", "no-store"]],
    ids=["no-store-first", "no-store-last"],
)
def test_repeated_cache_control_headers_become_one(front, lines) -> None:
    def repeated(web: Web) -> Any:
        for line in lines:
            web.add_header("Cache-Control", line)
        return count(web)

    front.route("/repeated", repeated)
    assert front.get("/repeated").header_values("Cache-Control") == ["no-store"]


@pytest.mark.parametrize(
    "options",
    [{"cookie_name": "__Host-session"}, {"cookie_name": "__secure-s"}, {"cookie_samesite": "None"}],
)
def test_cookies_browsers_drop_without_secure_are_always_secure(front, store, options) -> None:
    front = front.new(store, **options)
    name = options.get("cookie_name", "session")
    pair = front.get("/count").session_pair(name)  # plain HTTP
    assert "secure" in front.get("/count").cookie(name).attrs
    assert "secure" in front.get("/logout", cookie=pair).cookie(name).attrs


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
def test_unusable_cookie_options_fail_when_the_adapter_is_built(front, store, options) -> None:
    with pytest.raises(ConfigurationError):
        front.new(store, **options)


# -- a failing database -----------------------------------------------------------------


def test_a_missing_table_answers_503_without_a_cookie(front, store) -> None:
    pair = front.get("/count").session_pair()
    store.drop_table()
    for reply in (front.get("/read", cookie=pair), front.get("/count")):
        assert reply.status == 503 and reply.set_cookies == []
    # A request that never uses its session does not fail (lazy: no query; under ASGI
    # the preload failed, and the responder never asked for the session).
    assert front.get("/untouched", cookie=pair).status == 200


def test_an_unreachable_database_answers_503(front, backend, keys) -> None:
    url = {
        "sqlite": "sqlite:////nonexistent-dir/sessions.db",
        "postgres": "postgresql://postgres@127.0.0.1:9/test",
        "pgbouncer": "postgresql://postgres@127.0.0.1:9/test",
        "mysql": "mysql://root@127.0.0.1:9/test",
    }[backend]
    front = front.new(SessionStore(url, keys=keys))
    assert front.get("/read", cookie="session=" + "A" * 43).status == 503
    reply = front.get("/count")
    assert reply.status == 503 and reply.set_cookies == []


def test_a_handler_that_swallows_the_failure_still_gets_503(front, store) -> None:
    def swallow(web: Web) -> Any:
        try:
            web.session.get("n")
        except StoreUnavailable:
            return "pretending all is well"
        return "loaded"

    front.route("/swallow", swallow)
    pair = front.get("/count").session_pair()
    store.drop_table()
    reply = front.get("/swallow", cookie=pair)
    assert reply.status == 503 and reply.set_cookies == []
