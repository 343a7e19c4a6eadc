"""Session ids: drawn from ``secrets``, checked for shape, stored only as a hash."""

from __future__ import annotations

import hashlib
import re
import secrets

#: Bytes of randomness in a public id (256 bits).
ID_BYTES = 32

# 32 bytes are 43 characters of unpadded URL-safe base64; the last character carries
# only 2 of its 6 bits, so only the characters whose 4 low bits are zero are canonical.
_PUBLIC_ID = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]\Z")
_HANDLE = re.compile(r"[0-9a-f]{64}\Z")


def new_public_id() -> str:
    """Draw a fresh public id for a cookie."""
    return secrets.token_urlsafe(ID_BYTES)


def is_public_id(value: object) -> bool:
    """Tell whether ``value`` has the exact shape of a public id."""
    return isinstance(value, str) and _PUBLIC_ID.match(value) is not None


def is_handle(value: object) -> bool:
    """Tell whether ``value`` has the exact shape of a stored (hashed) id."""
    return isinstance(value, str) and _HANDLE.match(value) is not None


def handle_for(public_id: str) -> str:
    """Return the stored id (SHA-256, hex) of a public id."""
    return hashlib.sha256(public_id.encode("ascii")).hexdigest()
