"""The Bottle plugin: ``app.install(StoredSessionPlugin(database))``."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Unpack

import bottle
import peewee

from storedsession.exceptions import StoreUnavailable
from storedsession.store import SessionStore
from storedsession.web import (
    ENVIRON_KEY,
    AdapterOptions,
    RequestSession,
    SessionMiddlewareCore,
    add_vary,
    private_cache_control,
)


def _takes(callback: Callable[..., Any], keyword: str) -> bool:
    # Not route.get_callback_args(): in bottle 0.13.4 it never returns for a closure
    # over a non-callable value. inspect.signature follows functools.wraps instead.
    try:
        parameter = inspect.signature(callback).parameters.get(keyword)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.kind in (
        parameter.POSITIONAL_OR_KEYWORD,
        parameter.KEYWORD_ONLY,
    )


class StoredSessionPlugin:
    """Give Bottle routes an encrypted, database-backed session.

    The session is passed to callbacks that take the ``keyword`` argument and is at
    ``bottle.request.environ["storedsession.session"]`` on every route; it is loaded on
    first use and saved when the callback returns or raises an ``HTTPResponse`` below
    500 (a redirect, ``abort(403)``). Routes opt out with ``skip=`` or the route option
    ``storedsession=False``. ``store_or_database`` is a :class:`SessionStore`, or a
    database or URL to build one from; ``options`` are every adapter's
    (:class:`storedsession.web.AdapterOptions`). A sign-in records the ``User-Agent``
    (``record_user_agent``) and, with ``record_ip``, the WSGI ``REMOTE_ADDR`` or
    ``client_ip(bottle.request)``. ``store`` is the :class:`SessionStore` in use.
    """

    name = "storedsession"
    api = 2

    def __init__(
        self,
        store_or_database: SessionStore | str | peewee.Database,
        *,
        keyword: str = "session",
        **options: Unpack[AdapterOptions],
    ) -> None:
        self.core = SessionMiddlewareCore(
            store_or_database, user_agent_of=_user_agent, address_of=_address, **options
        )
        self.store = self.core.store
        self.keyword = keyword

    def setup(self, app: bottle.Bottle) -> None:
        """Refuse to share the app with another plugin injecting the same keyword."""
        for other in app.plugins:
            if getattr(other, "keyword", None) == self.keyword:
                raise bottle.PluginError(
                    f"Another plugin already passes the keyword {self.keyword!r}; give "
                    "StoredSessionPlugin another keyword=."
                )

    def apply(self, callback: Callable[..., Any], route: bottle.Route) -> Callable[..., Any]:
        """Wrap ``callback`` so that it runs with the request's session."""
        if route.config.get("storedsession", True) is False:
            return callback
        keyword = self.keyword if _takes(route.callback, self.keyword) else None
        core = self.core

        @functools.wraps(callback)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            environ = bottle.request.environ
            request = RequestSession(
                core,
                environ.get("HTTP_COOKIE"),
                environ.get("wsgi.url_scheme") == "https",
                request=bottle.request,
            )
            environ[ENVIRON_KEY] = session = request.session
            if keyword:
                kwargs[keyword] = session
            try:
                out = callback(*args, **kwargs)
            except bottle.HTTPResponse as response:  # raised or aborted: it replaces headers
                _finish(request, response)
                raise
            except StoreUnavailable as exc:  # the session could not be loaded
                request.close()
                raise _unavailable() from exc
            except BaseException:  # a failed request saves nothing
                request.close()
                raise
            _finish(request, out if isinstance(out, bottle.HTTPResponse) else bottle.response)
            return out

        return wrapper


def _user_agent(request: bottle.BaseRequest) -> str | None:
    return request.environ.get("HTTP_USER_AGENT")


def _address(request: bottle.BaseRequest) -> str | None:
    # The connection's own address: request.remote_addr reads X-Forwarded-For first.
    return request.environ.get("REMOTE_ADDR")


def _finish(request: RequestSession, response: bottle.BaseResponse) -> None:
    try:
        finish = request.finish(response.status_code)
    except StoreUnavailable as exc:
        raise _unavailable() from exc
    if not finish.vary:
        return  # nothing asked: a finish without Vary asks for nothing (see Finish)
    if "Vary" in response:
        _merge(response, "Vary", add_vary)
    else:
        response.set_header("Vary", "Cookie")
    if finish.cookie is not None:
        response.add_header("Set-Cookie", finish.cookie)
    if finish.private:
        _merge(response, "Cache-Control", private_cache_control)


def _merge(response: bottle.BaseResponse, name: str, merge: Callable[[str | None], str]) -> None:
    # All the app's lines of that name: get_header would see only the last.
    response.set_header(name, merge(", ".join(response.headers.getall(name)) or None))


def _unavailable() -> bottle.HTTPError:
    return bottle.HTTPError(503, "The session store is unavailable; try again later.")
