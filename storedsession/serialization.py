"""Session data to JSON bytes and back, refusing anything JSON would change."""

from __future__ import annotations

import json
import math
from typing import Any

from .exceptions import SerializationError

#: How deeply containers may nest inside a session value (the session itself not counted).
MAX_DEPTH = 64

_SCALARS = frozenset((str, int, bool, type(None)))
_CONTAINERS = frozenset((dict, list))
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_decoder = json.JSONDecoder()
_decode = _decoder.decode
#: The C scanner under ``_decode``: what :func:`dumps` wrote, it parses whole in one call,
#: without the two regular expressions and two Python calls of ``decode`` around it.
_scan = _decoder.scan_once  # type: ignore[attr-defined]  # set in __init__, not typed


def _scalar(value: Any, kind: type, key: str) -> None:
    """Check a value that is not a container (the caller has ruled out str, int, bool, None)."""
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(
                f"Session key {key!r} holds a float that is not finite; JSON cannot hold "
                "NaN or infinity.",
                key,
            )
        return
    raise SerializationError(
        f"Session key {key!r} holds a {kind.__name__}, which JSON cannot hold as it is. "
        "Store str, int, float, bool, None, list or dict values.",
        key,
    )


def _check(value: Any, key: str, depth: int) -> None:
    """Check a container and everything in it (scalars inline: this runs on every save)."""
    if depth >= MAX_DEPTH:
        raise SerializationError(
            f"Session key {key!r} nests containers more than {MAX_DEPTH} levels deep.", key
        )
    if type(value) is dict:
        for name in value:
            if type(name) is not str:
                raise SerializationError(
                    f"Session key {key!r} holds a dict with a {type(name).__name__} key; "
                    "JSON objects take string keys only.",
                    key,
                )
        items = value.values()
    else:
        items = value
    for item in items:
        kind = type(item)
        if kind in _SCALARS:
            continue
        if kind in _CONTAINERS:
            _check(item, key, depth + 1)
        else:
            _scalar(item, kind, key)


def dumps(data: dict[str, Any]) -> bytes:
    """Serialize session data to UTF-8 JSON, or raise :class:`SerializationError`."""
    for key, value in data.items():
        if type(key) is not str:
            raise SerializationError(
                f"Session keys must be strings, not {type(key).__name__}.", None
            )
        kind = type(value)
        if kind in _SCALARS:
            continue
        if kind in _CONTAINERS:
            _check(value, key, 0)
        else:
            _scalar(value, kind, key)
    return _encode(data).encode("utf-8", "surrogatepass")


def loads(raw: bytes) -> dict[str, Any]:
    """Parse what :func:`dumps` wrote; anything else raises ``ValueError``."""
    text = raw.decode("utf-8", "surrogatepass")
    try:
        data, end = _scan(text, 0)
    except StopIteration:  # not a JSON value at the start: the full parser says why
        end = -1
    if end != len(text):  # whitespace around it, or more after it: as json.loads decides
        data = _decode(text)
    if type(data) is not dict:
        raise ValueError("a session payload is a JSON object")
    return data
