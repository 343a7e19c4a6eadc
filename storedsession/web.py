"""The request lifecycle, once for every framework.

An adapter builds a :class:`SessionMiddlewareCore` from its options, makes one
:class:`RequestSession` per request from the raw ``Cookie`` header and the request's
scheme, hands ``request_session.lazy`` (a proxy that loads on first use; under ASGI,
after ``await request_session.preload()``) to the application, and at the end asks
:meth:`RequestSession.finish` (or ``finish_async``) which headers to add, answering 503
when it raises ``StoreUnavailable``; a header named in :data:`MERGED_HEADERS` is merged
into the application's own. Every decision (load or not, save or not, which
cookie, ``Vary``, ``Cache-Control``, 5xx, interrupted sessions, what to record of the
client at sign-in) is taken here, and so is reading the ``Cookie`` header and checking
the cookie options. The adapter passes its framework's request to ``begin`` and says once,
at construction, how to read a request's ``User-Agent`` and connection address; they are
read only when a save signs the session in.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

import peewee

from . import ids
from .exceptions import ConfigurationError, SessionInterrupted, StoreUnavailable
from .logs import log
from .session import Session
from .store import SessionStore
from .writes import Outcome

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


def cookie_values(header: str | None, name: str) -> Iterator[str]:
    r"""Yield every value of cookie ``name`` in a raw ``Cookie`` header, in order.

    As RFC 6265 §4.2.1 writes the header: pairs are split on ``;`` only, so a comma
    belongs to a value (a sibling subdomain's ``pref=x,session=...`` smuggles in no
    pair); only spaces and tabs around a name or value are trimmed (``str.strip`` would
    also trim ``\xa0``, ``\x85`` or ``\x1c``); a value wrapped in double quotes, which
    §4.1.1 allows and ``http.cookiejar`` sends, is read without them.
    """
    if not header or name not in header:
        return
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip(" \t") == name:
            value = value.strip(" \t")
            if len(value) > 1 and value[0] == '"' == value[-1]:
                value = value[1:-1]
            yield value


def pick_cookie(header: str | None, name: str) -> str | None:
    """Return the first well-formed value of cookie ``name``, else the first value, if any."""
    first = None
    for value in cookie_values(header, name):
        if ids.is_public_id(value):
            return value
        if first is None:
            first = value
    return first


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


#: Headers that :meth:`RequestSession.finish` returns to be merged into the
#: application's own (all its lines of that name, joined with ", "), not added beside
#: them: the adapter sets ``MERGED_HEADERS[name](existing)`` in their place.
MERGED_HEADERS: dict[str, Callable[[str | None], str]] = {
    "Vary": add_vary,
    "Cache-Control": private_cache_control,
}


class LazySession(Session):
    """A :class:`Session` that loads itself from the store on first use."""

    __slots__ = ("_request",)

    def __init__(self, request: RequestSession) -> None:
        object.__setattr__(self, "_request", request)

    def __getattribute__(self, name: str) -> Any:
        if name in _LAZY_OWN:
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_request").session_object(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(object.__getattribute__(self, "_request").session_object(), name, value)

    def __getitem__(self, key: str) -> Any:
        return self._request.session_object()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._request.session_object()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._request.session_object()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._request.session_object())

    def __len__(self) -> int:
        return len(self._request.session_object())

    def __contains__(self, key: object) -> bool:
        return key in self._request.session_object()

    def __repr__(self) -> str:
        return repr(self._request.session_object())


_LAZY_OWN = frozenset(
    {
        "_request",
        "__class__",
        "__getitem__",
        "__setitem__",
        "__delitem__",
        "__iter__",
        "__len__",
        "__contains__",
        "__repr__",
        "__dict__",
    }
)


class RequestSession:
    """The session of one request: loaded on first use, saved by :meth:`finish`.

    ``hold_connection`` keeps one database connection from the first query to the end
    of the request (WSGI). Under ASGI each offloaded call takes its own instead, since
    peewee keeps connections per thread.
    """

    __slots__ = (
        "core",
        "cookie",
        "https",
        "request",
        "lazy",
        "_session",
        "_held",
        "_hold",
        "failed",
        "_preload_error",
        "_well_formed",
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
        self.lazy = LazySession(self)
        self._session: Session | None = None
        self._held: AbstractContextManager[Any] | None = None
        self._well_formed = ids.is_public_id(self.cookie)
        self._hold = hold_connection
        #: Set when the application met a StoreUnavailable while loading the session;
        #: :meth:`finish` then raises it again, for the adapter to answer 503.
        self.failed = False
        self._preload_error: StoreUnavailable | None = None

    @property
    def accessed(self) -> bool:
        """Whether the application used the session (it was loaded)."""
        return self._session is not None

    def _connect(self) -> None:
        if self._hold and self._held is None:
            held = self.core.store.connected()
            held.__enter__()
            self._held = held

    def session_object(self) -> Session:
        """Return the real session, loading it on first use."""
        if self._session is None:
            try:
                if self._preload_error is not None:
                    raise self._preload_error  # never retried: that would block an event loop
                if self._well_formed:
                    self._connect()
                self._session = self.core.store.load(self.cookie)
            except StoreUnavailable:
                self.failed = True
                raise
        return self._session

    async def preload(self) -> None:
        """Load the session in a worker thread if the request carries a well-formed cookie.

        For ASGI, where :meth:`session_object` must not query on the event loop. A
        database failure is kept and raised when the application uses the session, so
        a request that never does is not failed by it.
        """
        if self._session is None and self._well_formed:
            try:
                self._session = await self.core.store.aload(self.cookie)
            except StoreUnavailable as exc:
                self._preload_error = exc

    def finish(self, status: int) -> list[tuple[str, str]]:
        """Save the session if the response allows it; return the headers to add.

        Returns nothing for a request that never used the session. Raises
        ``StoreUnavailable`` when loading or saving failed: answer 503 without these
        headers.
        """
        try:
            if self.failed:
                raise StoreUnavailable("The session could not be loaded; nothing was saved.")
            session = self._session
            if session is None:
                return []
            headers = [("Vary", "Cookie")]
            if status >= 500:
                return headers
            try:
                outcome = self.core.store.save(
                    session, self.client if self.core.records and self.request is not None else None
                )
            except SessionInterrupted:  # the store logged the blocked resurrection
                return headers
            cookie = self.core.cookie
            if outcome in (Outcome.WRITTEN, Outcome.TOUCHED):
                assert session.id is not None
                max_age = self.core.store.cookie_max_age(session)
                headers.append(("Set-Cookie", cookie.header(session.id, max_age, self.https)))
            elif session._invalidated and session.new:
                headers.append(("Set-Cookie", cookie.deletion(self.https)))
            else:
                return headers
            # A shared cache must never store a cookie of one user to replay to others.
            headers.append(("Cache-Control", "private"))
            return headers
        finally:
            self.close()

    def client(self) -> tuple[str | None, str | None]:
        """Return the request's raw user agent and, with ``record_ip``, its address."""
        return self.core.client(self.request)

    async def finish_async(self, status: int) -> list[tuple[str, str]]:
        """Run :meth:`finish`, with its database work in a worker thread."""
        if self._session is None:
            return self.finish(status)  # no database work: nothing was loaded
        return await asyncio.to_thread(self.finish, status)

    def close(self) -> None:
        """Return the request's connection, if it holds one."""
        held, self._held = self._held, None
        if held is not None:
            held.__exit__(None, None, None)


#: How an adapter reads one thing (the user agent, the connection's address) off a request.
Reader = Callable[[Any], str | None]


class SessionMiddlewareCore:
    """What every adapter shares: the store, the cookie options, what to record of clients.

    ``record_user_agent`` records the ``User-Agent`` of the request that signs a session
    in (the session gets a user id, or is regenerated with one); ``False`` records
    nothing at all. ``record_ip`` records the client's address with it: the connection's
    (``address_of``), or what ``client_ip(request)`` returns for an application behind a
    proxy it trusts, never a forwarded header by default. ``user_agent_of`` and
    ``address_of`` are the adapter's readers of its framework's request.
    """

    def __init__(
        self,
        store_or_database: SessionStore | str | peewee.Database,
        *,
        keys: str | Sequence[str] | None = None,
        cookie_name: str = "session",
        cookie_path: str = "/",
        cookie_domain: str | None = None,
        cookie_secure: bool | None = None,
        cookie_httponly: bool = True,
        cookie_samesite: str | None = "Lax",
        record_user_agent: bool = True,
        record_ip: bool = False,
        client_ip: Reader | None = None,
        user_agent_of: Reader | None = None,
        address_of: Reader | None = None,
        **store_options: Any,
    ) -> None:
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
        if isinstance(store_or_database, SessionStore):
            if keys is not None or store_options:
                raise ConfigurationError(
                    "Pass keys and store options to the SessionStore, not to the adapter, "
                    "when you give it a store."
                )
            self.store = store_or_database
        else:
            self.store = SessionStore(store_or_database, keys=keys, **store_options)
        self.cookie = CookieOptions(
            cookie_name, cookie_path, cookie_domain, cookie_secure, cookie_httponly, cookie_samesite
        )

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
