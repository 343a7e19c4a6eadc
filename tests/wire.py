"""What the web adapters' tests read off the wire: raw responses and their cookies."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storedsession import ids

#: Hostile session cookie values: none of them may ever cause a 500.
HOSTILE = {
    "garbage": "not-a-session-id",
    "10kb": "A" * 10240,
    "non-ascii": "Zoë☃".encode().decode("latin-1"),  # as a WSGI server hands it over
    "quotes": '"' + "A" * 43 + '"',
}

#: (Cache-Control the application set, what a response that sets or deletes the session
#: cookie carries): never storable by a shared cache.
CACHE_CONTROL = [
    (None, "private"),
    ("public, max-age=60", "private, max-age=60"),
    ("public, s-maxage=600, max-age=60", "private, max-age=60"),
    ("max-age=60", "private, max-age=60"),
    ("no-store", "no-store"),
    ("private, max-age=60", "private, max-age=60"),
]


@dataclass
class SetCookie:
    """One parsed ``Set-Cookie`` line; attribute names in lower case, flags map to ''."""

    name: str
    value: str
    attrs: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, line: str) -> SetCookie:
        first, *rest = (part.strip() for part in line.split(";"))
        name, _, value = first.partition("=")
        attrs = {}
        for part in rest:
            key, _, val = part.partition("=")
            attrs[key.lower()] = val
        return cls(name, value, attrs)

    @property
    def max_age(self) -> int | None:
        return int(self.attrs["max-age"]) if "max-age" in self.attrs else None


@dataclass
class Reply:
    """A response as a client receives it: status, header lines in order, body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def header(self, name: str) -> str | None:
        values = self.header_values(name)
        return ", ".join(values) if values else None

    @property
    def set_cookies(self) -> list[SetCookie]:
        return [SetCookie.parse(line) for line in self.header_values("Set-Cookie")]

    def cookie(self, name: str = "session") -> SetCookie | None:
        """The one ``Set-Cookie`` for ``name``, or None (two for one name is a bug)."""
        found = [c for c in self.set_cookies if c.name == name]
        assert len(found) <= 1, f"Set-Cookie sent {len(found)} times for {name!r}"
        return found[0] if found else None

    @property
    def public_id(self) -> str | None:
        """The value of the ``session`` cookie this reply sets, or None."""
        found = self.cookie()
        return found.value if found else None

    def session_pair(self, name: str = "session") -> str:
        """The ``name=value`` pair to send back, checking the id is well formed."""
        cookie = self.cookie(name)
        assert cookie is not None, f"no Set-Cookie for {name!r} in {self.headers}"
        assert ids.is_public_id(cookie.value)
        return f"{name}={cookie.value}"

    @property
    def json(self) -> Any:
        return json.loads(self.body)


def wsgi_call(
    app: Callable[..., Iterable[bytes]],
    path: str = "/",
    *,
    method: str = "GET",
    cookie: str | None = None,
    https: bool = False,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    remote_addr: str | None = None,
) -> Reply:
    """Call a WSGI app once, the way a server would, and return what it sent."""
    path, _, query = path.partition("?")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "example.com",
        "SERVER_PORT": "443" if https else "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "example.com",
        "SCRIPT_NAME": "",
        "wsgi.url_scheme": "https" if https else "http",
        "wsgi.version": (1, 0),
        "wsgi.input": io.BytesIO(body),
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    if remote_addr is not None:
        environ["REMOTE_ADDR"] = remote_addr
    for name, value in (headers or {}).items():
        key = name.upper().replace("-", "_")
        environ[key if key == "CONTENT_TYPE" else "HTTP_" + key] = value
    started: list[Any] = []

    def start_response(
        status: str, header_list: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        started[:] = [status, header_list]
        return lambda data: None

    chunks = app(environ, start_response)
    try:
        body = b"".join(chunks)
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    return Reply(int(started[0][:3]), list(started[1]), body)


def asgi_call(
    app: Callable[..., Any],
    path: str = "/",
    *,
    headers: Sequence[tuple[str, str]] = (),
    container: type[list[Any]] | type[tuple[Any, ...]] = list,
) -> Reply:
    """Call an ASGI app once with a scope as servers build it: ``headers`` (repeated
    names kept apart, as HTTP/2 sends cookie crumbs) in a ``container`` of byte pairs,
    ``client`` a tuple. Unlike falcon.testing, nothing in the scope is a one-shot
    iterator."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "2",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": container(
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in [("host", "example.com"), *headers]
        ),
        "client": ("203.0.113.7", 50000),
        "server": ("example.com", 80),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(event: dict[str, Any]) -> None:
        sent.append(event)

    asyncio.run(app(scope, receive, send))
    start = next(event for event in sent if event["type"] == "http.response.start")
    body = b"".join(
        event.get("body", b"") for event in sent if event["type"] == "http.response.body"
    )
    lines = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start["headers"]]
    return Reply(start["status"], lines, body)


class SlowRequest:
    """Run a request in a thread whose handler waits: ``loaded`` set, ``release`` awaited."""

    def __init__(self, send: Callable[[], Reply]) -> None:
        self.loaded = threading.Event()
        self.release = threading.Event()
        self.reply: Reply | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)

    def _run(self, send: Callable[[], Reply]) -> None:
        try:
            self.reply = send()
        except BaseException as exc:
            self.error = exc
            self.loaded.set()

    def start(self) -> None:
        self._thread.start()
        assert self.loaded.wait(10), "the slow handler never loaded its session"

    def finish(self) -> Reply:
        self.release.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the slow request never finished"
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply
