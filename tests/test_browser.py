"""End to end: each demo app in real headless Chromium, used the way a person uses it.

Chromium is Debian's ``chromium`` package (``/usr/bin/chromium``, or the path in
``STOREDSESSION_TEST_CHROMIUM``), driven by Playwright for Python; no browser is ever
downloaded. Without either, the browser tests skip, or fail when
``STOREDSESSION_REQUIRE_ALL_BACKENDS=1`` (CI). Each demo runs as a subprocess on a free
loopback port with an SQLite file of its own; screenshots go to ``test-output/``.
The apps are the demos themselves (examples/), not tests/fronts.py fronts: what is under
test is the page a person uses, its forms, redirects and cookies in a real browser.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from storedsession import SessionStore, generate_key

from .support import REQUIRE_ALL

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # checked by the browser fixture, which skips or fails
    sync_playwright = None

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
OUTPUT = REPO / "test-output"
APPS = {"bottle": "examples.bottle_demo", "falcon": "examples.falcon_demo"}
CHROMIUM = os.environ.get("STOREDSESSION_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
START_SECONDS = 60  # for a demo to print its address, on a busy machine
STOP_SECONDS = 10
ACTION_MS = 15_000  # for each browser action and navigation
ADDRESS = re.compile(r"Open (http://127\.0\.0\.1:\d+/)")


# -- the demo servers ------------------------------------------------------------------
def _environment(keys: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "STOREDSESSION_KEYS"}
    env["PYTHONUNBUFFERED"] = "1"
    if keys is not None:
        env["STOREDSESSION_KEYS"] = keys
    return env


@contextmanager
def running(app: str, folder: Path, *, keys: str | None = None) -> Iterator[tuple[str, str]]:
    """Run demo ``app`` on ``folder/demo.db``; yield its address and a reader of its output."""
    log = folder / "server.log"
    command = [
        sys.executable,
        "-m",
        APPS[app],
        "--port",
        "0",
        "--database",
        f"sqlite:///{folder / 'demo.db'}",
    ]
    with log.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=_environment(keys),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + START_SECONDS
        while not (found := ADDRESS.search(log.read_text())):
            if process.poll() is not None:
                pytest.fail(f"The {app} demo exited with {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"The {app} demo printed no address in {START_SECONDS} s:\n{log.read_text()}"
                )
            time.sleep(0.1)
        yield found.group(1), log.read_text()
    finally:
        process.terminate()
        try:
            process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_SECONDS)


@dataclass
class Demo:
    name: str
    url: str
    store: SessionStore  # on the demo's own database and key, to look behind the page


@pytest.fixture(scope="module", params=sorted(APPS))
def demo(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Demo]:
    """A demo app started as a newcomer would: no STOREDSESSION_KEYS, its own key file."""
    folder = tmp_path_factory.mktemp(request.param)
    with running(request.param, folder) as (url, output):
        key_file = folder / "demo.db.key"
        assert f"its own key in {key_file}" in output
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        store = SessionStore(f"sqlite:///{folder / 'demo.db'}", keys=key_file.read_text().strip())
        try:
            yield Demo(request.param, url, store)
        finally:
            store.close()


@pytest.mark.parametrize("app", sorted(APPS))
def test_keys_from_the_environment_make_no_key_file(app: str, tmp_path: Path) -> None:
    with running(app, tmp_path, keys=generate_key()) as (_, output):
        assert "Keys: from STOREDSESSION_KEYS." in output
    assert not (tmp_path / "demo.db.key").exists()


@pytest.mark.parametrize("app", sorted(APPS))
def test_a_database_server_needs_keys_from_the_environment(app: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", APPS[app], "--database", "postgresql://nobody@127.0.0.1/none"],
        cwd=REPO,
        env=_environment(None),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert result.stderr.startswith("Error: Without STOREDSESSION_KEYS")


# -- the browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright, or a skip (a failure in CI) saying what is missing."""
    problem = None
    if sync_playwright is None:
        problem = "Playwright for Python is not installed (pip install -e '.[test]')"
    elif not os.access(CHROMIUM, os.X_OK):
        problem = (
            f"no Chromium at {CHROMIUM} (apt-get install chromium, or set "
            "STOREDSESSION_TEST_CHROMIUM)"
        )
    if problem:
        if REQUIRE_ALL:
            pytest.fail(f"Browser tests: {problem} (STOREDSESSION_REQUIRE_ALL_BACKENDS=1).")
        pytest.skip(f"Browser tests: {problem}.")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Page]]:
    """Open a page in a browser context of its own: a separate browser, as far as cookies go.

    Options go to ``new_context`` (``user_agent=``, ``extra_http_headers=``).
    """
    contexts: list[Any] = []

    def make(**options: Any) -> Page:
        context = browser.new_context(**options)
        context.set_default_timeout(ACTION_MS)
        context.set_default_navigation_timeout(ACTION_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Page, demo: Demo, name: str) -> None:
    page.goto(demo.url)
    page.get_by_label("Name").fill(name)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#user")).to_have_text(name)


def expect_signed_out(page: Page) -> None:
    expect(page.locator("header")).to_contain_text("Not signed in")
    expect(page.locator("#user")).to_have_count(0)


def session_cookie(page: Page) -> dict[str, Any]:
    cookies = [c for c in page.context.cookies() if c["name"] == "session"]
    assert len(cookies) == 1, cookies
    return dict(cookies[0])


def no_session_cookie(page: Page) -> bool:
    return not [c for c in page.context.cookies() if c["name"] == "session"]


def stored_rows(demo: Demo) -> int:
    with demo.store.connected():
        return demo.store.model.select().count()


def visits(page: Page) -> int:
    return int(page.locator("#visits").inner_text())


# -- the tests ---------------------------------------------------------------------------
def test_browsing_anonymously_stores_nothing(demo: Demo, new_page: Callable[[], Page]) -> None:
    before = stored_rows(demo)  # the demo's database is shared by this module's tests
    page = new_page()
    page.goto(demo.url)
    expect(page.locator("#no-session")).to_be_visible()
    for _ in range(3):
        page.reload()
    page.get_by_role("link", name="Your sessions").click()  # sends you back to sign in
    expect(page.locator("#flash")).to_have_text("Sign in to see your sessions.")
    page.goto(demo.url + "nowhere")
    page.go_back()
    expect_signed_out(page)
    expect(page.locator("#visits")).to_have_count(0)  # a counter needs a session
    assert no_session_cookie(page)
    assert stored_rows(demo) == before


def test_sign_in_count_and_sign_out(demo: Demo, new_page: Callable[[], Page]) -> None:
    page = new_page()
    page.goto(demo.url)
    expect_signed_out(page)
    sign_in(page, demo, "alice")
    expect(page.locator("#flash")).to_have_text("Signed in as alice.")

    # The counter survives reloads; the flash showed once; nothing may be cached.
    before = visits(page)
    for n in (1, 2):
        response = page.reload()
        assert response is not None and response.status == 200
        assert visits(page) == before + n
    assert response.headers["cache-control"] == "no-store"
    expect(page.locator("#flash")).to_have_count(0)

    # The cookie is HttpOnly and SameSite=Lax, and holds nothing but the id.
    assert page.evaluate("document.cookie") == ""
    cookie = session_cookie(page)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Lax"
    assert demo.store.load(cookie["value"]).user_id == "alice"

    # Sign out ends the session: its id stops working, and neither the back button
    # nor a reload shows a signed-in page (a cached one would: history navigation
    # reuses even stale cache entries; no-store forbids keeping any).
    page.goto(demo.url + "sessions")
    expect(page.locator("#sessions")).to_contain_text("This device")
    page.locator("header").get_by_role("button", name="Sign out").click()
    expect(page.locator("#flash")).to_have_text("You are signed out.")
    expect_signed_out(page)
    assert demo.store.load(cookie["value"]).new
    assert no_session_cookie(page)  # deleted, and no new session just to say "signed out"
    page.go_back()
    expect_signed_out(page)
    expect(page.locator("#sessions")).to_have_count(0)
    page.reload()
    expect_signed_out(page)
    assert "alice" not in page.content()


def test_cart_survives_sign_in_and_escapes_input(demo: Demo, new_page: Callable[[], Page]) -> None:
    page = new_page()
    page.goto(demo.url)
    for item in ("apple", "<i>pear</i>"):
        page.get_by_label("Item").fill(item)
        page.get_by_role("button", name="Add to cart").click()
        expect(page.locator("#flash")).to_have_text(f"Added {item} to the cart.")
    cart = page.locator("#cart li span")
    expect(cart).to_have_text(["apple", "<i>pear</i>"])
    expect(page.locator("#cart i")).to_have_count(0)  # shown as text, not markup

    sign_in(page, demo, "<b>dave</b>")  # regenerate() keeps the data
    expect(page.locator("header b#user b")).to_have_count(0)
    expect(cart).to_have_text(["apple", "<i>pear</i>"])
    page.locator("#cart li", has_text="apple").get_by_role("button", name="Remove").click()
    expect(page.locator("#flash")).to_have_text("Removed apple from the cart.")
    expect(cart).to_have_text(["<i>pear</i>"])


def test_sign_out_one_device_and_everywhere_else(demo: Demo, new_page: Callable[[], Page]) -> None:
    first, second, third = new_page(), new_page(), new_page()
    for page in (first, second, third):
        sign_in(page, demo, "bob")

    def handle(page: Page) -> str:
        found = demo.store.load(session_cookie(page)["value"]).handle
        assert found is not None
        return found

    response = first.goto(demo.url + "sessions")
    assert response is not None and response.headers["cache-control"] == "no-store"
    rows = first.locator("#sessions tbody tr")
    expect(rows).to_have_count(3)
    expect(first.locator("tr.this-device")).to_have_attribute("data-handle", handle(first))
    OUTPUT.mkdir(exist_ok=True)
    first.screenshot(path=str(OUTPUT / f"sessions-{demo.name}.png"), full_page=True)

    # "Sign out" on one row ends that device's session only.
    third_handle = handle(third)
    first.locator(f'tr[data-handle="{third_handle}"]').get_by_role(
        "button", name="Sign out"
    ).click()
    expect(first.locator("#flash")).to_have_text("That session is signed out.")
    expect(rows).to_have_count(2)
    third.reload()
    expect_signed_out(third)
    second.reload()
    expect(second.locator("#user")).to_have_text("bob")

    # "Sign out everywhere else" ends the second browser's session, not this one.
    first.get_by_role("button", name="Sign out everywhere else").click()
    expect(first.locator("#flash")).to_have_text("Signed out 1 other session(s).")
    expect(rows).to_have_count(1)
    second.reload()
    expect_signed_out(second)
    first.reload()
    expect(first.locator("#user")).to_have_text("bob")


def test_another_page_cannot_sign_you_out(demo: Demo, new_page: Callable[[], Page]) -> None:
    page = new_page()
    sign_in(page, demo, "carol")
    # A page on another port of the same host is same-site, so the browser sends the
    # SameSite=Lax cookie with its form: only the CSRF token stops it.
    # Playwright answers for it: nothing listens there.
    hostile = "http://127.0.0.1:65001/"
    page.route(
        hostile,
        lambda route: route.fulfill(
            content_type="text/html",
            body=(
                f'<form method="post" action="{demo.url}signout">'
                '<input type="hidden" name="csrf" value="guessed"></form>'
                "<script>document.forms[0].submit()</script>"
            ),
        ),
    )
    page.goto(hostile)
    expect(page.locator("#error")).to_contain_text("nothing was done")
    assert page.url == demo.url + "signout"
    response = page.goto(demo.url + "signout")  # and a link cannot do it either
    assert response is not None and response.status == 405
    page.goto(demo.url)
    expect(page.locator("#user")).to_have_text("carol")


def test_another_page_cannot_sign_a_stranger_in(demo: Demo, new_page: Callable[[], Page]) -> None:
    """Login CSRF: a visitor without a session has no token to check, so only where the form
    came from (Sec-Fetch-Site, Origin) can stop another page from signing them in as
    someone else; a same-site page on another port of this host included."""
    before = stored_rows(demo)
    page = new_page()
    hostile = "http://127.0.0.1:65002/"
    page.route(
        hostile,
        lambda route: route.fulfill(
            content_type="text/html",
            body=(
                f'<form method="post" action="{demo.url}signin">'
                '<input type="hidden" name="username" value="mallory"></form>'
                "<script>document.forms[0].submit()</script>"
            ),
        ),
    )
    page.goto(hostile)
    expect(page.locator("#error")).to_contain_text("nothing was done")
    assert no_session_cookie(page)
    assert stored_rows(demo) == before
    page.goto(demo.url)
    expect_signed_out(page)


FIREFOX_LINUX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


def test_two_browsers_appear_as_two_devices(demo: Demo, new_page: Callable[..., Page]) -> None:
    # The second browser forges the headers a proxy would set: the demo records the
    # connection's own address (record_ip=True), never theirs.
    forged = {"X-Forwarded-For": "198.51.100.66", "X-Real-IP": "198.51.100.67"}
    firefox = new_page(user_agent=FIREFOX_LINUX)
    chrome = new_page(user_agent=CHROME_WINDOWS, extra_http_headers=forged)
    for page in (firefox, chrome):
        sign_in(page, demo, "erin")
    firefox.reload()  # an ordinary request from another browser changes nothing recorded
    chrome.goto(demo.url + "sessions")
    rows = chrome.locator("#sessions tbody tr")
    expect(rows).to_have_count(2)
    mine, other = chrome.locator("tr.this-device"), chrome.locator("tr.other")
    expect(mine.locator(".device")).to_have_text("Chrome on Windows")
    expect(mine).to_contain_text("This device")
    expect(mine.locator(".ua")).to_have_text(CHROME_WINDOWS)
    expect(other.locator(".device")).to_have_text("Firefox on Linux")
    expect(other.locator(".ua")).to_have_text(FIREFOX_LINUX)
    expect(chrome.locator("#sessions td.ip")).to_have_text(["127.0.0.1", "127.0.0.1"])
    assert "198.51.100" not in chrome.content()
    OUTPUT.mkdir(exist_ok=True)
    chrome.screenshot(path=str(OUTPUT / f"devices-{demo.name}.png"), full_page=True)

    # The label comes from the store, which decrypts what the sign-in recorded.
    listed = {info.device: info for info in demo.store.sessions_for("erin")}
    assert sorted(listed) == ["Chrome on Windows", "Firefox on Linux"]
    assert {info.ip for info in listed.values()} == {"127.0.0.1"}


def test_a_hostile_user_agent_is_shown_as_text(demo: Demo, new_page: Callable[..., Page]) -> None:
    agent = '<script>document.title="owned"</script><img src=x onerror=alert(1)> Firefox/1'
    page = new_page(user_agent=agent)
    sign_in(page, demo, "frank")
    page.goto(demo.url + "sessions")
    expect(page.locator("tr.this-device .ua")).to_have_text(agent)
    expect(page.locator("#sessions script, #sessions img")).to_have_count(0)
    assert page.title() != "owned"
