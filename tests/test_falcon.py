"""What only the Falcon middleware has: ASGI's preload in a thread, its save on the event
loop where it runs no statement, and the resource opt-out, under both protocols. The
contract every adapter keeps is in test_adapter_contract.py.
"""

from __future__ import annotations

import threading

import falcon
import pytest

from storedsession import SessionStore

from .fronts import FalconFront
from .support import CountingWorkers


@pytest.fixture(params=[True, False], ids=["asgi", "wsgi"])
def client(request: pytest.FixtureRequest, store: SessionStore) -> FalconFront:
    return FalconFront(store, asgi=request.param)


def untouched(req: falcon.Request, resp: falcon.Response) -> None:
    resp.text = "hello"


def test_asgi_never_queries_on_the_event_loop(store) -> None:
    client = FalconFront(store, asgi=True)
    loop_threads: set[int] = set()
    query_threads: set[int] = set()

    def note_loop(req: falcon.Request, resp: falcon.Response) -> None:
        loop_threads.add(threading.get_ident())
        session = req.context.session
        session["n"] = session.get("n", 0) + 1
        resp.media = {"n": session["n"]}

    client.native_route("/note", note_loop)
    store.database.query_hooks.append(lambda event: query_threads.add(threading.get_ident()))
    pair = client.get("/note").session_pair()
    client.get("/note", cookie=pair)
    client.get("/logout", cookie=pair)
    assert loop_threads and query_threads and not loop_threads & query_threads


def test_an_asgi_read_inside_the_touch_interval_saves_on_the_event_loop(
    store, clock, count_queries
) -> None:
    front = FalconFront(store, asgi=True)
    pair = front.get("/count").session_pair()
    loop_thread = threading.get_ident()  # get_in_own_loop runs its event loop here
    query_threads: list[int] = []
    store.database.query_hooks.append(lambda event: query_threads.append(threading.get_ident()))
    clock.advance(30)
    store._workers = worker = CountingWorkers()
    with count_queries(store) as q:
        reply = front.get_in_own_loop("/read", cookie=pair)
    assert reply.json == {"n": 1, "new": False}
    assert reply.set_cookies == [] and q.count == 1, q.statements
    assert worker.jobs == 1  # the preload's read: the save ran on the loop, querying nothing
    assert len(query_threads) == 1 and loop_thread not in query_threads

    clock.advance(31)  # past the 60 s touch interval since the write: the touch is due
    store._workers = worker = CountingWorkers()
    with count_queries(store) as q:
        refreshed = front.get_in_own_loop("/read", cookie=pair)
    assert q.count == 2, q.statements  # the read, then the "last seen" update
    assert worker.jobs == 2 and len(query_threads) == 3 and loop_thread not in query_threads
    assert refreshed.session_pair() == pair
    assert refreshed.cookie().max_age == 14 * 86400


def test_a_resource_opts_out(client, store, count_queries) -> None:
    def changes(req: falcon.Request, resp: falcon.Response) -> None:
        req.context.session["ignored"] = True

    client.native_route("/off", untouched, storedsession=False)
    client.native_route("/off-changing", changes, storedsession=False)
    pair = client.get("/count").session_pair()
    with count_queries(store) as q:
        off = client.get("/off", cookie=pair)
    # Under ASGI the session is loaded before routing, so the cookie costs its one query.
    assert q.count == (1 if client.asgi else 0)
    assert off.status == 200 and off.set_cookies == [] and off.header("Vary") is None
    changed = client.get("/off-changing", cookie=pair)
    assert changed.set_cookies == [] and changed.header("Vary") is None
    assert "ignored" not in store.load(pair.partition("=")[2])
