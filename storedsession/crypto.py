"""The payload envelope: AES-256-GCM under per-process sub-keys, bound to its row.

Layout of a sealed payload (format 1)::

    version (1) | key id (4) | salt (16) | nonce (12) | ciphertext + tag (16)

The sub-key is HKDF-SHA256(key, salt). Each process draws a random salt at start (and
after a fork) and a new one every ``SUBKEY_MESSAGES`` messages, so no AES key ever sees
anywhere near the 2**32 random nonces that AES-GCM allows. Sub-keys are cached, so no
message pays for a key derivation. The associated data covers the header, the table name
and the stored id: ciphertext moved to another row or table does not decrypt.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .exceptions import ConfigurationError
from .keys import Key

FORMAT_VERSION = 1
_VERSION_BYTE = bytes([FORMAT_VERSION])
_HEADER = 1 + 4 + 16
_NONCE = 12
_TAG = 16
#: Bytes an envelope adds to its plaintext.
OVERHEAD = _HEADER + _NONCE + _TAG
#: Messages encrypted under one sub-key before a new salt is drawn (2**24, far below 2**32).
SUBKEY_MESSAGES = 1 << 24
_CACHE_SIZE = 256


_LIVE: weakref.WeakSet[Envelope] = weakref.WeakSet()


def _renew_all_after_fork() -> None:
    # A forked worker must not go on with its parent's salt and message budget.
    for envelope in list(_LIVE):
        envelope._renew()


os.register_at_fork(after_in_child=_renew_all_after_fork)


class DecryptionFailed(Exception):
    """Internal: why an envelope could not be opened (never leaves the store)."""


def _derive(key: Key, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"storedsession v1")
    return AESGCM(hkdf.derive(key.secret))


def associated_data(header: bytes, table_name: str, sid: str) -> bytes:
    """Return the associated data that binds an envelope to one row of one table."""
    return b"%s\0%s\0%s" % (header, table_name.encode("utf-8"), sid.encode("ascii"))


class Envelope:
    """Seal and open payloads with a newest-first list of keys."""

    def __init__(self, keys: Sequence[Key], table_name: str) -> None:
        self.keys = tuple(keys)
        self.table_name = table_name
        self._aad_table = associated_data(b"", table_name, "")  # b"\0<table>\0"
        self._by_id: dict[bytes, list[Key]] = {}
        for key in self.keys:
            self._by_id.setdefault(key.key_id, []).append(key)
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._renew()
        _LIVE.add(self)

    def _renew(self) -> None:
        salt = os.urandom(16)
        key = self.keys[0]
        self._header = _VERSION_BYTE + key.key_id + salt
        self._aead = _derive(key, salt)
        self._budget = itertools.count(SUBKEY_MESSAGES, -1)

    def seal(self, plaintext: bytes, sid: str) -> bytes:
        """Encrypt ``plaintext`` for the row whose stored id is ``sid``."""
        if next(self._budget) <= 0:
            with self._lock:
                self._renew()
        header, aead = self._header, self._aead
        nonce = os.urandom(_NONCE)
        return (
            header
            + nonce
            + aead.encrypt(nonce, plaintext, header + self._aad_table + sid.encode("ascii"))
        )

    def open(self, envelope: bytes, sid: str) -> bytes:
        """Decrypt an envelope read from the row ``sid``, or raise :class:`DecryptionFailed`."""
        if len(envelope) < OVERHEAD or envelope[0] != FORMAT_VERSION:
            raise DecryptionFailed("not a storedsession envelope of a known format")
        header = envelope[:_HEADER]
        nonce = envelope[_HEADER : _HEADER + _NONCE]
        body = envelope[_HEADER + _NONCE :]
        aad = header + self._aad_table + sid.encode("ascii")
        aead = self._cache.get(header)  # a single dict read needs no lock
        if aead is not None:
            try:
                return aead.decrypt(nonce, body, aad)
            except InvalidTag:
                pass  # tampered, or (once in 2**32) another key with the same id
        candidates = self._by_id.get(header[1:5])
        if not candidates:
            raise DecryptionFailed("encrypted with a key that is not configured")
        for key in candidates:
            aead = _derive(key, header[5:])
            try:
                plaintext = aead.decrypt(nonce, body, aad)
            except InvalidTag:
                continue
            self._remember(header, aead)
            return plaintext
        raise DecryptionFailed("authentication failed (altered, moved or foreign ciphertext)")

    def needs_rotation(self, envelope: bytes) -> bool:
        """Tell whether an envelope was sealed with a key other than the newest."""
        return envelope[1:5] != self.keys[0].key_id

    def _remember(self, header: bytes, aead: AESGCM) -> None:
        with self._lock:
            self._cache[header] = aead
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)  # the oldest salt first


class NoKeys:
    """The envelope of a store built by :meth:`SessionStore.without_keys`: it refuses."""

    def _refuse(self, *args: object) -> NoReturn:
        raise ConfigurationError(
            "This store was built without keys, for the chores that never read a payload "
            "(create_table, expire, count_expired); reading or writing sessions needs keys."
        )

    seal = open = needs_rotation = _refuse
