"""Python calls per adapter request, counted by cProfile: a figure a loaded machine cannot blur.

    python -m bench.calls [--requests 1000]

Every front (Bottle, Falcon WSGI, Falcon ASGI) on the default path (a store built from a
``sqlite:///`` URL in a temporary directory, nothing held), driven without a server, for
each kind of request: ``read`` (a valid cookie inside the touch interval: no
``Set-Cookie``), ``write`` (one key changed), ``new`` (no cookie, the route reads the
session) and ``new+write`` (no cookie, the route writes). The count is every call
cProfile sees per request, the framework's and this harness's (a few per request)
included, so compare it only with itself. Under ASGI the worker thread's calls count too
(one worker, profiled from inside it).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import cProfile
import io
import pstats
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import bottle
import falcon
import falcon.asgi

from storedsession import SessionStore, generate_key
from storedsession.plugins.bottle import StoredSessionPlugin
from storedsession.plugins.falcon import StoredSessionMiddleware

#: Path, whether the request carries the stored session's cookie, whether it must set one.
KINDS = {
    "read": ("/r", True, False),
    "write": ("/w", True, True),
    "new": ("/r", False, False),
    "new+write": ("/w", False, True),
}

Call = Callable[[], None]


def _read(session: Any) -> str:
    return str(session.get("user_id"))


def _write(session: Any) -> str:
    session["counter"] = session.get("counter", 0) + 1
    return "1234"


def bottle_app(store: SessionStore) -> Any:
    app = bottle.Bottle()
    app.install(StoredSessionPlugin(store))
    app.route("/r", callback=lambda session: _read(session))
    app.route("/w", callback=lambda session: _write(session))
    return app


class _Falcon:
    def __init__(self, route: Callable[[Any], str]) -> None:
        self.route = route

    def on_get(self, req: Any, resp: Any) -> None:
        resp.text = self.route(req.context.session)


class _FalconAsync(_Falcon):
    async def on_get(self, req: Any, resp: Any) -> None:  # type: ignore[override]
        resp.text = self.route(req.context.session)


def falcon_app(store: SessionStore) -> Any:
    app = falcon.App(middleware=[StoredSessionMiddleware(store)])
    app.add_route("/r", _Falcon(_read))
    app.add_route("/w", _Falcon(_write))
    return app


def asgi_app(store: SessionStore) -> Any:
    app = falcon.asgi.App(middleware=[StoredSessionMiddleware(store)])
    app.add_route("/r", _FalconAsync(_read))
    app.add_route("/w", _FalconAsync(_write))
    return app


def wsgi_caller(app: Any, path: str, cookie: str | None, sets_cookie: bool) -> Call:
    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        assert status.startswith("200"), status
        assert any(k.lower() == "set-cookie" for k, _ in headers) == sets_cookie, headers

    def call() -> None:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "bench",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if cookie:
            environ["HTTP_COOKIE"] = f"session={cookie}"
        b"".join(app(environ, start_response))

    return call


def asgi_caller(app: Any, path: str, cookie: str | None, sets_cookie: bool) -> Call:
    headers = [(b"host", b"bench")]
    if cookie:
        headers.append((b"cookie", f"session={cookie}".encode()))
    loop = asyncio.new_event_loop()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def one() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 5000),
            "server": ("bench", 80),
        }
        sent.clear()
        await app(scope, receive, send)
        assert sent[0]["status"] == 200, sent
        got = any(k == b"set-cookie" for k, _ in sent[0]["headers"])
        assert got == sets_cookie, sent

    return lambda: loop.run_until_complete(one())


def calls_per_request(
    call: Call, requests: int, worker: concurrent.futures.ThreadPoolExecutor | None
) -> float:
    """Count every call cProfile sees over ``requests`` calls, the worker thread's too."""
    in_worker = cProfile.Profile()
    if worker is not None:
        worker.submit(in_worker.enable).result()
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(requests):
        call()
    profile.disable()
    total = pstats.Stats(profile).total_calls  # type: ignore[attr-defined]
    if worker is not None:
        worker.submit(in_worker.disable).result()
        total += pstats.Stats(in_worker).total_calls  # type: ignore[attr-defined]
    return float(total) / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # One worker thread, so that its profile can be switched on and off from here.
        store = SessionStore(f"sqlite:///{tmp}/calls.db", keys=[generate_key()], async_threads=1)
        store.create_table()
        session = store.load(None)
        session.update({"user_id": 1234, "counter": 0, "pad": "p" * 900})
        store.save(session)
        fronts = {"bottle": bottle_app, "falcon-wsgi": falcon_app, "falcon-asgi": asgi_app}
        print(f"{'front':12} {'request':10} {'calls':>6}")
        for front, build in fronts.items():
            for kind, (path, with_cookie, sets_cookie) in KINDS.items():
                cookie = session.id if with_cookie else None
                worker = None
                if front == "falcon-asgi":
                    call = asgi_caller(build(store), path, cookie, sets_cookie)
                    worker = store._workers._pool()
                else:
                    call = wsgi_caller(build(store), path, cookie, sets_cookie)
                for _ in range(50):  # warm: the thread's connection, caches
                    call()
                count = calls_per_request(call, args.requests, worker)
                print(f"{front:12} {kind:10} {count:6.0f}")
        store.drop_table()
        store.close()


if __name__ == "__main__":
    main()
