"""Bottle and Falcon routes reading the session through the adapters, against the same
route doing the floor's raw read by hand. Driven through WSGI, without a server."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from typing import Any

from storedsession import SessionStore

from .floor import Floor


def _environ(cookie: str) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/r",
        "QUERY_STRING": "",
        "SERVER_NAME": "bench",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "HTTP_COOKIE": f"session={cookie}",
    }


def _caller(app: Any, next_id: Callable[[], str]) -> Callable[[], None]:
    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        if not status.startswith("200"):
            raise RuntimeError(status)

    def call() -> None:
        body = b"".join(app(_environ(next_id()), start_response))
        assert body == b"1234", body

    return call


def _bottle(store: SessionStore, floor: Floor) -> tuple[Any, Any]:
    import bottle

    from storedsession.plugins.bottle import StoredSessionPlugin

    lib = bottle.Bottle()
    lib.install(StoredSessionPlugin(store))

    @lib.route("/r")
    def read(session: Any) -> str:
        return str(session["user_id"])

    raw = bottle.Bottle()

    @raw.route("/r")
    def read_by_hand() -> str:
        found = floor.read(bottle.request.get_cookie("session"))
        assert found is not None
        bottle.response.set_header("Vary", "Cookie")
        return str(found[1]["user_id"])

    return lib, raw


def _falcon(store: SessionStore, floor: Floor) -> tuple[Any, Any]:
    import falcon

    from storedsession.plugins.falcon import StoredSessionMiddleware

    class Lib:
        def on_get(self, req: Any, resp: Any) -> None:
            resp.text = str(req.context.session["user_id"])

    class ByHand:
        def on_get(self, req: Any, resp: Any) -> None:
            values = req.get_cookie_values("session")
            found = floor.read(values[0])
            assert found is not None
            resp.vary = ("Cookie",)
            resp.text = str(found[1]["user_id"])

    lib = falcon.App(middleware=[StoredSessionMiddleware(store)])
    lib.add_route("/r", Lib())
    raw = falcon.App()
    raw.add_route("/r", ByHand())
    return lib, raw


def contenders(
    store: SessionStore, floor: Floor, next_id: Callable[[], str]
) -> tuple[dict[str, Callable[[], None]], list[tuple[str, str]]]:
    """Return the framework contenders and their pairs (library, floor by hand)."""
    out: dict[str, Callable[[], None]] = {}
    pairs = []
    for name, build in (("bottle", _bottle), ("falcon", _falcon)):
        lib, raw = build(store, floor)
        out[f"{name} read (plugin)"] = _caller(lib, next_id)
        out[f"{name} read (floor by hand)"] = _caller(raw, next_id)
        pairs.append((f"{name} read (plugin)", f"{name} read (floor by hand)"))
    return out, pairs
