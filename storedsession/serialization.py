"""Session data to JSON bytes and back, refusing anything JSON would change."""

from __future__ import annotations

import json
import math
from typing import Any

from .exceptions import SerializationError

#: How deeply containers may nest inside a session value (the session itself not counted).
MAX_DEPTH = 64

_SCALARS = (str, int, bool, type(None))
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_decode = json.JSONDecoder().decode


def _check(value: Any, key: str, depth: int) -> None:
    kind = type(value)
    if kind in _SCALARS:
        return
    if kind is float:
        if not math.isfinite(value):
            raise SerializationError(
                f"Session key {key!r} holds a float that is not finite; JSON cannot hold "
                "NaN or infinity.",
                key,
            )
        return
    if depth >= MAX_DEPTH:
        raise SerializationError(
            f"Session key {key!r} nests containers more than {MAX_DEPTH} levels deep.", key
        )
    if kind is list:
        for item in value:
            _check(item, key, depth + 1)
    elif kind is dict:
        for name, item in value.items():
            if type(name) is not str:
                raise SerializationError(
                    f"Session key {key!r} holds a dict with a {type(name).__name__} key; "
                    "JSON objects take string keys only.",
                    key,
                )
            _check(item, key, depth + 1)
    else:
        raise SerializationError(
            f"Session key {key!r} holds a {kind.__name__}, which JSON cannot hold as it is. "
            "Store str, int, float, bool, None, list or dict values.",
            key,
        )


def dumps(data: dict[str, Any]) -> bytes:
    """Serialize session data to UTF-8 JSON, or raise :class:`SerializationError`."""
    for key, value in data.items():
        if type(key) is not str:
            raise SerializationError(
                f"Session keys must be strings, not {type(key).__name__}.", None
            )
        _check(value, key, 0)
    return _encode(data).encode("utf-8", "surrogatepass")


def loads(raw: bytes) -> dict[str, Any]:
    """Parse what :func:`dumps` wrote; anything else raises ``ValueError``."""
    data = _decode(raw.decode("utf-8", "surrogatepass"))
    if type(data) is not dict:
        raise ValueError("a session payload is a JSON object")
    return data
