"""The storedsession demo on Falcon's ASGI app, served by uvicorn.

    python -m examples.falcon_demo [--port 8081] [--database sqlite:///storedsession-demo.db]

Responders are ``async``: the middleware loads the session in a worker thread before
they run, and the store's async twins (``asessions_for``, ``arevoke``,
``arevoke_user``) keep every other query off the event loop.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any, NoReturn

import falcon
import falcon.asgi
import uvicorn

from storedsession import Session, SessionStore
from storedsession.plugins.falcon import StoredSessionMiddleware

from . import common

NAME = "Falcon"
Request = falcon.asgi.Request
Response = falcon.asgi.Response


class Home:
    async def on_get(self, req: Request, resp: Response) -> None:
        _page(resp, common.home_page(NAME, req.context.session, req.get_param("notice")))


class Account:
    async def on_post_signin(self, req: Request, resp: Response) -> None:
        session = req.context.session
        name = common.clean((await _form(req)).get("username"))
        if name is None:
            _back(session, common.BAD_NAME)
        session.regenerate()  # a new id at sign-in: no session fixation
        session.user_id = name  # what store.sessions_for() and revoke_user() look up
        common.renew_csrf_token(session)
        _back(session, f"Signed in as {name}.")

    async def on_post_signout(self, req: Request, resp: Response) -> None:
        await _form(req)
        common.sign_out(req.context.session, _back)


class Cart:
    async def on_post_add(self, req: Request, resp: Response) -> None:
        item = (await _form(req)).get("item")
        common.add_to_cart(req.context.session, item, _back)

    async def on_post_remove(self, req: Request, resp: Response) -> None:
        item = (await _form(req)).get("item")
        common.remove_from_cart(req.context.session, item, _back)


class Sessions:
    def __init__(self, store: SessionStore) -> None:
        self.store = store

    async def on_get(self, req: Request, resp: Response) -> None:
        session = req.context.session
        listed = await self.store.asessions_for(common.signed_in_user(session, _back))
        _page(resp, common.sessions_page(NAME, session, listed, req.get_param("notice")))

    async def on_post_revoke(self, req: Request, resp: Response) -> None:
        session = req.context.session
        handle = (await _form(req)).get("handle")
        user = common.signed_in_user(session, _back)
        if handle == session.handle:
            common.sign_out(session, _back)
        # user_id=: a user can only ever sign out sessions of their own.
        revoked = isinstance(handle, str) and await self.store.arevoke(handle, user_id=user)
        _back(session, common.REVOKED if revoked else common.GONE, "/sessions")

    async def on_post_revoke_others(self, req: Request, resp: Response) -> None:
        session = req.context.session
        await _form(req)
        count = await self.store.arevoke_user(common.signed_in_user(session, _back), keep=session)
        _back(session, f"Signed out {count} other session(s).", "/sessions")


def _page(resp: Response, page: str) -> None:
    resp.content_type = falcon.MEDIA_HTML
    resp.text = page
    for name, value in common.HEADERS:
        resp.set_header(name, value)


def _error_page(req: Any, resp: Any, error: falcon.HTTPError) -> None:
    _page(
        resp,
        common.error_page(
            NAME, error.title or str(error.status), error.description or error.title or ""
        ),
    )


async def _form(req: Request) -> dict[str, Any]:
    """Return the POSTed form if a page of this demo sent it (see common), or answer 403."""
    came_from_here = common.same_origin(
        req.scheme,  # the ASGI scheme, not a forwarded header
        req.get_header("Host"),
        req.get_header("Sec-Fetch-Site"),
        req.get_header("Origin"),
    )
    form = await req.get_media(default_when_empty={})
    if not isinstance(form, dict) or not common.form_allowed(
        req.context.session, form.get("csrf"), came_from_here
    ):
        raise falcon.HTTPForbidden(description=common.CSRF_FAILED)
    return form


def _back(session: Session, message: str, to: str = "/") -> NoReturn:
    """Redirect (303) to ``to``, which shows ``message`` once."""
    raise falcon.HTTPSeeOther(common.leave_message(session, message, to))  # then saved


def make_app(store: SessionStore) -> falcon.asgi.App:
    """Build the demo app on ``store``, whose table exists."""
    # record_ip=True shows the address on the sessions page; it is off by default, since
    # an address is personal data (see the README).
    app = falcon.asgi.App(middleware=[StoredSessionMiddleware(store, record_ip=True)])
    app.set_error_serializer(_error_page)
    account, cart, sessions = Account(), Cart(), Sessions(store)
    app.add_route("/", Home())
    app.add_route("/signin", account, suffix="signin")
    app.add_route("/signout", account, suffix="signout")
    app.add_route("/cart/add", cart, suffix="add")
    app.add_route("/cart/remove", cart, suffix="remove")
    app.add_route("/sessions", sessions)
    app.add_route("/sessions/revoke", sessions, suffix="revoke")
    app.add_route("/sessions/revoke-others", sessions, suffix="revoke_others")
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """Start the demo on 127.0.0.1 and serve until Ctrl-C."""
    args = common.parse_args(NAME, 8081, argv)
    store = common.open_store(args.database)
    try:
        sock = socket.create_server(("127.0.0.1", args.port))
    except OSError as exc:
        common.cannot_listen(args.port, exc)
    common.announce(NAME, sock.getsockname()[1])
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default and rewrites the client
    # address with it; the demo has no proxy in front, so any local page could forge it.
    config = uvicorn.Config(make_app(store), lifespan="off", proxy_headers=False)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gracefully, then passes Ctrl-C on
        pass
    finally:
        sock.close()
        store.close()


if __name__ == "__main__":
    main()
