"""The apps the end-to-end benchmark serves: the same routes, four ways.

The server loads one through a factory, ``bench.e2e_apps:wsgi()`` (gunicorn) or
``bench.e2e_apps:asgi`` (``uvicorn --factory``), configured by the environment:

- ``E2E_SERVER``: ``bottle``, ``falcon-wsgi`` or ``falcon-asgi``;
- ``E2E_VARIANT``: ``bare`` (no session at all), ``floor`` (the floor's raw read or write
  by hand over one persistent connection per worker), ``storedsession`` (as the README
  shows it, from a plain URL, keys from ``STOREDSESSION_KEYS``) or ``beaker`` (Beaker's
  ``SessionMiddleware`` with ``ext:database``, WSGI only);
- ``E2E_URL``: the database, as a storedsession URL; ``E2E_TABLE``: the table;
- ``E2E_FLOOR_KEY``: the floor's AES key, hex (the benchmark sealed its rows with it);
- ``E2E_ASYNC_THREADS``: the store's ``async_threads`` under ASGI, when set.

Routes: ``GET /read`` returns ``session["user_id"]``; ``GET /write`` increments
``session["counter"]``; ``GET /new`` (storedsession, Beaker) starts a session holding the
benchmark's 1 KB payload; ``GET /ping`` touches nothing. A missing session fails the
request (``KeyError``: a 500), so a lost cookie shows as an error, never as speed.
"""

from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import floor as floor_module

COOKIE = "session"
BODY = "1234"  # what the bare route answers: the length of a user id's reply


def payload(size: int = 1024) -> dict[str, Any]:
    """The benchmark's session: ``bench.__main__.payload`` (imported late: it pulls in more)."""
    from .__main__ import payload as shaped

    return shaped(size)


def sqlalchemy_url(url: str) -> str:
    """Return the SQLAlchemy URL of a storedsession URL, on the same driver."""
    parts = urlsplit(url)
    kind = parts.scheme.split("+")[0]
    if kind == "sqlite":
        return f"sqlite:///{parts.path[1:]}"
    driver = "mysql+pymysql" if kind == "mysql" else "postgresql+psycopg2"
    return urlunsplit((driver, parts.netloc, parts.path, parts.query, ""))


def beaker_options(url: str, table: str) -> dict[str, Any]:
    """Beaker's settings as Bottle's own recipe gives them, on ``ext:database``."""
    return {
        "session.type": "ext:database",
        "session.url": sqlalchemy_url(url),
        "session.table_name": table,
        "session.key": COOKIE,
        "session.auto": True,  # Bottle's recipe: save the session after every request
        "session.httponly": True,
    }


class WorkerFloor:
    """The floor's store for one worker: its connection opened on first use, in the worker.

    It attaches to the table the benchmark created and filled (``Floor`` itself drops and
    creates it), and runs the floor's own ``read`` and ``write``.
    """

    def __init__(self, url: str, table: str, key: bytes) -> None:
        self.url, self.table, self.key = url, table, key
        self.floor: floor_module.Floor | None = None
        self.pid = 0
        self.counter = 0

    def get(self) -> floor_module.Floor:
        if self.floor is None or self.pid != os.getpid():
            floor = floor_module.Floor.__new__(floor_module.Floor)
            floor.conn, p = floor_module.connect(self.url)
            floor.table, floor.cursor = self.table, floor.conn.cursor()
            floor.aead = AESGCM(self.key)
            # The statements of Floor.__init__, which only a fresh table lets us run.
            floor.select = f"SELECT payload, expires_at, version FROM {self.table} WHERE sid = {p}"
            floor.update = (
                f"UPDATE {self.table} SET payload = {p}, expires_at = {p}, "
                f"version = version + 1 WHERE sid = {p} AND version = {p}"
            )
            self.floor, self.pid = floor, os.getpid()
        return self.floor

    def read(self, public_id: str | None) -> str:
        found = self.get().read(public_id or "")
        if found is None:
            raise KeyError("no such session")
        return str(found[1]["user_id"])

    def write(self, public_id: str | None) -> str:
        self.counter += 1
        self.get().write(public_id or "", "counter", self.counter)
        return str(self.counter)


def floor_cookie(public_id: str) -> str:
    """The ``Set-Cookie`` a session store sends after a write, for the floor's write route."""
    max_age = floor_module.IDLE_MS // 1000
    expires = formatdate(time.time() + max_age, usegmt=True)
    return (
        f"{COOKIE}={public_id}; Path=/; Max-Age={max_age}; Expires={expires}; HttpOnly; "
        "SameSite=Lax"
    )


def _settings() -> tuple[str, str, str, str]:
    env = os.environ
    return env["E2E_SERVER"], env["E2E_VARIANT"], env.get("E2E_URL", ""), env.get("E2E_TABLE", "")


def _floor() -> WorkerFloor:
    _, _, url, table = _settings()
    return WorkerFloor(url, table, bytes.fromhex(os.environ["E2E_FLOOR_KEY"]))


def wsgi() -> Any:
    """Build the WSGI app the environment names."""
    server, variant, url, table = _settings()
    if server == "bottle":
        app = _bottle(variant, url, table)
    elif server == "falcon-wsgi":
        app = _falcon_wsgi(variant, url, table)
    else:
        raise SystemExit(f"E2E_SERVER={server!r} is not a WSGI server kind")
    if variant == "beaker":
        from beaker.middleware import SessionMiddleware

        app = SessionMiddleware(app, beaker_options(url, table))
    return app


def _bottle(variant: str, url: str, table: str) -> Any:
    import bottle

    app = bottle.Bottle()
    app.route("/ping")(lambda: "ok")
    if variant == "bare":
        app.route("/read")(lambda: BODY)
        app.route("/write")(lambda: BODY)
    elif variant == "floor":
        floor = _floor()

        @app.route("/read")
        def floor_read() -> str:
            bottle.response.set_header("Vary", "Cookie")
            return floor.read(bottle.request.get_cookie(COOKIE))

        @app.route("/write")
        def floor_write() -> str:
            public_id = bottle.request.get_cookie(COOKIE)
            body = floor.write(public_id)
            bottle.response.set_header("Vary", "Cookie")
            bottle.response.add_header("Set-Cookie", floor_cookie(public_id))
            return body

    elif variant == "storedsession":
        from storedsession.plugins.bottle import StoredSessionPlugin

        app.install(StoredSessionPlugin(url, table_name=table))

        @app.route("/new")
        def new(session: Any) -> str:
            session.update(payload())
            return "new"

        @app.route("/read")
        def read(session: Any) -> str:
            return str(session["user_id"])

        @app.route("/write")
        def write(session: Any) -> str:
            session["counter"] += 1
            return str(session["counter"])

    elif variant == "beaker":

        def beaker() -> Any:
            return bottle.request.environ["beaker.session"]

        @app.route("/new")
        def beaker_new() -> str:
            beaker().update(payload())
            return "new"

        @app.route("/read")
        def beaker_read() -> str:
            return str(beaker()["user_id"])

        @app.route("/write")
        def beaker_write() -> str:
            session = beaker()
            session["counter"] += 1
            return str(session["counter"])

    else:
        raise SystemExit(f"E2E_VARIANT={variant!r} is not a variant")
    return app


def _falcon_wsgi(variant: str, url: str, table: str) -> Any:
    import falcon

    middleware: list[Any] = []
    routes: dict[str, Any] = {}
    if variant == "bare":
        routes = {"/read": _Constant(), "/write": _Constant()}
    elif variant == "floor":
        floor = _floor()
        routes = {"/read": _FloorRead(floor), "/write": _FloorWrite(floor)}
    elif variant == "storedsession":
        from storedsession.plugins.falcon import StoredSessionMiddleware

        middleware = [StoredSessionMiddleware(url, table_name=table)]
        routes = {"/new": _New("context"), "/read": _Read("context"), "/write": _Write("context")}
    elif variant == "beaker":
        routes = {"/new": _New("beaker"), "/read": _Read("beaker"), "/write": _Write("beaker")}
    else:
        raise SystemExit(f"E2E_VARIANT={variant!r} is not a variant")
    app = falcon.App(middleware=middleware)
    app.add_route("/ping", _Ping())
    for path, resource in routes.items():
        app.add_route(path, resource)
    return app


def _session(req: Any, where: str) -> Any:
    return req.context.session if where == "context" else req.env["beaker.session"]


class _Ping:
    storedsession = False

    def on_get(self, req: Any, resp: Any) -> None:
        resp.text = "ok"


class _AsyncPing:
    storedsession = False

    async def on_get(self, req: Any, resp: Any) -> None:
        resp.text = "ok"


class _Constant:
    def on_get(self, req: Any, resp: Any) -> None:
        resp.text = BODY


class _New:
    def __init__(self, where: str) -> None:
        self.where = where

    def on_get(self, req: Any, resp: Any) -> None:
        _session(req, self.where).update(payload())
        resp.text = "new"


class _Read:
    def __init__(self, where: str) -> None:
        self.where = where

    def on_get(self, req: Any, resp: Any) -> None:
        resp.text = str(_session(req, self.where)["user_id"])


class _Write:
    def __init__(self, where: str) -> None:
        self.where = where

    def on_get(self, req: Any, resp: Any) -> None:
        session = _session(req, self.where)
        session["counter"] += 1
        resp.text = str(session["counter"])


class _FloorRead:
    def __init__(self, floor: WorkerFloor) -> None:
        self.floor = floor

    def on_get(self, req: Any, resp: Any) -> None:
        values = req.get_cookie_values(COOKIE)
        resp.vary = ("Cookie",)
        resp.text = self.floor.read(values[0] if values else None)


class _FloorWrite:
    def __init__(self, floor: WorkerFloor) -> None:
        self.floor = floor

    def on_get(self, req: Any, resp: Any) -> None:
        values = req.get_cookie_values(COOKIE)
        public_id = values[0] if values else None
        resp.text = self.floor.write(public_id)
        resp.vary = ("Cookie",)
        resp.append_header("Set-Cookie", floor_cookie(public_id or ""))


def asgi() -> Any:
    """Build the ASGI app the environment names (Falcon's; Beaker has no ASGI form)."""
    import falcon.asgi

    server, variant, url, table = _settings()
    if server != "falcon-asgi":
        raise SystemExit(f"E2E_SERVER={server!r} is not an ASGI server kind")
    middleware: list[Any] = []
    routes: dict[str, Any] = {}
    if variant == "bare":
        routes = {"/read": _AsyncConstant(), "/write": _AsyncConstant()}
    elif variant == "floor":
        floor = _AsyncFloor(_floor())
        routes = {"/read": _AsyncFloorRead(floor), "/write": _AsyncFloorWrite(floor)}
    elif variant == "storedsession":
        from storedsession.plugins.falcon import StoredSessionMiddleware

        threads = os.environ.get("E2E_ASYNC_THREADS")
        options = {} if threads is None else {"async_threads": int(threads)}
        middleware = [StoredSessionMiddleware(url, table_name=table, **options)]
        routes = {"/new": _AsyncNew(), "/read": _AsyncRead(), "/write": _AsyncWrite()}
    else:
        raise SystemExit(f"E2E_VARIANT={variant!r} has no ASGI form")
    app = falcon.asgi.App(middleware=middleware)
    app.add_route("/ping", _AsyncPing())
    for path, resource in routes.items():
        app.add_route(path, resource)
    return app


class _AsyncFloor:
    """The floor off the event loop: its one connection lives in one thread of its own.

    The middleware offloads each call to a worker thread; the floor does the same, on a
    single thread, since one connection (an SQLite handle above all) belongs to one thread.
    """

    def __init__(self, floor: WorkerFloor) -> None:
        self.floor = floor
        self.executor: ThreadPoolExecutor | None = None

    async def run(self, method: Any, public_id: str | None) -> str:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="floor")
        loop = asyncio.get_running_loop()
        return str(await loop.run_in_executor(self.executor, method, public_id))


class _AsyncConstant:
    async def on_get(self, req: Any, resp: Any) -> None:
        resp.text = BODY


class _AsyncNew:
    async def on_get(self, req: Any, resp: Any) -> None:
        req.context.session.update(payload())
        resp.text = "new"


class _AsyncRead:
    async def on_get(self, req: Any, resp: Any) -> None:
        resp.text = str(req.context.session["user_id"])


class _AsyncWrite:
    async def on_get(self, req: Any, resp: Any) -> None:
        session = req.context.session
        session["counter"] += 1
        resp.text = str(session["counter"])


class _AsyncFloorRead:
    def __init__(self, floor: _AsyncFloor) -> None:
        self.floor = floor

    async def on_get(self, req: Any, resp: Any) -> None:
        values = req.get_cookie_values(COOKIE)
        resp.vary = ("Cookie",)
        resp.text = await self.floor.run(self.floor.floor.read, values[0] if values else None)


class _AsyncFloorWrite:
    def __init__(self, floor: _AsyncFloor) -> None:
        self.floor = floor

    async def on_get(self, req: Any, resp: Any) -> None:
        values = req.get_cookie_values(COOKIE)
        public_id = values[0] if values else None
        resp.text = await self.floor.run(self.floor.floor.write, public_id)
        resp.vary = ("Cookie",)
        resp.append_header("Set-Cookie", floor_cookie(public_id or ""))


def uvicorn_main() -> None:
    """Run uvicorn's command line with its pre-bound socket marked as TCP.

    With ``--workers``, uvicorn binds the listening socket itself with ``proto`` 0;
    accepted sockets inherit it, and asyncio sets ``TCP_NODELAY`` only on sockets whose
    ``proto`` is ``IPPROTO_TCP``. So on Linux every keep-alive request after the first
    waits about 40 ms for the client's delayed ACK, whatever the app does (uvicorn issue
    3149, open; measured here on one connection: 23 requests/s, 2,700 with the fix). This
    applies the upstream fix, re-reading the socket's protocol from its descriptor, so
    that the benchmark measures the apps, not a kernel timer.
    """
    import socket

    import uvicorn.config
    import uvicorn.main

    bind = uvicorn.config.Config.bind_socket

    def bind_socket(self: uvicorn.config.Config) -> socket.socket:
        sock = bind(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            return socket.socket(fileno=sock.detach())  # Linux reads proto 6 from the fd
        return sock

    uvicorn.config.Config.bind_socket = bind_socket  # type: ignore[method-assign]
    uvicorn.main.main()


if __name__ == "__main__":
    uvicorn_main()
