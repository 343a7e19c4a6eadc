"""The framework-neutral pieces of the request lifecycle (storedsession.web)."""

from __future__ import annotations

import pytest

from storedsession import ConfigurationError, SessionStore
from storedsession.web import (
    CookieOptions,
    SessionMiddlewareCore,
    add_vary,
    pick_cookie,
    private_cache_control,
    scope_cookie_header,
)

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
        (f"xsession={GOOD}; session_x={OTHER}", None),
        (f" session = {GOOD} ", GOOD),
        (f"\tsession\t=\t{GOOD}\t", GOOD),
        (f"theme=dark;session={GOOD}", GOOD),
    ],
)
def test_pick_cookie(header, expected) -> None:
    assert pick_cookie(header, "session") == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        # A comma belongs to the value before it: a sibling subdomain's ordinary cookie
        # cannot smuggle in a pair of another name (RFC 6265 §4.2.1 splits on ";").
        (f"pref=x,session={GOOD}", None),
        (f"pref=x, session={GOOD}", None),
        (f"pref=x,session={GOOD}; session={OTHER}", OTHER),
        (f"theme=dark, session={GOOD}", None),  # two fields joined with ", " by a server
        (f"session={GOOD},theme=dark", f"{GOOD},theme=dark"),
    ],
    ids=["comma", "comma-space", "comma-then-real", "server-joined", "comma-after"],
)
def test_a_comma_never_starts_a_pair(header, expected) -> None:
    assert pick_cookie(header, "session") == expected


@pytest.mark.parametrize(
    "char", ["\xa0", "\x85", "\x1c", "\x1d", "\x1e", "\x1f", "\x0b", "\x0c", "\u3000", "\u2028"]
)
def test_only_space_and_tab_are_trimmed(char) -> None:
    assert pick_cookie(f"{char}session={GOOD}", "session") is None
    assert pick_cookie(f"session{char}={GOOD}", "session") is None
    assert pick_cookie(f"session={char}{GOOD}", "session") == f"{char}{GOOD}"
    assert pick_cookie(f"session={GOOD}{char}", "session") == f"{GOOD}{char}"
    assert pick_cookie(f"theme=dark;{char}session={GOOD}", "session") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f'"{GOOD}"', GOOD),  # as webtest's set_cookie and http.cookiejar send it
        (f' "{GOOD}" ', GOOD),
        (f'"{GOOD}', f'"{GOOD}'),
        (f'{GOOD}"', f'{GOOD}"'),
        (f'""{GOOD}""', f'"{GOOD}"'),  # one pair of quotes only
        (f'" {GOOD}"', f" {GOOD}"),  # nothing is trimmed inside the quotes
        (f'"{GOOD}\t"', f"{GOOD}\t"),
        ('"', '"'),
        ('""', ""),
    ],
)
def test_a_quoted_value_is_read_without_its_quotes(value, expected) -> None:
    assert pick_cookie(f"session={value}", "session") == expected


def test_a_quoted_garbage_value_does_not_hide_a_later_good_one() -> None:
    assert pick_cookie(f'session="garbage"; session="{GOOD}"', "session") == GOOD


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"host", b"example.com")], None),
        ([(b"cookie", b"session=" + GOOD.encode())], f"session={GOOD}"),
        (
            [(b"cookie", b"session=" + GOOD.encode()), (b"host", b"x"), (b"cookie", b"a=b")],
            f"session={GOOD}; a=b",
        ),
        (((b"cookie", b"a=1"), (b"cookie", b"b=2")), "a=1; b=2"),  # a tuple, too
        ([[b"cookie", b"a=1"], [b"cookie", "é".encode("latin-1")]], "a=1; é"),
    ],
)
def test_scope_cookie_header_joins_every_cookie_field(headers, expected) -> None:
    def fallback(name: str) -> str | None:
        raise AssertionError("a list or tuple is read, not the framework's header")

    assert scope_cookie_header(headers, fallback) == expected


def test_scope_cookie_header_leaves_an_iterator_alone() -> None:
    headers = iter([(b"cookie", b"a=1")])
    assert scope_cookie_header(headers, {"Cookie": "from-framework"}.get) == "from-framework"
    assert next(headers) == (b"cookie", b"a=1")  # not consumed
    assert scope_cookie_header(None, {}.get) is None


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


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        (None, "private"),
        ("", "private"),
        ("public", "private"),
        ("public, max-age=60", "private, max-age=60"),
        ("max-age=60, s-maxage=600, public", "private, max-age=60"),
        ("Public, S-MaxAge=600, Max-Age=60", "private, Max-Age=60"),
        ("max-age=60", "private, max-age=60"),
        ("no-cache", "private, no-cache"),
        ("no-store", "no-store"),
        ("no-store, max-age=0", "no-store, max-age=0"),
        ("private", "private"),
        ("private, max-age=60", "private, max-age=60"),
        ("PRIVATE, max-age=60", "PRIVATE, max-age=60"),
        ("public, private", "private"),  # public goes even beside private
        ("no-store, public, s-maxage=5", "no-store"),
        # A qualified private lets a shared cache store the rest of the response.
        ('private="Set-Cookie", max-age=60', "private, max-age=60"),
        ('no-cache="Set-Cookie, X-Id", public', 'private, no-cache="Set-Cookie, X-Id"'),
        ("public,,max-age=60 ,", "private, max-age=60"),
    ],
)
def test_private_cache_control(existing, expected) -> None:
    assert private_cache_control(existing) == expected


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
        {"name": "a\x00b"},
        {"name": "a\x7fb"},
        {"name": "sessión"},
        {"samesite": "sometimes"},
        {"samesite": "None", "secure": False},
        {"samesite": "none", "secure": False},
        {"name": "__Host-s", "domain": "example.com"},
        {"name": "__Host-s", "path": "/app"},
        {"name": "__Host-s", "secure": False},
        {"name": "__host-s", "domain": "example.com"},
        {"name": "__HOST-s", "path": "/app"},
        {"name": "__hOsT-s", "secure": False},
        {"name": "__Secure-s", "secure": False},
        {"name": "__secure-s", "secure": False},
        {"name": "__SECURE-s", "secure": False},
        {"path": "/; Domain=evil.example"},
        {"path": "/a,b"},
        {"path": "/\r\nSet-Cookie: x=y"},
        {"path": "/\n"},
        {"path": "/\x00"},
        {"path": "/\x7f"},
        {"path": "/\t"},
        {"path": "/café"},
        {"path": ""},
        {"path": "app"},
        {"domain": "example.com; Secure"},
        {"domain": "example.com, evil.example"},
        {"domain": "example.com\r\nX-Evil: 1"},
        {"domain": "example.com\x00"},
        {"domain": "exämple.com"},
    ],
)
def test_unusable_cookie_options_fail_at_construction(options) -> None:
    with pytest.raises(ConfigurationError):
        CookieOptions(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"name": "__Host-session"},
        {"name": "__host-session"},
        {"name": "__Secure-session"},
        {"name": "__SECURE-session", "path": "/app", "domain": "example.com"},
        {"samesite": "None"},
        {"samesite": "none"},
    ],
)
def test_prefixes_and_samesite_none_make_the_cookie_secure_even_over_http(options) -> None:
    cookie = CookieOptions(**options)
    assert cookie.secure is True
    assert "; Secure" in cookie.header("abc", 60, https=False)
    assert "; Secure" in cookie.deletion(https=False)
    assert CookieOptions(**options, secure=True).secure is True


@pytest.mark.parametrize(
    "options",
    [
        {"name": "session"},
        {"name": "x__Host-session"},
        {"name": "__Hostess"},
        {"samesite": "Lax"},
        {"samesite": None},
        {"path": "/app/with space", "domain": "sub.example.com"},
    ],
)
def test_other_cookies_stay_secure_only_over_https(options) -> None:
    cookie = CookieOptions(**options)
    assert cookie.secure is None
    assert "; Secure" not in cookie.header("abc", 60, https=False)
    assert "; Secure" in cookie.header("abc", 60, https=True)


def test_a_store_given_to_an_adapter_takes_no_store_options(store: SessionStore) -> None:
    with pytest.raises(ConfigurationError, match="not to the adapter"):
        SessionMiddlewareCore(store, idle_timeout=5)
    assert SessionMiddlewareCore(store).store is store
