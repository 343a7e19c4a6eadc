"""Encryption keys: parsing, validation and the newest-first key list."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .exceptions import ConfigurationError

#: The environment variable read when ``keys=`` is not given.
KEYS_ENV = "STOREDSESSION_KEYS"

_HOW_TO = "Make a key with `storedsession generate-key`."
_URLSAFE_B64 = re.compile(r"[A-Za-z0-9_-]{43}=?\Z")


def generate_key() -> str:
    """Return a fresh key: 32 random bytes as URL-safe base64."""
    return base64.urlsafe_b64encode(os.urandom(32)).decode("ascii")


@dataclass(frozen=True, repr=False)
class Key:
    """One 256-bit key and its public 4-byte id (a hash prefix, not the key)."""

    secret: bytes
    key_id: bytes

    def __repr__(self) -> str:
        return f"<Key id={self.key_id.hex()}>"


def _decode(text: str, position: int) -> bytes:
    # The key itself never goes into a message: it may end up in a log.
    if not isinstance(text, str) or not _URLSAFE_B64.match(text.strip()):
        raise ConfigurationError(f"Key #{position} is not 32 bytes of URL-safe base64. {_HOW_TO}")
    text = text.strip()
    try:
        secret = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):  # pragma: no cover - the pattern rules it out
        raise ConfigurationError(
            f"Key #{position} is not 32 bytes of URL-safe base64. {_HOW_TO}"
        ) from None
    if len(secret) != 32:  # pragma: no cover - 43 characters always give 32 bytes
        raise ConfigurationError(f"Key #{position} is not 32 bytes long. {_HOW_TO}")
    return secret


def _key_id(secret: bytes) -> bytes:
    return hashlib.sha256(b"storedsession key id\0" + secret).digest()[:4]


def environment_keys() -> list[str]:
    """Return the keys listed in ``STOREDSESSION_KEYS``, newest first (none when unset)."""
    return [part.strip() for part in os.environ.get(KEYS_ENV, "").split(",") if part.strip()]


def parse_keys(keys: str | Sequence[str] | None) -> tuple[Key, ...]:
    """Turn ``keys=`` (or ``STOREDSESSION_KEYS`` when it is None) into keys, newest first."""
    texts: Sequence[str]
    if keys is None:
        texts = environment_keys()
        if not texts:
            raise ConfigurationError(
                f"No session encryption key: pass keys=[...] or set {KEYS_ENV} "
                f"(keys separated by commas, newest first). {_HOW_TO}"
            )
    elif isinstance(keys, str):
        texts = [keys]
    else:
        texts = list(keys)
    if not texts:
        raise ConfigurationError(f"The list of keys is empty. {_HOW_TO}")
    parsed: list[Key] = []
    for position, text in enumerate(texts, start=1):
        secret = _decode(text, position)
        if any(key.secret == secret for key in parsed):
            raise ConfigurationError(
                f"Key #{position} is listed twice. List each key once, newest first."
            )
        parsed.append(Key(secret, _key_id(secret)))
    return tuple(parsed)
