"""What a session records of its client when it signs in, and the label people recognise.

The adapters hand the store the raw ``User-Agent`` and address of a request only when its
save signs the session in (it gets a user id, or is regenerated with one); every other
request reads and parses nothing.
The details go into the sealed metadata map (encrypted and bound to the row) as ``ua``
and ``ip``, and are turned into a label only when a user's sessions are listed, by the
uap-core parser of the ``devices`` extra (``ua-parser``) when it is installed and by a
small table of common browsers and systems otherwise.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Any

#: Characters of a ``User-Agent`` kept; the rest is cut off.
MAX_USER_AGENT = 512
#: The metadata keys this module owns.
USER_AGENT, IP = "ua", "ip"
#: A client's details as an adapter reads them: a callable, so that only a save that
#: signs in pays for reading them. It returns the raw user agent and address, or None.
Client = Callable[[], tuple[object, object]]

UNKNOWN = "Unknown browser"
_LONGEST_ADDRESS = 64  # an IPv6 address with a scope id fits; anything longer is junk


def user_agent(value: object) -> str | None:
    """Return the user agent to record, as given but cut to 512 characters, or None."""
    if not isinstance(value, str) or not value:
        return None
    return value[:MAX_USER_AGENT]


def ip_address(value: object) -> str | None:
    """Return ``value`` as a normalised IP address, or None when it is not one.

    IPv4-mapped IPv6 (``::ffff:192.0.2.1``, as a dual-stack socket reports IPv4 clients)
    becomes the IPv4 address; a scope id (``%eth0``) is dropped.
    """
    if not isinstance(value, str) or len(value) > _LONGEST_ADDRESS:
        return None
    try:
        address = ipaddress.ip_address(value.strip(" \t"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.scope_id is not None:
            address = ipaddress.IPv6Address(int(address))
    return str(address)


def recorded(metadata: Mapping[str, Any], client: Client) -> dict[str, Any]:
    """Return ``metadata`` with the details of ``client`` in place of any earlier ones."""
    raw_agent, raw_address = client()
    updated = without_client(metadata)
    agent, address = user_agent(raw_agent), ip_address(raw_address)
    if agent is not None:
        updated[USER_AGENT] = agent
    if address is not None:
        updated[IP] = address
    return updated


def without_client(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of ``metadata`` without the client's details (an anonymous session's)."""
    return {k: v for k, v in metadata.items() if k != USER_AGENT and k != IP}


def stored(metadata: Mapping[str, Any], key: str) -> str | None:
    """Return the recorded ``key`` (``ua`` or ``ip``), or None when none was recorded."""
    value = metadata.get(key)
    return value if isinstance(value, str) else None


# -- labels ------------------------------------------------------------------------------
# The built-in table, first match wins: Edge and Opera say "Chrome", Chrome says "Safari",
# and iOS says "like Mac OS X" while Android says "Linux".
_BROWSERS = (
    ("Edge", ("Edg/", "EdgA/", "EdgiOS/", "Edge/")),
    ("Opera", ("OPR/", "OPT/", "Opera")),
    ("Samsung Internet", ("SamsungBrowser/",)),
    ("Firefox", ("Firefox/", "FxiOS/")),
    ("Chrome", ("CriOS/", "Chrome/", "Chromium/")),
    ("Safari", ("Safari/",)),
    ("Internet Explorer", ("Trident/", "MSIE ")),
)
_SYSTEMS = (
    ("iOS", ("iPhone", "iPad", "iPod")),
    ("Android", ("Android",)),
    ("ChromeOS", ("CrOS",)),
    ("Windows", ("Windows",)),
    ("macOS", ("Macintosh", "Mac OS X")),
    ("Linux", ("Linux", "X11")),
)
# The parser's names, where the built-in table says it as people do, so that a common
# browser gets the same label with and without the extra.
_SAME_AS_BUILTIN = {
    "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome",
    "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox",
    "Mobile Safari": "Safari",
    "Edge Mobile": "Edge",
    "Opera Mobile": "Opera",
    "IE": "Internet Explorer",
    "Mac OS X": "macOS",
    "Chrome OS": "ChromeOS",
}
_PRODUCT = re.compile(r"([A-Za-z][A-Za-z0-9._-]{0,31})/")
_LONGEST_NAME = 40
_parser: Any = None  # the ua_parser module once looked for, False when it is not installed


def _builtin(agent: str) -> tuple[str | None, str | None]:
    browser = next((name for name, marks in _BROWSERS if any(m in agent for m in marks)), None)
    system = next((name for name, marks in _SYSTEMS if any(m in agent for m in marks)), None)
    return browser, system


def _from_parser(agent: str) -> tuple[str | None, str | None] | None:
    global _parser
    if _parser is None:
        try:  # imported on first use: it takes a tenth of a second
            import ua_parser
        except ImportError:
            _parser = False
        else:
            _parser = ua_parser
    if _parser is False:
        return None
    browser, system = _parser.parse_user_agent(agent), _parser.parse_os(agent)
    return (browser.family if browser else None), (system.family if system else None)


def _name(text: str | None) -> str | None:
    """Return a parsed name fit to show: printable, short, in the built-in table's words."""
    if not text:
        return None
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    text = _SAME_AS_BUILTIN.get(text, text)
    return text[:_LONGEST_NAME] or None


@functools.lru_cache(maxsize=1024)
def _label(agent: str) -> str:
    browser, system = _builtin(agent)
    parsed = _from_parser(agent)
    if parsed is not None:  # the parser knows more browsers; the table fills its gaps
        browser, system = _name(parsed[0]) or browser, _name(parsed[1]) or system
    if browser is None:
        product = _PRODUCT.match(agent)  # curl/8.5.0, python-requests/2.31
        if product is not None and system is None and product.group(1) != "Mozilla":
            browser = product.group(1)
    if browser and system:
        return f"{browser} on {system}"
    if system:
        return f"{UNKNOWN} on {system}"
    return browser or UNKNOWN


def label(agent: str | None) -> str | None:
    """Return a short label such as "Firefox on Linux" for a user agent; None for none."""
    return None if agent is None else _label(agent)
