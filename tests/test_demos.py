"""Both demo apps in process, on every backend: looking stores nothing, forms are guarded.

Bottle is called as a WSGI app (tests/wire.py), Falcon's ASGI app through
``falcon.testing``; each client keeps its session cookie and sends the headers a
browser sends, so that the store's table can be counted after every step.
(tests/test_browser.py runs the same demos in a real browser.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import falcon.testing
import pytest

from examples import bottle_demo, common, falcon_demo
from storedsession import SessionStore

from .support import fetch_rows
from .wire import wsgi_call

HOST = "example.com"
SAME_ORIGIN = {"Sec-Fetch-Site": "same-origin", "Origin": f"http://{HOST}"}
TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Page:
    status: int
    location: str | None
    text: str

    @property
    def token(self) -> str | None:
        found = TOKEN.search(self.text)
        return found.group(1) if found else None


class Browser:
    """One visitor of one demo app: keeps the session cookie as a browser would."""

    def __init__(self, app_name: str, store: SessionStore) -> None:
        self.app_name = app_name
        self.app: Any = (bottle_demo if app_name == "bottle" else falcon_demo).make_app(store)
        self.cookie: str | None = None
        self.set_cookie_lines = 0

    def get(self, path: str) -> Page:
        return self._send("GET", path, {}, b"")

    def post(self, path: str, form: dict[str, str], headers: dict[str, str] | None) -> Page:
        sent = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
        return self._send("POST", path, sent, urlencode(form).encode())

    def _send(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Page:
        if self.cookie is not None:
            headers = {**headers, "Cookie": f"session={self.cookie}"}
        cookies: list[tuple[str, str, int | None]] = []  # name, value, Max-Age
        if self.app_name == "bottle":
            reply = wsgi_call(self.app, path, method=method, headers=headers, body=body)
            status, text, location = reply.status, reply.body.decode(), reply.header("Location")
            cookies = [(c.name, c.value, c.max_age) for c in reply.set_cookies]
        else:
            path, _, query = path.partition("?")
            result = falcon.testing.simulate_request(
                self.app, method, path, query_string=query or None, headers=headers,
                body=body or None, host=HOST,
            )  # fmt: skip
            status, text, location = result.status_code, result.text, result.headers.get("location")
            # falcon.testing folds repeated Set-Cookie headers; its cookies keep them all.
            cookies = [(n, c.value, c.max_age) for n, c in result.cookies.items()]
        for name, value, max_age in cookies:
            self.set_cookie_lines += 1
            if name == "session":
                self.cookie = None if max_age == 0 else value
        return Page(status, location, text)


@pytest.fixture(params=["bottle", "falcon"])
def browser(request: pytest.FixtureRequest, store: SessionStore) -> Browser:
    return Browser(request.param, store)


def test_looking_around_anonymously_stores_nothing(browser: Browser, store) -> None:
    for _ in range(5):
        for path in ("/", "/?notice=signed-out", "/sessions", "/nowhere"):
            browser.get(path)
    home = browser.get("/")
    assert home.status == 200 and 'id="no-session"' in home.text
    assert home.token is None  # no session, so no token to hand out
    assert browser.get("/sessions").location == "/?notice=sign-in-first"
    assert common.SIGN_IN_FIRST in browser.get("/?notice=sign-in-first").text
    assert "<script>" not in browser.get("/?notice=<script>").text  # only known notices
    assert browser.set_cookie_lines == 0
    assert fetch_rows(store) == []


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
        {"Sec-Fetch-Site": "same-site", "Origin": f"http://{HOST}:8081"},  # another port
        {"Origin": "http://evil.example"},  # a browser without Sec-Fetch-Site
        {"Origin": "null"},
        {"Origin": f"https://{HOST}"},  # another scheme is another origin
        {},  # says nothing of where it came from
    ],
    ids=["cross-site", "same-site", "foreign-origin", "null-origin", "other-scheme", "none"],
)
def test_a_form_from_elsewhere_is_refused_and_stores_nothing(browser, store, headers) -> None:
    for path, form in (("/signin", {"username": "mallory"}), ("/cart/add", {"item": "x"})):
        page = browser.post(path, form, headers)
        assert page.status == 403 and "nothing was done" in page.text
    assert browser.cookie is None
    assert fetch_rows(store) == []


def test_a_session_comes_with_the_first_form_and_goes_with_sign_out(browser, store) -> None:
    browser.get("/")
    # Signing in is the first thing stored; a browser with no Sec-Fetch-Site sends Origin.
    page = browser.post("/signin", {"username": "alice"}, {"Origin": f"http://{HOST}"})
    assert page.status == 303 and page.location == "/"
    assert [row[2] for row in fetch_rows(store)] == ["alice"]
    home = browser.get("/")
    assert "Signed in as alice." in home.text and '<strong id="visits">1<' in home.text
    token = home.token
    assert token is not None
    assert '<strong id="visits">2<' in browser.get("/").text

    # With a session, its token is needed as well as the origin.
    for sent in ({}, {"csrf": "guessed"}):
        assert browser.post("/signout", sent, SAME_ORIGIN).status == 403
    elsewhere = {"Origin": "http://evil.example"}
    assert browser.post("/signout", {"csrf": token}, elsewhere).status == 403
    assert len(fetch_rows(store)) == 1

    page = browser.post("/signout", {"csrf": token}, SAME_ORIGIN)
    assert page.status == 303 and page.location == "/?notice=signed-out"
    assert browser.cookie is None  # the deletion cookie; no new session to carry the message
    assert common.SIGNED_OUT in browser.get(page.location).text
    assert fetch_rows(store) == []


def test_a_cart_is_a_session_the_visitor_asked_for(browser, store) -> None:
    page = browser.post("/cart/add", {"item": ""}, SAME_ORIGIN)  # refused item: nothing to keep
    assert page.location == "/?notice=bad-item" and fetch_rows(store) == []
    page = browser.post("/cart/add", {"item": "apple"}, SAME_ORIGIN)
    assert page.status == 303 and page.location == "/"
    assert len(fetch_rows(store)) == 1
    home = browser.get("/")
    assert "Added apple to the cart." in home.text and home.token is not None
    assert browser.post("/cart/add", {"item": "pear"}, SAME_ORIGIN).status == 403  # no token
    page = browser.post("/cart/add", {"item": "pear", "csrf": home.token}, SAME_ORIGIN)
    assert page.status == 303
    assert "pear" in browser.get("/").text
    assert len(fetch_rows(store)) == 1
