"""The Falcon middleware, for ``falcon.App`` and ``falcon.asgi.App`` alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Unpack

import falcon
import peewee

from storedsession.exceptions import StoreUnavailable
from storedsession.store import SessionStore
from storedsession.web import (
    AdapterOptions,
    Finish,
    RequestSession,
    SessionMiddlewareCore,
    add_vary,
    private_cache_control,
    scope_cookie_header,
)

if TYPE_CHECKING:
    import falcon.asgi


class StoredSessionMiddleware:
    """Give Falcon responders an encrypted, database-backed session.

    The session is at ``req.context.session``, loaded on first use (under ASGI, in a
    worker thread before the responder runs, when the request carries a session
    cookie), and saved after the responder unless the response status is 500 or more.
    A resource opts out with a class attribute ``storedsession = False``.
    ``store_or_database`` is a :class:`SessionStore`, or a database or URL to build
    one from; ``options`` are every adapter's (:class:`storedsession.web.AdapterOptions`).
    A sign-in records the ``User-Agent`` (``record_user_agent``) and, with
    ``record_ip``, ``req.remote_addr`` or ``client_ip(req)``. ``store`` is the
    :class:`SessionStore` in use.
    """

    def __init__(
        self,
        store_or_database: SessionStore | str | peewee.Database,
        **options: Unpack[AdapterOptions],
    ) -> None:
        self.core = SessionMiddlewareCore(
            store_or_database, user_agent_of=_user_agent, address_of=_address, **options
        )
        self.store = self.core.store

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        """Put the request's session on ``req.context.session``, to load on first use."""
        request = RequestSession(
            self.core, req.get_header("Cookie"), req.scheme == "https", request=req
        )
        req.context._storedsession = request
        req.context.session = request.session

    async def process_request_async(
        self, req: falcon.asgi.Request, resp: falcon.asgi.Response
    ) -> None:
        """Put the session on ``req.context.session``, loaded off the event loop."""
        # Falcon keeps only the last of several Cookie fields; the scope has them all.
        cookie_header = scope_cookie_header(req.scope.get("headers"), req.get_header)
        request = RequestSession(
            self.core, cookie_header, req.scheme == "https", hold_connection=False, request=req
        )
        req.context._storedsession = request
        await request.preload()
        req.context.session = request.session

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, req_succeeded: bool
    ) -> None:
        """Save the session and add its cookie and ``Vary`` to the response."""
        request = _taken(req, resource)
        if request is not None:
            try:
                finish = request.finish(resp.status_code)
            except StoreUnavailable as exc:
                raise falcon.HTTPServiceUnavailable() from exc
            if finish.vary:
                _apply(resp, finish)

    async def process_response_async(
        self,
        req: falcon.asgi.Request,
        resp: falcon.asgi.Response,
        resource: object,
        req_succeeded: bool,
    ) -> None:
        """Save the session (in a worker thread where the save writes) and add its cookie
        and ``Vary``."""
        request = _taken(req, resource)
        if request is not None:
            try:
                finish = await request.finish_async(resp.status_code)
            except StoreUnavailable as exc:
                raise falcon.HTTPServiceUnavailable() from exc
            if finish.vary:
                _apply(resp, finish)


def _user_agent(req: falcon.Request) -> str | None:
    return req.get_header("User-Agent")


def _address(req: falcon.Request) -> str | None:
    # The connection's (WSGI REMOTE_ADDR, ASGI client), never a forwarded header.
    return req.remote_addr


def _taken(req: falcon.Request, resource: object) -> RequestSession | None:
    """Return the request's session state unless there is none or the resource opted out."""
    # None when process_request did not run (another middleware's process_request raised).
    request: RequestSession | None = getattr(req.context, "_storedsession", None)
    if request is not None and getattr(resource, "storedsession", True) is False:
        request.close()
        return None
    return request


def _apply(resp: falcon.Response, finish: Finish) -> None:
    # Only for a finish that varies: one that does not asks for nothing (see Finish).
    # Falcon keeps one line per name, joined with ", ", so get_header sees them all.
    vary = resp.get_header("Vary")
    resp.set_header("Vary", "Cookie" if vary is None else add_vary(vary))
    if finish.cookie is not None:
        # Raw, so the deletion cookie keeps Secure (unset_cookie drops it); appended
        # Set-Cookie lines are kept apart from each other and from the app's cookies.
        resp.append_header("Set-Cookie", finish.cookie)
    if finish.private:
        resp.set_header("Cache-Control", private_cache_control(resp.get_header("Cache-Control")))
