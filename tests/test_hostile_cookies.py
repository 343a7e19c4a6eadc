"""One corpus of hostile session cookies through Bottle, Falcon WSGI and Falcon ASGI.

Never a 500, never a query for a malformed value, never a row for a hostile id, never an
adopted id. The live session a hostile variant is derived from stays untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import bottle
import pytest

from storedsession import SessionStore, ids

from .support import fetch_rows
from .test_bottle import install
from .test_falcon import Client
from .wire import Reply, wsgi_call


def _flip(public_id: str) -> str:
    """The id with its case flipped, still well formed (the last character carries
    padding bits, so it keeps its case)."""
    return public_id[:42].swapcase() + public_id[42]


# Each entry turns a live public id into a hostile Cookie header. "well_formed" says
# whether the value has the exact shape of an id (then one query finds nothing).
CORPUS: dict[str, tuple[Callable[[str, str], str], bool]] = {
    "empty": (lambda live, handle: "session=", False),
    "10kb": (lambda live, handle: "session=" + "A" * 10240, False),
    "nul": (lambda live, handle: "session=" + live[:42] + "\x00", False),
    "percent-00": (lambda live, handle: "session=%00", False),
    "emoji": (lambda live, handle: "session=" + "😀".encode().decode("latin-1"), False),
    "padding": (lambda live, handle: f"session={live}=", False),
    "plus-slash": (lambda live, handle: "session=" + ("+/" + live[2:]), False),
    "inner-space": (lambda live, handle: f"session={live[:20]} {live[21:]}", False),
    "tab": (lambda live, handle: f"session={live[:42]}\t", False),
    "case-flipped": (lambda live, handle: f"session={_flip(live)}", True),
    "hashed-id": (lambda live, handle: f"session={handle}", False),
    "sql": (lambda live, handle: "session=' OR '1'='1'; DROP TABLE stored_sessions; --", False),
    "quoted": (lambda live, handle: f'session="{live}"', False),
    "twice-both-bad": (lambda live, handle: "session=x; session=" + _flip(live), True),
}


class Frontend:
    """One of the three web stacks, with a read route and a counter route."""

    def __init__(self, kind: str, store: SessionStore) -> None:
        self.kind = kind
        if kind == "bottle":
            self.app = bottle.Bottle()
            self.app.config["catchall"] = True  # a crash must show as a 500, not escape
            install(self.app, store)
        else:
            self.client = Client(kind == "falcon-asgi", store)

    def get(self, path: str, cookie: str | None) -> Reply:
        if self.kind == "bottle":
            return wsgi_call(self.app, path, cookie=cookie)
        return self.client.get(path, cookie=cookie)


@pytest.fixture(params=["bottle", "falcon-wsgi", "falcon-asgi"])
def frontend(request: pytest.FixtureRequest, store: SessionStore) -> Frontend:
    return Frontend(request.param, store)


@pytest.fixture
def live(frontend: Frontend, store: SessionStore) -> tuple[str, str]:
    """A stored session (n=1): its public id and its handle."""
    reply = frontend.get("/count", None)
    public_id = reply.session_pair().partition("=")[2]
    return public_id, ids.handle_for(public_id)


@pytest.mark.parametrize("kind", CORPUS)
def test_hostile_cookie(frontend, store, live, count_queries, kind) -> None:
    make, well_formed = CORPUS[kind]
    header = make(*live)
    rows_before = fetch_rows(store)

    with count_queries(store) as q:
        reply = frontend.get("/read", header)
    assert reply.status == 200, reply.body
    assert reply.json == {"n": None, "new": True}
    assert reply.cookie() is None
    # A malformed value costs no query; a well-formed unknown one exactly one.
    # (Falcon ASGI loads before the responder, but only well-formed values.)
    assert q.count == (1 if well_formed else 0), q.statements

    reply = frontend.get("/count", header)
    assert reply.status == 200
    new_id = reply.session_pair().partition("=")[2]
    assert new_id != live[0] and new_id not in header  # never adopted
    rows = fetch_rows(store)
    assert len(rows) == len(rows_before) + 1
    assert {row[0] for row in rows} == {row[0] for row in rows_before} | {ids.handle_for(new_id)}
    assert dict(store.load(live[0])) == {"n": 1}  # the live session is untouched


@pytest.mark.parametrize("order", ["hostile-first", "live-first"])
def test_cookie_sent_twice_uses_the_first_well_formed_value(
    frontend, store, live, count_queries, order
) -> None:
    other = frontend.get("/count", None).session_pair().partition("=")[2]
    pairs = [f"session={live[0]}", "session=garbage", f"session={other}"]
    if order == "hostile-first":
        pairs = pairs[1:2] + pairs[:1] + pairs[2:]
    with count_queries(store) as q:
        reply = frontend.get("/read", "; ".join(pairs))
    assert reply.status == 200
    assert reply.json == {"n": 1, "new": False}
    assert q.count == 1


def test_a_hostile_cookie_beside_other_cookies(frontend, store, live) -> None:
    header = f'theme=dark; session={live[0]}; tracking="a,b"; empty='
    reply = frontend.get("/read", header)
    assert reply.status == 200 and reply.json == {"n": 1, "new": False}


def test_every_response_to_a_hostile_cookie_is_boring(frontend, store, live) -> None:
    for kind, (make, _) in CORPUS.items():
        for path in ("/read", "/count", "/logout", "/untouched"):
            reply = frontend.get(path, make(*live))
            assert reply.status == 200, (kind, path, reply.body)
    assert dict(store.load(live[0])) == {"n": 1}
