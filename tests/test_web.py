"""The framework-neutral pieces of the request lifecycle (storedsession.web)."""

from __future__ import annotations

import pytest

from storedsession import ConfigurationError, SessionStore
from storedsession.web import CookieOptions, SessionMiddlewareCore, add_vary, pick_cookie

GOOD = "A" * 43
OTHER = "B" * 42 + "A"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("theme=dark", None),
        (f"session={GOOD}", GOOD),
        (f"theme=dark; session={GOOD}", GOOD),
        (f"session=garbage; session={GOOD}", GOOD),  # the first well-formed value
        (f"session={GOOD}; session={OTHER}", GOOD),
        ("session=garbage; session=junk", "garbage"),  # none well formed: the first, to log
        (f"theme=dark, session={GOOD}", GOOD),  # repeated Cookie fields joined by the server
        (f"xsession={GOOD}; session_x={OTHER}", None),
        (f" session = {GOOD} ", GOOD),
    ],
)
def test_pick_cookie(header, expected) -> None:
    assert pick_cookie(header, "session") == expected


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, "Cookie"),
        ("", "Cookie"),
        ("Accept", "Accept, Cookie"),
        ("accept, cookie", "accept, cookie"),
        ("*", "*"),
    ],
)
def test_add_vary(existing, expected) -> None:
    assert add_vary(existing) == expected


def test_cookie_header_and_deletion() -> None:
    options = CookieOptions(domain="example.com", samesite="strict")
    header = options.header("abc", 60, https=True)
    assert header.startswith("session=abc; Path=/; Domain=example.com; Max-Age=60; Expires=")
    assert header.endswith("; Secure; HttpOnly; SameSite=Strict")
    assert options.header("abc", None, https=False) == (
        "session=abc; Path=/; Domain=example.com; HttpOnly; SameSite=Strict"
    )
    assert options.deletion(https=True) == (
        "session=; Path=/; Domain=example.com; Max-Age=0; "
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; SameSite=Strict"
    )


@pytest.mark.parametrize(
    "options",
    [
        {"name": ""},
        {"name": "a;b"},
        {"samesite": "sometimes"},
        {"samesite": "None", "secure": False},
        {"name": "__Host-s", "domain": "example.com"},
        {"name": "__Host-s", "path": "/app"},
        {"name": "__Host-s", "secure": False},
    ],
)
def test_unusable_cookie_options_fail_at_construction(options) -> None:
    with pytest.raises(ConfigurationError):
        CookieOptions(**options)


def test_a_store_given_to_an_adapter_takes_no_store_options(store: SessionStore) -> None:
    with pytest.raises(ConfigurationError, match="not to the adapter"):
        SessionMiddlewareCore(store, idle_timeout=5)
    assert SessionMiddlewareCore(store).store is store
