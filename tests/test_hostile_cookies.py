"""One corpus of hostile session cookies through Bottle, Falcon WSGI and Falcon ASGI.

Never a 500, never a query for a malformed value, never a row for a hostile id, never an
adopted id. The live session a hostile variant is derived from stays untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from storedsession import SessionStore, ids

from .fronts import FalconFront, Front
from .support import fetch_rows, stored
from .wire import asgi_call


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
    "twice-both-bad": (lambda live, handle: "session=x; session=" + _flip(live), True),
    # A sibling subdomain can set an ordinary cookie whose value holds a comma; the
    # browser sends it first. Split on ";" only, so the smuggled pair is never read.
    "comma-smuggled": (lambda live, handle: f"pref=x,session={live}", False),
    "comma-space-smuggled": (lambda live, handle: f"pref=x, session={live}", False),
    "comma-smuggled-twice": (lambda live, handle: f"a=1,session={live},b=2", False),
    # Only spaces and tabs are trimmed: str.strip() would make these names match. (Each
    # follows another pair: falcon.testing itself strips the ends of a header value.)
    "nbsp-name": (lambda live, handle: f"theme=dark;\xa0session={live}", False),
    "nel-name": (lambda live, handle: f"theme=dark;\x85session={live}", False),
    "fs-name": (lambda live, handle: f"theme=dark;\x1csession={live}", False),
    "us-name": (lambda live, handle: f"theme=dark; \x1fsession={live}", False),
    "vt-name": (lambda live, handle: f"theme=dark;\x0bsession={live}", False),
    "nbsp-name-suffix": (lambda live, handle: f"session\xa0={live}", False),
    "nbsp-value": (lambda live, handle: f"session={live}\xa0; theme=dark", False),
    # A value wrapped in one pair of double quotes is read without them; anything
    # else with a quote is malformed.
    "quote-open-only": (lambda live, handle: f'session="{live}', False),
    "quote-close-only": (lambda live, handle: f'session={live}"', False),
    "quoted-twice": (lambda live, handle: f'session=""{live}""', False),
    "quoted-inner-space": (lambda live, handle: f'session=" {live}"', False),
    "quoted-inner-tab": (lambda live, handle: f'session="{live}\t"', False),
    "quoted-handle": (lambda live, handle: f'session="{handle}"', False),
    "quoted-case-flipped": (lambda live, handle: f'session="{_flip(live)}"', True),
}


@pytest.fixture
def live(front: Front, store: SessionStore) -> tuple[str, str]:
    """A stored session (n=1): its public id and its handle, on a front where a crash
    shows as a 500 (Bottle's catchall on) rather than escaping."""
    front.answer_crashes_with_500()
    reply = front.get("/count")
    public_id = reply.session_pair().partition("=")[2]
    return public_id, ids.handle_for(public_id)


@pytest.mark.parametrize("kind", CORPUS)
def test_hostile_cookie(front, store, live, count_queries, kind) -> None:
    make, well_formed = CORPUS[kind]
    header = make(*live)
    rows_before = fetch_rows(store)

    with count_queries(store) as q:
        reply = front.get("/read", cookie=header)
    assert reply.status == 200, reply.body
    assert reply.json == {"n": None, "new": True}
    assert reply.cookie() is None
    # A malformed value costs no query; a well-formed unknown one exactly one.
    # (Falcon ASGI loads before the responder, but only well-formed values.)
    assert q.count == (1 if well_formed else 0), q.statements

    reply = front.get("/count", cookie=header)
    assert reply.status == 200
    new_id = reply.session_pair().partition("=")[2]
    assert new_id != live[0] and new_id not in header  # never adopted
    rows = fetch_rows(store)
    assert len(rows) == len(rows_before) + 1
    assert {row[0] for row in rows} == {row[0] for row in rows_before} | {ids.handle_for(new_id)}
    assert dict(store.load(live[0])) == {"n": 1}  # the live session is untouched


@pytest.mark.parametrize("order", ["hostile-first", "live-first"])
def test_cookie_sent_twice_uses_the_first_well_formed_value(
    front, store, live, count_queries, order
) -> None:
    other = front.get("/count").session_pair().partition("=")[2]
    pairs = [f"session={live[0]}", "session=garbage", f"session={other}"]
    if order == "hostile-first":
        pairs = pairs[1:2] + pairs[:1] + pairs[2:]
    with count_queries(store) as q:
        reply = front.get("/read", cookie="; ".join(pairs))
    assert reply.status == 200
    assert reply.json == {"n": 1, "new": False}
    assert q.count == 1


def test_a_hostile_cookie_beside_other_cookies(front, store, live) -> None:
    header = f'theme=dark; session={live[0]}; tracking="a,b"; empty='
    reply = front.get("/read", cookie=header)
    assert reply.status == 200 and reply.json == {"n": 1, "new": False}


def test_every_response_to_a_hostile_cookie_is_boring(front, store, live) -> None:
    for kind, (make, _) in CORPUS.items():
        for path in ("/read", "/count", "/logout", "/untouched"):
            reply = front.get(path, cookie=make(*live))
            assert reply.status == 200, (kind, path, reply.body)
    assert dict(store.load(live[0])) == {"n": 1}


@pytest.mark.parametrize("quoting", ["quoted", "quoted-with-spaces"])
def test_a_quoted_cookie_reads_its_session(front, store, live, count_queries, quoting) -> None:
    # RFC 6265 §4.1.1 allows a DQUOTE-wrapped value; webtest and http.cookiejar send one.
    header = {
        "quoted": f'session="{live[0]}"',
        "quoted-with-spaces": f'theme=a; session = "{live[0]}" ',
    }[quoting]
    with count_queries(store) as q:
        reply = front.get("/read", cookie=header)
    assert reply.json == {"n": 1, "new": False} and q.count == 1
    reply = front.get("/count", cookie=header)
    assert reply.json == {"n": 2} and reply.cookie().value == live[0]  # the same id
    assert len(fetch_rows(store)) == 1


def test_a_comma_smuggled_pair_loses_to_the_real_cookie(front, store, live) -> None:
    attacker = front.get("/count").session_pair().partition("=")[2]
    front.get("/count", cookie=f"session={attacker}")  # the attacker's session holds n == 2
    reply = front.get("/read", cookie=f"pref=x,session={attacker}; session={live[0]}")
    assert reply.json == {"n": 1, "new": False}


# -- ASGI: every cookie field counts ---------------------------------------------------


@pytest.fixture
def asgi_app(store: SessionStore) -> Any:
    return FalconFront(store, asgi=True).wire


@pytest.mark.parametrize("container", [list, tuple], ids=["list", "tuple"])
@pytest.mark.parametrize(
    "fields",
    [
        ["session={live}", "theme=dark"],
        ["theme=dark", "session={live}"],
        ["a=1", "session={live}", "b=2"],
        ["session=garbage", "session={live}"],
        ["session={live}", "session={other}"],
    ],
    ids=["first-crumb", "last-crumb", "middle-crumb", "garbage-first", "two-ids"],
)
def test_asgi_reads_every_cookie_field(asgi_app, store, count_queries, container, fields) -> None:
    # HTTP/2 sends cookie crumbs as separate fields (RFC 9113 §8.2.3); a server hands
    # them over as they came, in a list (uvicorn) or a tuple.
    live = stored(store, n=1)
    other = stored(store, n=2)
    headers = [("cookie", f.format(live=live, other=other)) for f in fields]
    with count_queries(store) as q:
        reply = asgi_call(asgi_app, "/read", headers=headers, container=container)
    assert reply.status == 200 and reply.json == {"n": 1, "new": False}
    assert q.count == 1


def test_asgi_cookie_fields_are_joined_with_semicolons_not_split_on_commas(asgi_app, store) -> None:
    live = stored(store, n=1)
    attacker = stored(store, n=2)
    headers = [("cookie", f"pref=x,session={attacker}"), ("cookie", f"session={live}")]
    assert asgi_call(asgi_app, "/read", headers=headers).json == {"n": 1, "new": False}
    headers = [("cookie", "pref=x"), ("cookie", f",session={attacker}")]
    assert asgi_call(asgi_app, "/read", headers=headers).json == {"n": None, "new": True}


def test_falcon_testing_cookie_fields_fall_back_to_falcons_header(store) -> None:
    # falcon.testing passes scope["headers"] as a one-shot iterator that Falcon has
    # consumed: the middleware then reads Falcon's own Cookie header (its last field).
    client = FalconFront(store, asgi=True)
    live = stored(store, n=1)
    result = client.client.simulate_get(
        "/read", headers=[("Cookie", "theme=dark"), ("Cookie", f"session={live}")]
    )
    assert result.json == {"n": 1, "new": False}


@pytest.mark.parametrize("asgi", [True, False], ids=["falcon-asgi", "falcon-wsgi"])
def test_the_client_address_is_left_to_falcon(store, asgi) -> None:
    # Under falcon.testing scope["client"] is a one-shot iterator: reading it would
    # break Falcon's own req.remote_addr.
    client = FalconFront(store, asgi=asgi)

    def address(req: Any, resp: Any) -> None:
        resp.media = {"n": req.context.session.get("n"), "addr": req.remote_addr}

    client.native_route("/addr", address)
    live = stored(store, n=1)
    for cookie in (None, f"session={live}", f'session="{live}"'):
        headers = {"Cookie": cookie} if cookie else {}
        result = client.client.simulate_get("/addr", headers=headers, remote_addr="10.1.2.3")
        assert result.status_code == 200 and result.json["addr"] == "10.1.2.3"
    assert result.json["n"] == 1
    if asgi:
        reply = asgi_call(client.wire, "/addr", headers=[("cookie", f"session={live}")])
        assert reply.json == {"n": 1, "addr": "203.0.113.7"}
