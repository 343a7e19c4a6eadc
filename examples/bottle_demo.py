"""The storedsession demo on Bottle, served by the standard library's WSGI server.

    python -m examples.bottle_demo [--port 8080] [--database sqlite:///storedsession-demo.db]

Bottle 0.13 notes: form text is read with ``forms.getunicode()`` (``forms.get()`` gives
UTF-8 decoded as latin-1); a redirect or ``abort()`` raises an ``HTTPResponse``, after
which the plugin still saves the session (any status below 500). The routes below are
closures over ``store``, which the plugin handles (it never calls Bottle's
``get_callback_args()``, which would hang on them).
"""

from __future__ import annotations

import socketserver
from collections.abc import Sequence
from typing import Any, NoReturn
from wsgiref.simple_server import WSGIServer, make_server

import bottle

from storedsession import Session, SessionStore
from storedsession.plugins.bottle import StoredSessionPlugin

from . import common

NAME = "Bottle"


def make_app(store: SessionStore) -> bottle.Bottle:
    """Build the demo app on ``store``, whose table exists."""
    app = bottle.Bottle()
    # Routes taking `session` get it. record_ip=True shows the address on the sessions
    # page; it is off by default, since an address is personal data (see the README).
    app.install(StoredSessionPlugin(store, record_ip=True))

    @app.get("/")
    def home(session: Session) -> str:
        return _page(common.home_page(NAME, session, bottle.request.query.get("notice")))

    @app.post("/signin")
    def sign_in(session: Session) -> None:
        name = common.clean(_form(session).getunicode("username"))
        if name is None:
            _back(session, common.BAD_NAME)
        session.regenerate()  # a new id at sign-in: no session fixation
        session.user_id = name  # what store.sessions_for() and revoke_user() look up
        common.renew_csrf_token(session)
        _back(session, f"Signed in as {name}.")

    @app.post("/signout")
    def sign_out(session: Session) -> None:
        _form(session)
        common.sign_out(session, _back)

    @app.post("/cart/add")
    def cart_add(session: Session) -> None:
        common.add_to_cart(session, _form(session).getunicode("item"), _back)

    @app.post("/cart/remove")
    def cart_remove(session: Session) -> None:
        common.remove_from_cart(session, _form(session).getunicode("item"), _back)

    @app.get("/sessions")
    def sessions(session: Session) -> str:
        listed = store.sessions_for(common.signed_in_user(session, _back))
        notice = bottle.request.query.get("notice")
        return _page(common.sessions_page(NAME, session, listed, notice))

    @app.post("/sessions/revoke")
    def revoke(session: Session) -> None:
        handle = _form(session).getunicode("handle")
        user = common.signed_in_user(session, _back)
        if handle == session.handle:
            common.sign_out(session, _back)
        # user_id=: a user can only ever sign out sessions of their own.
        revoked = isinstance(handle, str) and store.revoke(handle, user_id=user)
        _back(session, common.REVOKED if revoked else common.GONE, "/sessions")

    @app.post("/sessions/revoke-others")
    def revoke_others(session: Session) -> None:
        _form(session)
        count = store.revoke_user(common.signed_in_user(session, _back), keep=session)
        _back(session, f"Signed out {count} other session(s).", "/sessions")

    @app.error(403)
    @app.error(404)
    @app.error(405)
    def error(err: bottle.HTTPError) -> str:
        return _page(common.error_page(NAME, err.status_line, str(err.body)))

    return app


def _page(page: str) -> str:
    for name, value in common.HEADERS:
        bottle.response.set_header(name, value)
    return page


def _form(session: Session) -> Any:
    """Return the POSTed form if a page of this demo sent it (see common), or answer 403."""
    request = bottle.request
    came_from_here = common.same_origin(
        request.environ["wsgi.url_scheme"],  # not urlparts: it believes X-Forwarded-Proto
        request.get_header("Host"),
        request.get_header("Sec-Fetch-Site"),
        request.get_header("Origin"),
    )
    form = request.forms
    if not common.form_allowed(session, form.getunicode("csrf"), came_from_here):
        bottle.abort(403, common.CSRF_FAILED)
    return form


def _back(session: Session, message: str, to: str = "/") -> NoReturn:
    """Redirect (303) to ``to``, which shows ``message`` once."""
    location = common.leave_message(session, message, to)
    raise bottle.HTTPResponse(status=303, Location=location)  # the plugin saves the session


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # browsers keep idle connections open: one thread each


def main(argv: Sequence[str] | None = None) -> None:
    """Start the demo on 127.0.0.1 and serve until Ctrl-C."""
    args = common.parse_args(NAME, 8080, argv)
    store = common.open_store(args.database)
    try:
        server = make_server("127.0.0.1", args.port, make_app(store), server_class=_Server)
    except OSError as exc:
        common.cannot_listen(args.port, exc)
    common.announce(NAME, server.server_port)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()


if __name__ == "__main__":
    main()
