"""'Your sessions' that people recognise: the device and address recorded at sign-in.

The labels and the normalising (no database); the store's rules on every backend; and the
three fronts (Bottle, Falcon WSGI, Falcon ASGI) on every backend, read off real requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import bottle
import falcon
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples import common
from storedsession import ConfigurationError, SessionInfo, SessionStore, devices, ids, signals
from storedsession.plugins.bottle import StoredSessionPlugin
from storedsession.plugins.falcon import StoredSessionMiddleware

from .fronts import FRONTS, Front, Web, build
from .support import fetch_rows
from .wire import Reply

FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)
COMMON = {
    FIREFOX_LINUX: "Firefox on Linux",
    CHROME_WINDOWS: "Chrome on Windows",
    CHROME_WINDOWS + " Edg/126.0.0.0": "Edge on Windows",
    CHROME_WINDOWS + " OPR/111.0.0.0": "Opera on Windows",
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.5 Safari/605.1.15"
    ): "Safari on macOS",
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
    ): "Safari on iOS",
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Mobile Safari/537.36"
    ): "Chrome on Android",
    "Mozilla/5.0 (Android 14; Mobile; rv:128.0) Gecko/128.0 Firefox/128.0": "Firefox on Android",
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 14.5; rv:127.0) Gecko/20100101 Firefox/127.0"
    ): "Firefox on macOS",
}
HOSTILE_AGENTS = {
    "huge": "Mozilla/5.0 (X11; Linux x86_64) " + "A" * 20_000,
    "control": "Mozilla/5.0 (X11; Linux x86_64)\x01\x7f\x1b[31m Firefox/1\x00",
    "markup": '<script>alert("ua")</script><img src=x onerror=alert(1)>',
    "quotes": "\"'><b>Firefox/1</b>&amp;",
}


@pytest.fixture(params=["parser", "built-in"])
def labels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Labels made by the ``devices`` extra's parser, or by the built-in table without it."""
    if request.param == "parser":
        pytest.importorskip("ua_parser")  # the test extra installs it (via all)
    else:
        monkeypatch.setattr(devices, "_parser", False)  # as if the extra were missing
    devices._label.cache_clear()
    yield request.param
    devices._label.cache_clear()


# -- trimming, normalising, labelling (no database) ----------------------------------------
def test_a_user_agent_is_kept_as_given_up_to_512_characters() -> None:
    assert devices.user_agent("x" * 10_000) == "x" * 512
    assert devices.user_agent(HOSTILE_AGENTS["control"]) == HOSTILE_AGENTS["control"]
    assert devices.user_agent(" a ") == " a "
    for nothing in (None, "", b"Firefox", 42):
        assert devices.user_agent(nothing) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("192.0.2.1", "192.0.2.1"),
        ("::ffff:192.0.2.1", "192.0.2.1"),  # IPv4-mapped, as a dual-stack socket says it
        ("::FFFF:C000:0201", "192.0.2.1"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("fe80::1%<script>", "fe80::1"),
        (" 192.0.2.1\t", "192.0.2.1"),
        ("::1", "::1"),
        ("", None),
        ("unknown", None),
        ("192.0.2.1:8080", None),
        ("198.51.100.1, 203.0.113.7", None),
        ("01.2.3.4", None),
        ("<script>", None),
        ("1" * 1000, None),
        (None, None),
        (3221225985, None),
        (b"192.0.2.1", None),
    ],
)
def test_addresses_are_normalised_and_junk_is_none(raw: object, expected: str | None) -> None:
    assert devices.ip_address(raw) == expected


@pytest.mark.parametrize(("agent", "expected"), sorted(COMMON.items()))
def test_common_browsers_get_the_same_label_with_and_without_the_extra(
    labels: str, agent: str, expected: str
) -> None:
    assert devices.label(agent) == expected


def test_labels_for_the_rest(labels: str) -> None:
    assert devices.label(None) is None  # the only None: no user agent recorded
    assert devices.label("curl/8.5.0") == "curl"
    assert devices.label("") == "Unknown browser"
    assert devices.label("Mozilla/5.0 (compatible)") == "Unknown browser"
    assert (
        devices.label("Mozilla/5.0 (X11; Linux x86_64) Frobnicator") == "Unknown browser on Linux"
    )
    for agent in HOSTILE_AGENTS.values():
        shown = devices.label(devices.user_agent(agent))
        assert shown and shown.isprintable() and "<" not in shown and len(shown) <= 90


@pytest.mark.slow
@settings(max_examples=60, deadline=None)
@given(st.text(max_size=devices.MAX_USER_AGENT))
def test_any_user_agent_gets_a_short_printable_label(agent: str) -> None:
    try:
        for parser in (None, False):  # the extra's parser, then the built-in table
            devices._parser = parser
            devices._label.cache_clear()
            shown = devices.label(agent)
            assert shown is not None and shown.isprintable() and 0 < len(shown) <= 90
    finally:
        devices._parser = None
        devices._label.cache_clear()


def test_hostile_user_agents_are_labelled_quickly(labels: str) -> None:
    """Regular expressions on 512 characters of the worst kind take no noticeable time."""
    for agent in [
        "Mozilla/5.0 (" + "(" * 500,
        "Mozilla/5.0 " + "a/" * 250,
        "Mozilla/5.0 (Windows NT " + "1." * 240,
        " " * 511 + "!",
        "Chrome/" + "9" * 505,
        "(" + "; " * 255,
    ]:
        started = time.perf_counter()
        devices.label(devices.user_agent(agent))
        assert time.perf_counter() - started < 0.5, agent[:40]


# -- the store, on every backend -----------------------------------------------------------
def client(agent: object = FIREFOX_LINUX, address: object = "192.0.2.1") -> devices.Client:
    return lambda: (agent, address)


def listed(store: SessionStore, user: str = "alice") -> list[SessionInfo]:
    return store.sessions_for(user)


@pytest.fixture
def signed_in_events() -> Iterator[list[tuple[str, str]]]:
    events: list[tuple[str, str]] = []

    def receive(sender: Any, sid: str, user_id: str) -> None:
        events.append((sid, user_id))

    signals.session_signed_in.connect(receive)
    yield events
    signals.session_signed_in.disconnect(receive)


def test_recorded_when_a_new_session_gets_a_user(store, signed_in_events) -> None:
    session = store.load(None)
    session.user_id = "alice"
    store.save(session, client())
    [info] = listed(store)
    assert (info.user_agent, info.device, info.ip) == (
        FIREFOX_LINUX,
        "Firefox on Linux",
        "192.0.2.1",
    )
    assert signed_in_events == [(session.handle, "alice")]
    assert session.handle != session.id  # the stored (hashed) id, never the cookie


def test_anonymous_sessions_carry_neither(store, signed_in_events) -> None:
    session = store.load(None)
    session["cart"] = ["apple"]
    store.save(session, client())
    loaded = store.load(session.id)
    assert loaded._meta == {}
    loaded.regenerate()  # an anonymous regenerate is no sign-in
    store.save(loaded, client())
    assert store.load(loaded.id)._meta == {} and signed_in_events == []


def test_recorded_at_login_and_unchanged_by_ordinary_requests(
    make_store, clock, signed_in_events
) -> None:
    store = make_store(touch_interval=0)
    session = store.load(None)
    session["n"] = 0
    store.save(session, client("first visit"))
    login = store.load(session.id)
    login.user_id = "alice"  # None -> a user, without regenerate
    store.save(login, client(FIREFOX_LINUX, "192.0.2.1"))
    assert [(i.user_agent, i.ip) for i in listed(store)] == [(FIREFOX_LINUX, "192.0.2.1")]
    for change in ("data", "expiry", "touch", "nothing"):
        clock.advance(1)
        later = store.load(session.id)
        if change == "data":
            later["n"] = 1
        elif change == "expiry":
            later.set_expiry(600)
        store.save(later, client(CHROME_WINDOWS, "198.51.100.2"))
    [info] = listed(store)
    assert (info.user_agent, info.ip) == (FIREFOX_LINUX, "192.0.2.1")
    assert info.last_seen_at == clock.now  # the requests were seen, the device unchanged

    again = store.load(session.id)
    again.regenerate()  # a login again, with a user id: recorded anew
    store.save(again, client(CHROME_WINDOWS, None))
    [info] = listed(store)
    assert (info.user_agent, info.device, info.ip) == (CHROME_WINDOWS, "Chrome on Windows", None)
    assert signed_in_events == [(login.handle, "alice"), (again.handle, "alice")]
    assert again.handle != login.handle


def test_another_user_is_a_sign_in_and_losing_the_user_forgets_the_device(
    store, signed_in_events
) -> None:
    session = store.load(None)
    session.user_id = "alice"
    store.save(session, client(FIREFOX_LINUX))
    bob = store.load(session.id)
    bob.user_id = "bob"
    store.save(bob, client(CHROME_WINDOWS))
    assert [i.device for i in listed(store, "bob")] == ["Chrome on Windows"]
    anonymous = store.load(session.id)
    anonymous.user_id = None
    store.save(anonymous, client())
    assert store.load(session.id)._meta == {}
    assert [user for _, user in signed_in_events] == ["alice", "bob"]


def test_without_a_client_nothing_is_recorded_but_the_signal_is_sent(store, signed_in_events):
    session = store.load(None)
    session.user_id = 7
    store.save(session)  # store.save as applications call it, outside the adapters
    [info] = listed(store, "7")
    assert (info.user_agent, info.device, info.ip) == (None, None, None)
    assert signed_in_events == [(session.handle, "7")]


def test_a_sign_in_without_a_user_agent_records_the_address_alone(store) -> None:
    session = store.load(None)
    session.user_id = "alice"
    store.save(session, client(None, "::ffff:192.0.2.9"))
    [info] = listed(store)
    assert (info.user_agent, info.device, info.ip) == (None, None, "192.0.2.9")


@pytest.mark.parametrize("name", sorted(HOSTILE_AGENTS))
def test_hostile_user_agents_are_stored_as_given_trimmed(store, caplog, name) -> None:
    caplog.set_level(logging.DEBUG)
    agent = HOSTILE_AGENTS[name]
    session = store.load(None)
    session.user_id = "alice"
    store.save(session, client(agent, "192.0.2.1"))
    [info] = listed(store)
    assert info.user_agent == agent[:512] and info.device and info.ip == "192.0.2.1"
    assert store.load(session.id).user_id == "alice"
    raw = b"".join(
        bytes(column)
        for row in fetch_rows(store)
        for column in row
        if isinstance(column, bytes | memoryview)
    )
    assert agent[:40].encode() not in raw and b"192.0.2.1" not in raw  # encrypted
    assert not any(
        agent[:20] in r.getMessage() or "192.0.2.1" in r.getMessage() for r in caplog.records
    )


def test_recording_costs_no_query(store, count_queries) -> None:
    counts = []
    for recorded in (None, client()):
        session = store.load(None)
        session.user_id = "alice"
        with count_queries(store) as q:
            store.save(session, recorded)
        again = store.load(session.id)
        again.regenerate()
        with count_queries(store) as r:
            store.save(again, recorded)
        counts.append((q.count, r.count))
    assert counts[0] == counts[1]
    with count_queries(store) as q:
        assert len(listed(store)) == 2
    assert q.count == 1  # listing decrypts what one SELECT read


def test_listing_leaves_out_rows_that_fail_authentication(store, caplog) -> None:
    good, moved, edited = (store.load(None) for _ in range(3))
    for session in (good, moved, edited):
        session.user_id = "alice"
        store.save(session, client())
    table = store.database.quote[0] + store.table_name + store.database.quote[1]
    param = store.database.param
    with store.connected():
        payload = store.database.execute_sql(
            f"SELECT payload FROM {table} WHERE sid = {param}", (good.handle,)
        ).fetchone()[0]
        store.database.execute_sql(  # another row's ciphertext: bound to that row
            f"UPDATE {table} SET payload = {param} WHERE sid = {param}", (payload, moved.handle)
        )
        store.database.execute_sql(  # a lifetime stretched without the keys
            f"UPDATE {table} SET idle_timeout = 999999 WHERE sid = {param}", (edited.handle,)
        )
    with caplog.at_level(logging.WARNING, logger="storedsession.security"):
        assert [info.handle for info in listed(store)] == [good.handle]
    assert len([r for r in caplog.records if "does not open" in r.getMessage()]) == 2
    assert store.load(moved.id).new and store.load(edited.id).new  # as a load reads them


def test_in_a_merge_the_sign_in_keeps_its_device(store) -> None:
    session = store.load(None)
    session.user_id = "alice"
    store.save(session, client(FIREFOX_LINUX))
    relogin, other = store.load(session.id), store.load(session.id)
    relogin.regenerate()  # the same user signs in again, from another browser
    other["n"] = 1
    store.save(other, client("a request of the first browser"))
    store.save(relogin, client(CHROME_WINDOWS))  # lost the race: merged, keeps its device
    [info] = listed(store)
    assert info.handle == relogin.handle and info.user_agent == CHROME_WINDOWS
    assert dict(store.load(relogin.id)) == {"n": 1}


# -- the three fronts, on every backend ----------------------------------------------------
REAL = "203.0.113.7"
FORGED = {
    "X-Forwarded-For": "198.51.100.66",
    "X-Real-IP": "198.51.100.67",
    "Forwarded": "for=198.51.100.68",
}


def sign_in(web: Web) -> Any:
    web.session.regenerate()  # a new id at login
    web.session.user_id = web.query("name")
    return {"user": web.session.user_id}


def become(web: Web) -> Any:
    web.session.user_id = web.query("name")
    return {"user": web.session.user_id}


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, store: SessionStore) -> Callable[..., Front]:
    """Build the front with adapter options, serving ``/login`` and ``/become``."""

    def make(**options: Any) -> Front:
        built = build(request.param, store, **options)
        built.route("/login", sign_in)
        built.route("/become", become)
        return built

    return make


def visit(
    app: Front,
    path: str,
    *,
    agent: str | None = FIREFOX_LINUX,
    address: str = REAL,
    public_id: str | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request from a browser with user agent ``agent`` at ``address``."""
    headers = dict(headers or {})
    if agent is not None:
        headers["User-Agent"] = agent
    cookie = None if public_id is None else f"session={public_id}"
    return app.get(path, cookie=cookie, headers=headers, address=address)


def only(store: SessionStore, user: str = "alice") -> SessionInfo:
    [info] = store.sessions_for(user)
    return info


def test_fronts_record_at_creation_and_at_login_only(front, store, signed_in_events) -> None:
    app = front()
    first = visit(app, "/count", agent=CHROME_WINDOWS)  # anonymous: nothing recorded
    assert first.status == 200 and first.public_id
    assert store.load(first.public_id)._meta == {}
    login = visit(app, "/login?name=alice", agent=FIREFOX_LINUX, public_id=first.public_id)
    assert login.public_id and login.public_id != first.public_id
    assert (only(store).device, only(store).ip) == ("Firefox on Linux", None)  # record_ip: off
    for _ in range(2):
        assert visit(app, "/count", agent=CHROME_WINDOWS, public_id=login.public_id).status == 200
    assert only(store).user_agent == FIREFOX_LINUX  # ordinary requests change nothing
    relogin = visit(app, "/login?name=alice", agent=CHROME_WINDOWS, public_id=login.public_id)
    assert only(store).device == "Chrome on Windows"
    created = visit(app, "/become?name=bob", agent=FIREFOX_LINUX)  # a new session with a user
    assert only(store, "bob").user_agent == FIREFOX_LINUX
    handles = [ids.handle_for(p) for p in (login.public_id, relogin.public_id, created.public_id)]
    assert signed_in_events == list(zip(handles, ["alice", "alice", "bob"], strict=True))


def test_fronts_record_nothing_when_the_option_is_off(front, store) -> None:
    app = front(record_user_agent=False)
    login = visit(app, "/login?name=alice", headers=FORGED)
    assert login.status == 200
    assert store.load(login.public_id)._meta == {}
    info = only(store)
    assert (info.user_agent, info.device, info.ip) == (None, None, None)


def test_fronts_record_the_real_address_never_a_forged_header(front, store) -> None:
    app = front(record_ip=True)
    visit(app, "/login?name=alice", headers=FORGED)
    assert only(store).ip == REAL
    visit(app, "/become?name=bob", address="::ffff:192.0.2.44", headers=FORGED)
    assert only(store, "bob").ip == "192.0.2.44"


def test_fronts_take_the_address_from_client_ip_behind_a_proxy(front, store, caplog) -> None:
    given: list[Any] = []

    def behind_proxy(request: Any) -> str | None:
        given.append(request)
        value = (
            request.get_header("X-Forwarded-For")
            if hasattr(request, "get_header")
            else (request.environ.get("HTTP_X_FORWARDED_FOR"))
        )
        if value == "raise":
            raise ValueError(f"cannot read {value}")
        return value.split(",")[-1] if value else None

    app = front(record_ip=True, client_ip=behind_proxy)
    visit(app, "/become?name=alice", headers={"X-Forwarded-For": "10.9.9.9, 198.51.100.5"})
    assert only(store).ip == "198.51.100.5"
    kind = bottle.BaseRequest if app.kind == "bottle" else falcon.Request
    assert len(given) == 1 and isinstance(given[0], kind)
    visit(app, "/become?name=bob", headers={"X-Forwarded-For": "not an address"})
    assert only(store, "bob").ip is None
    with caplog.at_level(logging.WARNING):
        ok = visit(app, "/become?name=carol", headers={"X-Forwarded-For": "raise"})
    assert ok.status == 200 and only(store, "carol").ip is None
    assert only(store, "carol").device == "Firefox on Linux"
    assert [r.getMessage() for r in caplog.records] == [
        "client_ip raised ValueError; this sign-in was recorded without an address."
    ]


@pytest.mark.parametrize("name", sorted(HOSTILE_AGENTS))
def test_fronts_store_hostile_user_agents_safely(front, store, caplog, name) -> None:
    agent = HOSTILE_AGENTS[name]
    app = front(record_ip=True)
    caplog.set_level(logging.DEBUG)
    login = visit(app, "/login?name=alice", agent=agent)
    assert login.status == 200
    info = only(store)
    # As the front handed it over (WSGI and ASGI servers decode header bytes as latin-1).
    assert info.user_agent is not None and info.user_agent == agent[:512]
    assert info.device and info.device.isprintable()
    assert visit(app, "/count", public_id=login.public_id).status == 200
    assert not any(agent[:20] in r.getMessage() or REAL in r.getMessage() for r in caplog.records)
    page = common.sessions_page("Test", store.load(login.public_id), [info], None)
    assert "<script>" not in page and "<img" not in page and "\x1b" not in page


def test_recording_costs_no_query_on_any_request(front, store, count_queries) -> None:
    counts = []
    for options in ({"record_user_agent": False}, {"record_ip": True}):
        app = front(**options)
        with count_queries(store) as q:
            login = visit(app, "/login?name=alice")
            visit(app, "/count", public_id=login.public_id)
            visit(app, "/login?name=alice", public_id=login.public_id)
        counts.append(q.count)
    assert counts[0] == counts[1]


def test_record_options_are_checked_at_construction(store) -> None:
    for options in (
        {"record_user_agent": False, "record_ip": True},
        {"client_ip": "X-Forwarded-For", "record_ip": True},
        {"client_ip": lambda request: None},  # without record_ip it would go unused
    ):
        for adapter in (StoredSessionPlugin, StoredSessionMiddleware):
            with pytest.raises(ConfigurationError):
                adapter(store, **options)


# -- the demo's page -----------------------------------------------------------------------
def test_the_sessions_page_shows_devices_escaped(store) -> None:
    mine = store.load(None)
    mine.user_id = "alice"
    store.save(mine, client(FIREFOX_LINUX, "192.0.2.1"))
    other = store.load(None)
    other.user_id = "alice"
    store.save(other, client(HOSTILE_AGENTS["markup"], None))
    page = common.sessions_page("Test", mine, store.sessions_for("alice"), None)
    assert "Firefox on Linux" in page and "192.0.2.1" in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # the raw string, escaped
