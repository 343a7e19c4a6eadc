"""The three web fronts of the adapter contract: Bottle, Falcon WSGI and Falcon ASGI.

Each front is one app with the adapter installed and the same four routes (``/count``,
``/read``, ``/untouched``, ``/logout``). A test adds routes written once for every front:
a handler takes a :class:`Web` (the session and the few response operations the contract
needs) and returns a dict (sent as JSON), a string or None. Requests go through the
frameworks' own test paths (``wire.wsgi_call`` for Bottle, ``falcon.testing`` for Falcon)
and come back as a ``wire.Reply``, header lines exactly as a client receives them. A
front's ``app`` is the framework's own app, for a real server to serve (test_load.py).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

import bottle
import falcon
import falcon.asgi
import falcon.testing

from storedsession import Session, SessionStore
from storedsession.plugins.bottle import StoredSessionPlugin
from storedsession.plugins.falcon import StoredSessionMiddleware

from .wire import Reply, wsgi_call

FRONTS = ("bottle", "falcon-wsgi", "falcon-asgi")


class Web(Protocol):
    """What a contract route gets, whatever the framework."""

    @property
    def session(self) -> Session: ...

    def query(self, name: str) -> str | None:
        """The query parameter ``name`` of the request, or None."""
        ...

    def set_header(self, name: str, value: str) -> None: ...

    def add_header(self, name: str, value: str) -> None: ...

    def set_cookie(self, name: str, value: str) -> None: ...

    def set_status(self, status: int) -> None: ...

    def redirect(self, location: str, headers: dict[str, str] | None = None) -> NoReturn: ...

    def abort(self, status: int) -> NoReturn: ...


Handler = Callable[[Web], Any]


def count(web: Web) -> Any:
    web.session["n"] = web.session.get("n", 0) + 1
    return {"n": web.session["n"]}


def read(web: Web) -> Any:
    return {"n": web.session.get("n"), "new": web.session.new}


def untouched(web: Web) -> Any:
    return "hello"


def logout(web: Web) -> Any:
    web.session.invalidate()
    return "bye"


ROUTES: dict[str, Handler] = {
    "/count": count,
    "/read": read,
    "/untouched": untouched,
    "/logout": logout,
}


class Front(Protocol):
    """One app with the adapter, and a client for it."""

    kind: str
    store: SessionStore
    #: The status and the Location prefix of ``Web.redirect`` in this framework.
    redirect_status: int
    redirect_base: str
    #: Whether a well-formed cookie's session is loaded before routing (Falcon ASGI
    #: loads it in a thread before the responder runs, so it costs its query even
    #: when the responder never uses the session).
    preloads: bool
    #: The framework's app (Bottle, or Falcon's of the front's protocol).
    app: Any

    def new(self, store: SessionStore, **options: Any) -> Front:
        """Build a front of the same kind on ``store`` with adapter ``options``."""
        ...

    def route(self, path: str, handler: Handler, *, blocking: bool = False) -> None:
        """Serve ``handler`` at ``path`` (GET), in place of a route already there.

        ``blocking``: the handler does blocking work of its own (an admin connection, a
        socket), which Falcon ASGI runs in a thread, off the event loop.
        """
        ...

    def answer_crashes_with_500(self) -> None:
        """Turn an exception in a handler into a 500 reply instead of raising it."""
        ...

    def get(
        self,
        path: str = "/",
        *,
        cookie: str | None = None,
        https: bool = False,
        headers: dict[str, str] | None = None,
        address: str | None = None,
    ) -> Reply:
        """Send one GET (``path`` may carry a query) from ``address`` (the connection's
        own; the framework's test default when None) and return what the client receives."""
        ...

    def get_in_own_loop(self, path: str, *, cookie: str | None = None) -> Reply:
        """Like :meth:`get`, safe to call from another thread at the same time."""
        ...


def build(kind: str, store: SessionStore, **options: Any) -> Front:
    """The front called ``kind`` (one of :data:`FRONTS`) on ``store``."""
    if kind == "bottle":
        return BottleFront(store, **options)
    return FalconFront(store, asgi=kind == "falcon-asgi", **options)


# -- Bottle ---------------------------------------------------------------------------


class BottleWeb:
    def __init__(self, session: Session) -> None:
        self.session = session

    def query(self, name: str) -> str | None:
        value: str | None = bottle.request.query.getunicode(name)
        return value

    def set_header(self, name: str, value: str) -> None:
        bottle.response.set_header(name, value)

    def add_header(self, name: str, value: str) -> None:
        bottle.response.add_header(name, value)

    def set_cookie(self, name: str, value: str) -> None:
        bottle.response.set_cookie(name, value)

    def set_status(self, status: int) -> None:
        bottle.response.status = status

    def redirect(self, location: str, headers: dict[str, str] | None = None) -> NoReturn:
        for name, value in (headers or {}).items():
            bottle.response.set_header(name, value)  # bottle.redirect copies them
        bottle.redirect(location)
        raise AssertionError("bottle.redirect returned")

    def abort(self, status: int) -> NoReturn:
        bottle.abort(status, "aborted")
        raise AssertionError("bottle.abort returned")


class BottleFront:
    """A fresh Bottle app (``catchall`` off) with the plugin, called through WSGI."""

    kind = "bottle"
    redirect_status = 303  # bottle.redirect under HTTP/1.1
    redirect_base = "http://example.com"  # bottle makes Location absolute
    preloads = False

    def __init__(self, store: SessionStore, **options: Any) -> None:
        self.store = store
        self.plugin = StoredSessionPlugin(store, **options)
        self.app = bottle.Bottle()
        self.app.config["catchall"] = False
        self.app.install(self.plugin)
        for path, handler in ROUTES.items():
            self.route(path, handler)

    def new(self, store: SessionStore, **options: Any) -> BottleFront:
        return BottleFront(store, **options)

    def route(self, path: str, handler: Handler, *, blocking: bool = False) -> None:
        def callback(session: Session) -> Any:
            return handler(BottleWeb(session))

        self.app.route(path)(callback)

    def answer_crashes_with_500(self) -> None:
        self.app.config["catchall"] = True

    def get(
        self,
        path: str = "/",
        *,
        cookie: str | None = None,
        https: bool = False,
        headers: dict[str, str] | None = None,
        address: str | None = None,
    ) -> Reply:
        return wsgi_call(
            self.app, path, cookie=cookie, https=https, headers=headers, remote_addr=address
        )

    def get_in_own_loop(self, path: str, *, cookie: str | None = None) -> Reply:
        return self.get(path, cookie=cookie)


# -- Falcon ---------------------------------------------------------------------------


class FalconWeb:
    def __init__(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.req = req
        self.resp = resp

    @property
    def session(self) -> Session:
        session: Session = self.req.context.session
        return session

    def query(self, name: str) -> str | None:
        value: str | None = self.req.get_param(name)
        return value

    def set_header(self, name: str, value: str) -> None:
        self.resp.set_header(name, value)

    def add_header(self, name: str, value: str) -> None:
        self.resp.append_header(name, value)

    def set_cookie(self, name: str, value: str) -> None:
        self.resp.set_cookie(name, value, secure=False)

    def set_status(self, status: int) -> None:
        self.resp.status = status

    def redirect(self, location: str, headers: dict[str, str] | None = None) -> NoReturn:
        raise falcon.HTTPFound(location, headers=headers)

    def abort(self, status: int) -> NoReturn:
        raise falcon.HTTPError(status)


def _spy(app: Any, asgi: bool, seen: threading.local) -> Any:
    """Wrap ``app`` to record the raw response header lines, as a client gets them
    (falcon.testing's Result folds repeated headers)."""
    if asgi:

        async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
            async def capture(event: dict[str, Any]) -> None:
                if event["type"] == "http.response.start":
                    seen.headers = [
                        (k.decode("latin-1"), v.decode("latin-1")) for k, v in event["headers"]
                    ]
                await send(event)

            await app(scope, receive, capture)

        return asgi_app

    def wsgi_app(environ: Any, start_response: Any) -> Any:
        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            seen.headers = list(headers)
            return start_response(status, headers, exc_info)

        return app(environ, capture)

    return wsgi_app


def _apply(result: Any, resp: falcon.Response) -> None:
    if isinstance(result, str):
        resp.text = result
    elif result is not None:
        resp.media = result


class FalconFront:
    """A Falcon app of either protocol with the middleware, and a TestClient for it."""

    redirect_status = 302  # falcon.HTTPFound
    redirect_base = ""

    def __init__(self, store: SessionStore, *, asgi: bool, **options: Any) -> None:
        self.asgi = asgi
        self.kind = "falcon-asgi" if asgi else "falcon-wsgi"
        self.preloads = asgi
        self.store = store
        self.app = (falcon.asgi.App if asgi else falcon.App)(
            middleware=[StoredSessionMiddleware(store, **options)]
        )
        self._seen = threading.local()
        self.wire = _spy(self.app, asgi, self._seen)
        self.client = falcon.testing.TestClient(self.wire)
        for path, handler in ROUTES.items():
            self.route(path, handler)

    def new(self, store: SessionStore, **options: Any) -> FalconFront:
        return FalconFront(store, asgi=self.asgi, **options)

    def route(self, path: str, handler: Handler, *, blocking: bool = False) -> None:
        def responder(req: falcon.Request, resp: falcon.Response) -> None:
            _apply(handler(FalconWeb(req, resp)), resp)

        self.native_route(path, responder, blocking=blocking)

    def native_route(
        self,
        path: str,
        responder: Callable[[falcon.Request, falcon.Response], None],
        *,
        blocking: bool = False,
        **attributes: Any,
    ) -> None:
        """Serve a Falcon ``responder(req, resp)`` at ``path`` from a resource of this
        app's protocol, with resource ``attributes`` (such as ``storedsession=False``)."""
        if self.asgi and blocking:

            async def on_get(resource: Any, req: Any, resp: Any) -> None:
                await asyncio.to_thread(responder, req, resp)
        elif self.asgi:

            async def on_get(resource: Any, req: Any, resp: Any) -> None:  # type: ignore[misc]
                responder(req, resp)
        else:

            def on_get(resource: Any, req: Any, resp: Any) -> None:  # type: ignore[misc]
                responder(req, resp)

        self.app.add_route(path, type("Resource", (), {"on_get": on_get, **attributes})())

    def answer_crashes_with_500(self) -> None:
        """Falcon always does (its default error handler)."""

    def _options(
        self,
        path: str,
        cookie: str | None,
        https: bool,
        headers: dict[str, str] | None,
        address: str | None = None,
    ) -> dict[str, Any]:
        headers = dict(headers or {})
        if cookie is not None:
            headers["Cookie"] = cookie
        options = {"path": path, "headers": headers, "protocol": "https" if https else "http"}
        if address is not None:
            options["remote_addr"] = address
        return options

    def get(
        self,
        path: str = "/",
        *,
        cookie: str | None = None,
        https: bool = False,
        headers: dict[str, str] | None = None,
        address: str | None = None,
    ) -> Reply:
        options = self._options(path, cookie, https, headers, address)
        result = self.client.simulate_get(**options)
        return Reply(result.status_code, self._seen.headers, result.content)

    def get_in_own_loop(self, path: str, *, cookie: str | None = None) -> Reply:
        """See :meth:`Front.get_in_own_loop`."""
        # TestClient runs every ASGI request on one shared loop.
        if not self.asgi:
            return self.get(path, cookie=cookie)

        async def run() -> falcon.testing.Result:
            async with falcon.testing.ASGIConductor(self.wire) as conductor:
                return await conductor.simulate_get(**self._options(path, cookie, False, None))

        result = asyncio.run(run())
        return Reply(result.status_code, self._seen.headers, result.content)
