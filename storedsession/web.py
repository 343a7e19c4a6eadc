"""The request lifecycle, once for every framework.

An adapter passes its keyword options (:class:`AdapterOptions`, one definition for
every adapter) to :class:`SessionMiddlewareCore`, and says once how to read a request's
``User-Agent`` and connection address (read only when a save signs the session in). Per
request it builds a :class:`RequestSession` from the core, the raw ``Cookie`` header and
the scheme (:meth:`SessionMiddlewareCore.begin` does the same, one call more), hands
:attr:`RequestSession.session` to the application (a
:class:`~storedsession.session.Session` that loads itself on first use; under ASGI,
loaded in a thread by ``await request_session.preload()`` first), and at the end applies
the :class:`Finish` that :meth:`RequestSession.finish` (or ``finish_async``) returns, or
answers 503 when it raises ``StoreUnavailable``; a request the route opts out of is
``close()``d instead. Every decision (load or not, save or not, which cookie, ``Vary``,
``Cache-Control``, 5xx, interrupted sessions, what to record of the client at sign-in)
is taken here, and so is reading the ``Cookie`` header and checking the cookie options.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from email.utils import formatdate
from typing import Any, TypedDict, Unpack

import peewee

from . import ids
from .exceptions import ConfigurationError, SessionInterrupted, StoreUnavailable
from .logs import log
from .session import NOTHING, Plan, Session
from .store import SessionStore
from .writes import TOUCHED, WRITTEN

#: Where an adapter puts the session for code that does not take the keyword.
ENVIRON_KEY = "storedsession.session"
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}


def _printable(text: str) -> bool:
    """Tell whether ``text`` is printable ASCII with no comma (no CTL, no DEL)."""
    return text.isascii() and text.isprintable() and "," not in text


@dataclass(frozen=True)
class CookieOptions:
    """The session cookie's name and attributes, checked when built.

    Values that would break the ``Set-Cookie`` line, or that browsers would refuse, raise
    ``ConfigurationError``. A ``__Host-`` or ``__Secure-`` name (in any case) or
    ``samesite="None"`` turns ``secure=None`` into ``True``.
    """

    name: str = "session"
    path: str = "/"
    domain: str | None = None
    secure: bool | None = None
    httponly: bool = True
    samesite: str | None = "Lax"

    def __post_init__(self) -> None:
        if not self.name or not _printable(self.name) or any(c in self.name for c in ' ;,="'):
            raise ConfigurationError(f"{self.name!r} is not a usable cookie name.")
        # A value that breaks the Set-Cookie line would add attributes or split the header.
        if not self.path.startswith("/") or not _printable(self.path) or ";" in self.path:
            raise ConfigurationError(
                "cookie_path must start with '/' and hold only printable ASCII, without "
                "';' or ','; percent-encode anything else."
            )
        if self.domain is not None and (
            not _printable(self.domain) or any(c in self.domain for c in " ;")
        ):
            raise ConfigurationError(
                "cookie_domain must be a host name in ASCII (IDNA), without ';', ',' or "
                "spaces, or None."
            )
        if self.samesite is not None:
            canonical = _SAMESITE.get(str(self.samesite).lower())
            if canonical is None:
                raise ConfigurationError("cookie_samesite takes 'Lax', 'Strict', 'None' or None.")
            object.__setattr__(self, "samesite", canonical)
        # Browsers match the prefixes case-insensitively and drop a prefixed or
        # SameSite=None cookie that lacks Secure, even over plain HTTP.
        prefix = self.name[:9].lower()
        host = prefix.startswith("__host-")
        if host or prefix == "__secure-" or self.samesite == "None":
            if self.secure is False:
                raise ConfigurationError(
                    "A '__Host-' or '__Secure-' cookie, or cookie_samesite='None', needs a "
                    "Secure cookie; browsers refuse it otherwise. Leave cookie_secure at "
                    "None or pass True."
                )
            object.__setattr__(self, "secure", True)
        if host and (self.domain is not None or self.path != "/"):
            raise ConfigurationError(
                "A '__Host-' cookie needs cookie_path='/' and no cookie_domain; browsers "
                "refuse it otherwise."
            )

    def header(self, value: str, max_age: int | None, https: bool) -> str:
        """Return a ``Set-Cookie`` value; ``max_age`` ``None`` makes a browser-session cookie."""
        expires = None if max_age is None else formatdate(time.time() + max_age, usegmt=True)
        return self._build(value, max_age, expires, https)

    def deletion(self, https: bool) -> str:
        """Return a ``Set-Cookie`` value that expires the cookie, Secure where it was."""
        return self._build("", 0, "Thu, 01 Jan 1970 00:00:00 GMT", https)

    def _build(self, value: str, max_age: int | None, expires: str | None, https: bool) -> str:
        parts = [f"{self.name}={value}", f"Path={self.path}"]
        if self.domain:
            parts.append(f"Domain={self.domain}")
        if max_age is not None:
            parts.append(f"Max-Age={max_age}")
            parts.append(f"Expires={expires}")
        if self.secure or (self.secure is None and https):
            parts.append("Secure")
        if self.httponly:
            parts.append("HttpOnly")
        if self.samesite:
            parts.append(f"SameSite={self.samesite}")
        return "; ".join(parts)


def pick_cookie(header: str | None, name: str) -> str | None:
    r"""Return the first well-formed value of cookie ``name``, else the first value, if any.

    Reads the header as RFC 6265 §4.2.1 writes it: pairs are split on ``;`` only, so a
    comma belongs to a value (a sibling subdomain's ``pref=x,session=...`` smuggles in
    no pair); only spaces and tabs around a name or value are trimmed (``str.strip``
    would also trim ``\xa0``, ``\x85`` or ``\x1c``); a value wrapped in double quotes,
    which §4.1.1 allows and ``http.cookiejar`` sends, is read without them. A lone value
    is returned unchecked: the store checks it (0.75 µs a check, on every request).
    """
    if not header or name not in header:
        return None
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip(" \t") == name:
            value = value.strip(" \t")
            if len(value) > 1 and value[0] == '"' == value[-1]:
                value = value[1:-1]
            values.append(value)
    if len(values) > 1:  # sent twice: a parent domain's cookie, or a stale path's
        for value in values:
            if ids.is_public_id(value):
                return value
    return values[0] if values else None


def scope_cookie_header(headers: object, get_header: Callable[[str], str | None]) -> str | None:
    """Return the raw ``Cookie`` header of an ASGI request, every field of it.

    HTTP/2 sends cookie crumbs as separate fields (RFC 9113 §8.2.3), which a server
    hands over one by one in ``scope["headers"]``: they are joined with ``"; "``, in
    order. ``headers`` is used only when it is a list or a tuple, as servers give it;
    anything else may be a one-shot iterator the framework has already consumed
    (``falcon.testing`` passes one), and then ``get_header("Cookie")``, the
    framework's own reading, is returned instead.
    """
    if not isinstance(headers, list | tuple):
        return get_header("Cookie")
    # ASGI lowercases header names and gives values as bytes; latin-1 as WSGI decodes.
    crumbs = [value for key, value in headers if key == b"cookie"]
    return b"; ".join(crumbs).decode("latin-1") if crumbs else None


# A Cache-Control directive: a run of anything but commas, where a quoted string counts
# as one piece (a comma inside no-cache="A, B" does not split it; a quote left open
# does not hide the directives after it).
_DIRECTIVE = re.compile(r'(?:[^,"]|"(?:[^"\\]|\\.)*"|")+')
_SHARED_ONLY = frozenset({"public", "s-maxage"})


def private_cache_control(existing: str | None) -> str:
    """Return ``existing`` Cache-Control value made unstorable by a shared cache.

    For a response that sets or deletes the session cookie: ``public`` and ``s-maxage``
    go, and ``private`` comes first unless an unqualified ``private`` or ``no-store`` is
    already there (a qualified ``private="Set-Cookie"`` would let a shared cache store
    the rest of the response, so it is replaced).
    """
    if not existing:
        return "private"
    kept = []
    unstorable = False
    for match in _DIRECTIVE.finditer(existing):
        directive = match.group().strip(" \t")
        name = directive.partition("=")[0].rstrip(" \t").lower()
        if not directive or name in _SHARED_ONLY:
            continue
        if name == "private" and directive.lower() != "private":
            continue
        unstorable = unstorable or directive.lower() in ("private", "no-store")
        kept.append(directive)
    return ", ".join(kept if unstorable else ["private", *kept])


def add_vary(existing: str | None) -> str:
    """Return ``existing`` Vary value with ``Cookie`` in it."""
    if not existing:
        return "Cookie"
    fields = [f.strip().lower() for f in existing.split(",")]
    if "cookie" in fields or "*" in fields:
        return existing
    return f"{existing}, Cookie"


class Finish:
    """What the session asks of one response, for the adapter to apply.

    ``cookie`` is a ``Set-Cookie`` line or ``None``; ``vary`` says to add ``Cookie`` to
    ``Vary`` (:func:`add_vary`); ``private`` says to make ``Cache-Control`` unstorable by
    a shared cache (:func:`private_cache_control`). Both merge into the application's own
    header of that name. Iterating gives the header lines, for a caller with no headers
    of its own to merge them into. A cookie or the cache rule comes only with ``vary``,
    so a finish without it asks for nothing. Read it, never change it: the answers
    without a cookie are shared constants.
    """

    __slots__ = ("cookie", "private", "vary")

    def __init__(self, cookie: str | None = None, vary: bool = False, private: bool = False):
        self.cookie = cookie
        self.vary = vary
        self.private = private

    def __iter__(self) -> Iterator[tuple[str, str]]:
        if self.vary:
            yield "Vary", "Cookie"
        if self.cookie is not None:
            yield "Set-Cookie", self.cookie
        if self.private:
            yield "Cache-Control", "private"

    def __repr__(self) -> str:
        return f"Finish(cookie={self.cookie is not None}, vary={self.vary}, private={self.private})"


# The answers without a cookie, built once: most requests get one of them.
_UNUSED = Finish()
_VARY_ONLY = Finish(vary=True)
#: The plan of a save that runs no statement, for one :meth:`SessionStore._writes_nothing`
#: found so: the touch is then not tested twice (a clock that crossed the interval
#: between the two would run the touch on the event loop).
_WRITES_NOTHING: Plan = (NOTHING, None)


class RequestSession:
    """The session of one request: begun by the adapter, saved by :meth:`finish`.

    ``session`` is handed to the application and loads itself on first use;
    ``accessed`` tells whether it was. ``hold_connection`` keeps one database connection
    from the load to :meth:`close` (WSGI). Under ASGI each offloaded call takes its own
    instead, since peewee keeps connections per thread.
    """

    __slots__ = (
        "core",
        "cookie",
        "https",
        "request",
        "session",
        "accessed",
        "failed",
        "_hold",
        "_held",
        "_preload_error",
    )

    def __init__(
        self,
        core: SessionMiddlewareCore,
        cookie_header: str | None,
        https: bool,
        *,
        hold_connection: bool = True,
        request: Any = None,
    ) -> None:
        self.core = core
        self.cookie = pick_cookie(cookie_header, core.cookie.name)
        self.https = https
        #: The framework's request, read only if the session signs in (see ``client``).
        self.request = request
        self.session = Session._deferred(self._load)
        self.accessed = False
        #: Set when loading the session failed with StoreUnavailable; :meth:`finish`
        #: then raises it again, for the adapter to answer 503.
        self.failed = False
        # Only a well-formed cookie can find a row, so only then is a connection worth
        # holding; and not where the store keeps its connection open anyway.
        self._hold = hold_connection and core.holds and ids.is_public_id(self.cookie)
        # The store's guard (a connector use), entered by _load and exited by close: an
        # ExitStack around it cost 7 calls a request.
        self._held: AbstractContextManager[Any] | None = None
        self._preload_error: StoreUnavailable | None = None

    def _load(self) -> Session:
        core = self.core
        try:
            if self._preload_error is not None:
                raise self._preload_error  # never retried: that would block an event loop
            if self._hold:
                self._hold = False
                held = core.store.connected()
                held.__enter__()
                self._held = held
            loaded = core.store.load(self.cookie)
        except StoreUnavailable:
            self.failed = True
            raise
        self.accessed = True
        return loaded

    async def preload(self) -> None:
        """Load the session in a worker thread if the request carries a well-formed cookie.

        For ASGI, where the session must not query on the event loop: call it before
        the application gets ``session``. A database failure is kept and raised when the
        application uses the session, so a request that never does is not failed by it.
        """
        if ids.is_public_id(self.cookie):
            try:
                # store.aload, without its wrapping coroutine (2 calls)
                self.session = await self.core.store._workers.run(self.core.store.load, self.cookie)
            except StoreUnavailable as exc:
                self._preload_error = exc
            else:
                self.accessed = True

    def finish(self, status: int, plan: Plan | None = None) -> Finish:
        """Save the session if the response allows it; return what to add to the response.

        Asks nothing of a response whose request never used the session. Raises
        ``StoreUnavailable`` when loading or saving failed: answer 503 and apply nothing.
        ``plan`` is the session's ``_plan()`` when the caller made it already.
        """
        try:
            if self.failed:
                raise StoreUnavailable("The session could not be loaded; nothing was saved.")
            if not self.accessed:
                return _UNUSED
            if status >= 500:
                return _VARY_ONLY
            session = self.session
            core = self.core
            try:
                outcome = core.store._save(
                    session,
                    session._plan() if plan is None else plan,
                    self.client if core.records and self.request is not None else None,
                )
            except SessionInterrupted:  # the store logged the blocked resurrection
                return _VARY_ONLY
            if outcome is WRITTEN or outcome is TOUCHED:
                assert session.id is not None
                max_age = core.store.cookie_max_age(session)
                line = core.cookie.header(session.id, max_age, self.https)
            elif session._invalidated and session.new:
                line = core.cookie.deletion(self.https)
            else:
                return _VARY_ONLY
            # A shared cache must never store a cookie of one user to replay to others.
            return Finish(line, vary=True, private=True)
        finally:
            # Falcon's request refers to this object (req.context): without this, every
            # request would leave a cycle of 7 objects for the garbage collector.
            self.request = None
            if self._held is not None:
                self.close()

    def client(self) -> tuple[str | None, str | None]:
        """Return the request's raw user agent and, with ``record_ip``, its address."""
        return self.core.client(self.request)

    async def finish_async(self, status: int) -> Finish:
        """Run :meth:`finish`, in a worker thread unless it provably runs no statement."""
        # Where finish cannot query, a thread would cost 169 calls for nothing: nothing
        # loaded, a failed load, a 5xx, or a plan that writes nothing (a new session
        # without data, or a read inside the touch interval). The plan is made here,
        # serializing a changed session at most once, and handed on to the save.
        if self._held is not None:
            return await self.core.store._workers.run(self.finish, status)
        if not self.accessed or self.failed or status >= 500:
            return self.finish(status)
        session = self.session
        try:
            plan = session._plan()
        except BaseException:  # not serializable: raised as finish would, without the request
            self.request = None
            raise
        if self.core.store._writes_nothing(session, plan):
            return self.finish(status, _WRITES_NOTHING)
        return await self.core.store._workers.run(self.finish, status, plan)

    def close(self) -> None:
        """Return the request's connection, if it holds one."""
        self.request = None  # see finish
        held = self._held
        if held is not None:
            self._held = None
            held.__exit__(None, None, None)


#: How an adapter reads one thing (the user agent, the connection's address) off a request.
Reader = Callable[[Any], str | None]


class StoreOptions(TypedDict, total=False):
    """The :class:`SessionStore` options an adapter passes on when it builds the store.

    Their defaults are the store's; ``tests/test_web_core.py`` keeps this list equal to
    ``SessionStore``'s keyword parameters.
    """

    keys: str | Sequence[str] | None
    table_name: str
    idle_timeout: float | timedelta | None
    absolute_timeout: float | timedelta | None
    touch_interval: float | timedelta
    max_size: int
    clock: Callable[[], datetime] | None
    legacy_envelopes: bool
    async_threads: int


class AdapterOptions(StoreOptions, total=False):
    """The keyword options of every adapter, after the store or database (API.md's list).

    ``cookie_<field>`` is :class:`CookieOptions`'s ``<field>``, with its default; the
    ``record_*`` options and ``client_ip`` are :class:`SessionMiddlewareCore`'s.
    """

    cookie_name: str
    cookie_path: str
    cookie_domain: str | None
    cookie_secure: bool | None
    cookie_httponly: bool
    cookie_samesite: str | None
    record_user_agent: bool
    record_ip: bool
    client_ip: Reader | None


_COOKIE_FIELDS = tuple(field.name for field in fields(CookieOptions))


class SessionMiddlewareCore:
    """What every adapter shares: the store, the cookie options, what to record of clients.

    Takes the :class:`AdapterOptions`, so that an adapter's constructor only passes
    them on. ``record_user_agent`` (default ``True``) records the ``User-Agent`` of the
    request that signs a session in (the session gets a user id, or is regenerated with
    one); ``False`` records nothing at all. ``record_ip`` (default ``False``) records the
    client's address with it: the connection's (``address_of``), or what
    ``client_ip(request)`` returns for an application behind a proxy it trusts, never a
    forwarded header by default. ``user_agent_of`` and ``address_of`` are the adapter's
    readers of its framework's request.
    """

    def __init__(
        self,
        store_or_database: SessionStore | str | peewee.Database,
        *,
        user_agent_of: Reader | None = None,
        address_of: Reader | None = None,
        **options: Unpack[AdapterOptions],
    ) -> None:
        rest: dict[str, Any] = dict(options)
        self.cookie = CookieOptions(
            **{
                field: rest.pop(f"cookie_{field}")
                for field in _COOKIE_FIELDS
                if f"cookie_{field}" in rest
            }
        )
        record_user_agent = rest.pop("record_user_agent", True)
        record_ip = rest.pop("record_ip", False)
        client_ip = rest.pop("client_ip", None)
        if record_ip and not record_user_agent:
            raise ConfigurationError(
                "record_ip=True records the address with the user agent, and "
                "record_user_agent=False turns recording off: pass one or the other."
            )
        if client_ip is not None and not (callable(client_ip) and record_ip):
            raise ConfigurationError(
                "client_ip takes a function of the request that returns the client's address "
                "(a str, or None), and is used only with record_ip=True."
            )
        self.record_ip = record_ip
        self._client_ip = client_ip
        self._user_agent_of = user_agent_of
        self._address_of = address_of
        #: Whether a sign-in records anything: the option, and an adapter that can read it.
        self.records = record_user_agent and user_agent_of is not None
        if not isinstance(store_or_database, SessionStore):
            # What is left are store options; SessionStore refuses an unknown keyword.
            self.store = SessionStore(store_or_database, **rest)
        elif unknown := sorted(rest.keys() - StoreOptions.__optional_keys__):
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        elif rest:
            raise ConfigurationError(
                "Pass keys and store options to the SessionStore, not to the adapter, "
                "when you give it a store."
            )
        else:
            self.store = store_or_database
        #: Whether a request holds its connection from the load to the save. Not on the
        #: store's own SQLite database, which keeps one open per thread (its connector
        #: never closes it), so holding it would change nothing and cost a read 8 calls.
        self.holds = not self.store.table.connector.keep_open

    def begin(
        self,
        cookie_header: str | None,
        https: bool,
        *,
        hold_connection: bool = True,
        request: Any = None,
    ) -> RequestSession:
        """Start the session of one request; ``request`` is the framework's, for ``client``."""
        return RequestSession(
            self, cookie_header, https, hold_connection=hold_connection, request=request
        )

    def client(self, request: Any) -> tuple[str | None, str | None]:
        """Return the raw user agent of ``request`` and, with ``record_ip``, its address.

        The store trims and normalises both. A ``client_ip`` that raises records no
        address (logged without the exception's text, which may hold the header).
        """
        assert self._user_agent_of is not None
        agent = self._user_agent_of(request)
        if not self.record_ip:
            return agent, None
        if self._client_ip is None:
            return agent, None if self._address_of is None else self._address_of(request)
        try:
            return agent, self._client_ip(request)
        except Exception as exc:
            log.warning(
                "client_ip raised %s; this sign-in was recorded without an address.",
                type(exc).__name__,
            )
            return agent, None
