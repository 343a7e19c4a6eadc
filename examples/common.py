"""What both demos share: options, the store and its key, the CSRF checks, headers and HTML.

The two apps differ only in how their framework routes a request and reads a form;
everything the browser sees is built here, so they look and behave the same.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import html
import os
import secrets
import stat
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from storedsession import (
    Session,
    SessionInfo,
    SessionStore,
    StoredSessionError,
    generate_key,
)

DEFAULT_DATABASE = "sqlite:///storedsession-demo.db"
MAX_TEXT = 40  # characters in a name or a cart item
MAX_CART = 20  # items in the cart

BAD_NAME = f"Enter a name of 1 to {MAX_TEXT} characters."
BAD_ITEM = f"Enter an item of 1 to {MAX_TEXT} characters."
CART_FULL = f"The cart holds {MAX_CART} items at most."
SIGNED_OUT = "You are signed out."
SIGN_IN_FIRST = "Sign in to see your sessions."

#: How a demo sends the browser back with a one-time message: it raises its framework's
#: redirect, after which the adapter still saves the session (any status below 500).
Back = Callable[[Session, str], NoReturn]


def signed_in_user(session: Session, back: Back) -> str:
    """Return the signed-in user, or send the visitor back to sign in first."""
    if session.user_id is None:
        back(session, SIGN_IN_FIRST)
    return session.user_id


def add_to_cart(session: Session, text: str | None, back: Back) -> NoReturn:
    """Put an item in the session's cart (changed in place: saved all the same)."""
    item = clean(text)
    if item is None:
        back(session, BAD_ITEM)
    cart = session.setdefault("cart", [])
    if len(cart) >= MAX_CART:
        back(session, CART_FULL)
    cart.append(item)
    back(session, f"Added {item} to the cart.")


def remove_from_cart(session: Session, item: str | None, back: Back) -> NoReturn:
    """Take an item out of the session's cart."""
    cart = session.get("cart", [])
    if item not in cart:
        back(session, NOT_IN_CART)
    cart.remove(item)
    back(session, f"Removed {item} from the cart.")


def sign_out(session: Session, back: Back) -> NoReturn:
    """End the session and say so.

    invalidate() empties the session and deletes its row when the adapter saves it; the
    message then starts a new, anonymous session under a new id.
    """
    session.invalidate()
    back(session, SIGNED_OUT)


REVOKED = "That session is signed out."
GONE = "That session had ended already."
NOT_IN_CART = "That item was not in the cart."
CSRF_FAILED = (
    "This form was not sent by a page of this site, or it has expired, so "
    "nothing was done. Go back, reload the page and try again."
)

#: The messages a visitor without a session can be sent back with. They travel in the
#: redirect's query (``/?notice=signed-out``), since keeping one in a session would create
#: a session just to say something; fixed texts only, so a link cannot make a page say
#: anything else.
NOTICES = {
    "signed-out": SIGNED_OUT,
    "sign-in-first": SIGN_IN_FIRST,
    "bad-name": BAD_NAME,
    "bad-item": BAD_ITEM,
    "not-in-cart": NOT_IN_CART,
}
_NOTICE_CODES = {text: code for code, text in NOTICES.items()}


def leave_message(session: Session, message: str, to: str) -> str:
    """Keep ``message`` for the next page; return the address to send the browser to.

    A visitor without a stored session, and with nothing to store, stays without one:
    the message goes in the address instead.
    """
    if session.new and not session and message in _NOTICE_CODES:
        return f"{to}?notice={_NOTICE_CODES[message]}"
    session["flash"] = message
    return to


def _take_message(session: Session, notice: str | None) -> str | None:
    """Return the message to show once: the session's own, or a notice from the address."""
    flash = session.pop("flash", None)  # on a new session: no change, nothing to store
    if isinstance(flash, str):
        return flash
    return NOTICES.get(notice) if notice is not None else None


def fail(message: str) -> NoReturn:
    """Stop the demo with one line on stderr."""
    sys.exit(f"Error: {message}")


# -- start-up ------------------------------------------------------------------------
def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError("a port is a number from 0 to 65535")
    return int(text)


def parse_args(framework: str, default_port: int, argv: Sequence[str] | None) -> argparse.Namespace:
    """Read the demo's command line: ``--database URL`` and ``--port N``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m examples.{framework.lower()}_demo",
        description=f"The storedsession demo on {framework}, served on 127.0.0.1.",
    )
    parser.add_argument(
        "--database",
        default=DEFAULT_DATABASE,
        metavar="URL",
        help="where the sessions live (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=default_port,
        help="the port on 127.0.0.1; 0 takes any free one (default: %(default)s)",
    )
    return parser.parse_args(argv)


def key_file_for(database: str) -> Path:
    """Return where the demo keeps its own key: beside the SQLite file, as ``<file>.key``."""
    path = urlsplit(database).path[1:] if database.startswith("sqlite") else ""
    if not path or path == ":memory:":
        fail(
            "Without STOREDSESSION_KEYS the demo keeps its own key beside an SQLite file, "
            "and this database is not one. Make a key and export it first: "
            'export STOREDSESSION_KEYS="$(storedsession generate-key)"'
        )
    return Path(path + ".key").absolute()


def demo_key(path: Path) -> tuple[str, bool]:
    """Return the key kept in ``path`` and whether it was just made (mode 0600)."""
    try:
        # O_EXCL: never overwrite a key, which would end every stored session.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            print(f"Warning: others can read {path}; chmod 600 it.", file=sys.stderr)
        return path.read_text().strip(), False
    except OSError as exc:
        fail(f"Cannot create the demo key file {path}: {exc.strerror}.")
    with os.fdopen(fd, "w") as file:
        file.write(generate_key() + "\n")
    return path.read_text().strip(), True


def open_store(database: str) -> SessionStore:
    """Build the demo's store, create its table, and say where its key comes from."""
    keys: list[str] | None = None  # None: the store reads STOREDSESSION_KEYS
    if os.environ.get("STOREDSESSION_KEYS", "").strip():
        note = "Keys: from STOREDSESSION_KEYS."
    else:
        path = key_file_for(database)
        key, created = demo_key(path)
        keys = [key]
        note = (
            f"Keys: STOREDSESSION_KEYS is not set, so the demo {'made' if created else 'uses'}"
            f" its own key in {path} (mode 0600; keep it to keep the sessions). A real "
            "app takes its keys from the environment."
        )
    print(note, flush=True)  # before the store, whose errors may be about this key
    try:
        store = SessionStore(database, keys=keys)
        store.create_table()
    except StoredSessionError as exc:
        fail(str(exc))
    return store


def cannot_listen(port: int, exc: OSError) -> NoReturn:
    """Stop the demo because its port is taken (or not allowed)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    fail(
        f"Cannot listen on 127.0.0.1:{port} ({reason}). Pick another port "
        "with --port N, or --port 0 for any free one."
    )


def announce(framework: str, port: int) -> None:
    """Print the address to open."""
    print(
        f"The {framework} demo is running. Open http://127.0.0.1:{port}/ (Ctrl-C stops it).",
        flush=True,
    )


# -- forms -----------------------------------------------------------------------------
# How the forms resist cross-site request forgery, without a session for every visitor.
#
# A visitor without a session can still send two forms (sign in, add to cart), and a
# token tied to a session cannot protect them: there is no session to hold it, and making
# one for every visitor who merely looks is what this demo refuses to do. A token in a
# cookie of its own (double submit) does not hold either: cookies are not separated by
# port, so any page served on this host (another port, as in tests/test_browser.py) or on
# a sibling subdomain can write that cookie and then send the matching token. And
# SameSite=Lax only keeps the browser from *sending* the session cookie along; it does
# not stop a forged sign-in from *setting* one (login CSRF).
#
# What a page cannot forge is what the browser says about where a request came from. So
# every POST must come from a page of this very origin: Sec-Fetch-Site: same-origin (sent
# by every current browser), or, from a browser without it, an Origin header naming this
# host. A POST that says nothing of where it came from is refused too. This is the check of
# Go's net/http CrossOriginProtection, stricter about the headers' absence. Once the
# visitor has a session, its pages also carry the session's own token (the synchronizer
# token pattern), checked on top: a defence that does not rely on the headers alone.
def same_origin(scheme: str, host: str | None, fetch_site: str | None, origin: str | None) -> bool:
    """Tell whether the browser says this request came from a page of this origin.

    ``scheme`` is the one the request came in with (not a forwarded header), ``host`` the
    ``Host`` header, ``fetch_site`` and ``origin`` the ``Sec-Fetch-Site`` and ``Origin``
    headers, or None when absent.
    """
    if fetch_site is not None:
        return fetch_site in ("same-origin", "none")  # "none": the user's own doing
    if origin is not None and host:
        return origin == f"{scheme}://{host}"
    return False


def csrf_token(session: Session) -> str | None:
    """Return the session's CSRF token, making one if it has none; None without a session."""
    if session.new:
        return None  # forms without a session rest on same_origin() alone
    token = session.get("csrf")
    if not isinstance(token, str):
        token = session["csrf"] = secrets.token_urlsafe(32)
    return token


def renew_csrf_token(session: Session) -> None:
    """Give the session a fresh CSRF token (at sign-in, with its fresh id)."""
    session["csrf"] = secrets.token_urlsafe(32)


def form_allowed(session: Session, submitted: object, came_from_here: bool) -> bool:
    """Tell whether a POSTed form may act: sent from here, with the session's token if any."""
    if not came_from_here:
        return False
    if session.new:
        return True
    expected = session.get("csrf")
    return (
        isinstance(expected, str)
        and isinstance(submitted, str)
        and hmac.compare_digest(expected.encode(), submitted.encode())
    )


def clean(value: object) -> str | None:
    """Return a form's text field stripped, or None when it is missing, empty or too long."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return value if 0 < len(value) <= MAX_TEXT else None


# -- pages -----------------------------------------------------------------------------
_CSS = """
body{font:16px/1.5 system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
header{display:flex;gap:1rem;align-items:center;border-bottom:1px solid #ccc;padding-bottom:.5rem}
header .who{margin-left:auto}
form.inline{display:inline;margin:0}
button{white-space:nowrap}
#flash{background:#fff6d5;border:1px solid #e5c100;padding:.5rem .75rem}
table{border-collapse:collapse;width:100%}
td,th{border-bottom:1px solid #ddd;padding:.35rem;text-align:left}
tr.this-device{background:#eef6ff}
.note{color:#666;font-size:.9em}
.device{font-weight:600}
.ua{display:block;color:#666;font-size:.75em;word-break:break-all}
"""
_CSS_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()

#: Sent with every page. Each shows session data, so none may be cached: after sign-out
#: the back button asks the server again instead of showing a signed-in page.
HEADERS = (
    ("Cache-Control", "no-store"),
    (
        "Content-Security-Policy",
        f"default-src 'none'; style-src 'sha256-{_CSS_HASH}'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)

e = html.escape  # every value from a user goes through it


def _hidden(**fields: str | None) -> str:
    return "".join(
        f'<input type="hidden" name="{e(k)}" value="{e(v)}">'
        for k, v in fields.items()
        if v is not None
    )


def _button(action: str, label: str, csrf: str | None, **fields: str) -> str:
    return (
        f'<form class="inline" method="post" action="{e(action)}">'
        f"{_hidden(csrf=csrf, **fields)}<button>{e(label)}</button></form>"
    )


def _layout(
    framework: str, title: str, body: str, session: Session | None, flash: str | None
) -> str:
    who = ""
    if session is not None and session.user_id is not None:
        who = (
            f'<span class="who">Signed in as <b id="user">{e(session.user_id)}</b> '
            f"{_button('/signout', 'Sign out', csrf_token(session))}</span>"
        )
    elif session is not None:
        who = '<span class="who">Not signed in</span>'
    shown = f'<p id="flash" role="status">{e(flash)}</p>' if flash else ""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)} · storedsession demo</title><style>{_CSS}</style></head>"
        f'<body><header><b>storedsession demo</b><span class="note">{e(framework)}</span>'
        f'<a href="/">Home</a><a href="/sessions">Your sessions</a>{who}</header>'
        f"<main>{shown}<h1>{e(title)}</h1>{body}</main></body></html>"
    )


def home_page(framework: str, session: Session, notice: str | None) -> str:
    """The home page: the visit counter, the cart, and sign-in for strangers.

    Counts a visit only in a session that exists: looking stores nothing.
    """
    flash = _take_message(session, notice)
    csrf = csrf_token(session)
    if session.new:
        counter = (
            '<p id="no-session">No session yet: nothing about you is stored until you use '
            "a form (add to the cart, or sign in). Then this page counts your visits.</p>"
        )
    else:
        session["visits"] = visits = session.get("visits", 0) + 1
        counter = (
            f'<p>Visits to this page in this session: <strong id="visits">{visits}</strong>. '
            "Reload to count up.</p>"
        )
    cart = session.get("cart", [])
    items = "".join(
        f"<li><span>{e(str(item))}</span> "
        f"{_button('/cart/remove', 'Remove', csrf, item=str(item))}</li>"
        for item in cart
    )
    body = (
        f'{counter}<h2>Cart</h2><ul id="cart">{items or "<li>(empty)</li>"}</ul>'
        f'<form method="post" action="/cart/add">{_hidden(csrf=csrf)}'
        f'<label>Item <input name="item" maxlength="{MAX_TEXT}" '
        "required></label> <button>Add to cart</button></form>"
    )
    if session.user_id is None:
        body += (
            f'<h2>Sign in</h2><form method="post" action="/signin">{_hidden(csrf=csrf)}'
            f'<label>Name <input name="username" maxlength="{MAX_TEXT}" required '
            'autocomplete="username"></label> <button>Sign in</button></form>'
            '<p class="note">This is a demo: any name signs you in, and there is no '
            "password. The cart and the counter stay with you when you sign in.</p>"
        )
    body += (
        '<p class="note">Your browser holds only a random id, in an HttpOnly cookie. '
        "Everything on this page lives in the database, encrypted.</p>"
    )
    title = "Hello, " + session.user_id if session.user_id is not None else "Welcome"
    return _layout(framework, title, body, session, flash)


def _when(moment: datetime | None) -> str:
    return "never" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _shown(text: str) -> str:
    """Return text from a client fit for a page: escaped, control characters replaced."""
    return e("".join(c if c.isprintable() else "\ufffd" for c in text))


def _device(info: SessionInfo, mine: bool) -> str:
    # The label is the store's ("Firefox on Linux"); the user agent is as the browser
    # sent it, markup and all, so both are escaped.
    label = _shown(info.device) if info.device else "Unknown device"
    agent = f'<span class="ua">{_shown(info.user_agent)}</span>' if info.user_agent else ""
    here = " · <b>This device</b>" if mine else ""
    return f'<span class="device">{label}</span>{here}{agent}'


def sessions_page(
    framework: str, session: Session, sessions: list[SessionInfo], notice: str | None
) -> str:
    """The signed-in user's sessions: device, address, times; this one marked; each revocable."""
    flash = _take_message(session, notice)
    csrf = csrf_token(session)
    rows = []
    for info in sessions:
        mine = info.handle == session.handle
        action = (
            _button("/signout", "Sign out", csrf)
            if mine
            else _button("/sessions/revoke", "Sign out", csrf, handle=info.handle)
        )
        address = _shown(info.ip) if info.ip else '<span class="note">not recorded</span>'
        rows.append(
            f'<tr class="{"this-device" if mine else "other"}" '
            f'data-handle="{e(info.handle)}"><td>{_device(info, mine)}</td>'
            f'<td class="ip">{address}</td>'
            f"<td>{_when(info.created_at)}</td><td>{_when(info.last_seen_at)}</td>"
            f"<td>{_when(info.expires_at)}</td><td>{action}</td></tr>"
        )
    body = (
        '<table id="sessions"><thead><tr><th>Device</th><th>Address</th><th>Signed in</th>'
        "<th>Last seen</th><th>Expires</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        f"<p>{_button('/sessions/revoke-others', 'Sign out everywhere else', csrf)}</p>"
        '<p class="note">The browser and address are those that signed in, kept encrypted '
        'with the session. "Last seen" moves at most once a minute. Sign in with the same '
        "name in another browser (or a private window) to see a second session here.</p>"
    )
    return _layout(framework, "Your sessions", body, session, flash)


def error_page(framework: str, status: str, message: str) -> str:
    """A page for a refused request (403) or a missing one (404, 405)."""
    body = f'<p id="error">{e(message)}</p><p><a href="/">Back to the home page</a></p>'
    return _layout(framework, status, body, None, None)
