"""The payload envelope: AES-256-GCM under per-process sub-keys, bound to its row and columns.

Layout of a sealed payload, in both formats::

    version (1) | key id (4) | salt (16) | nonce (12) | ciphertext + tag (16)

The sub-key is HKDF-SHA256(key, salt). Each process draws a random salt at start, again
in every forked child (however it was forked: :func:`storedsession.forks.generation`) and
a new one every ``SUBKEY_MESSAGES`` messages, so no AES key ever sees anywhere near the
2**32 random nonces that AES-GCM allows. Sub-keys are cached, so no message pays for a key
derivation.

Format 2 (written by this release) authenticates what the store trusts. Its associated
data is the header followed by five length-prefixed fields (4-byte big-endian length, or
``ff ff ff ff`` for NULL, so NULL and the empty string differ and no field can run into
the next): the table name, the stored id, ``user_id`` (UTF-8), ``created_at`` (epoch ms)
and the session's own ``idle_timeout`` (seconds), the integers as decimal ASCII. A row
whose columns were edited without the keys therefore does not open. Its plaintext is a
metadata map and the data: ``length (4, big-endian) | metadata JSON | data JSON``; new
fields go in the map, not in a new format. ``last_seen_at`` and ``expires_at`` are not
bound (a touch does not re-seal); the store checks them for sanity instead.

Format 1 (earlier releases) bound only ``header \\0 table \\0 stored id``, and its plaintext
is the data alone. It still opens, unless ``legacy=False``, and always "needs rotation".

Concurrency: the sub-key in use and its header are one immutable :class:`_Sealer`,
replaced whole, so a thread never pairs a new header with an old sub-key. Its generation
says which process drew it: a forked child renews before its first message, under a
lock of its own (:class:`storedsession.forks.Lock`; one inherited may be held by a thread
that does not exist in the child). Two threads racing there at worst both renew, each
with its own fresh salt.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from . import forks, serialization
from .keys import Key

#: The format this release writes.
FORMAT_VERSION = 2
LEGACY_FORMAT = 1
_VERSION_BYTE = bytes([FORMAT_VERSION])
_HEADER = 1 + 4 + 16
_NONCE = 12
_TAG = 16
_META_LENGTH = 4
#: Bytes an envelope adds to its data, besides the metadata JSON (``{}`` when empty).
OVERHEAD = _HEADER + _NONCE + _TAG + _META_LENGTH
#: Messages encrypted under one sub-key before a new salt is drawn (2**24, far below 2**32).
SUBKEY_MESSAGES = 1 << 24
_CACHE_SIZE = 256
_NULL = b"\xff\xff\xff\xff"
_EMPTY_META = (2).to_bytes(_META_LENGTH, "big") + b"{}"


class DecryptionFailed(Exception):
    """Internal: why an envelope could not be opened (never leaves the store)."""


class KeyNotConfigured(DecryptionFailed):
    """Internal: the envelope names a key id this store does not have."""


def _derive(key: Key, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"storedsession v1")
    return AESGCM(hkdf.derive(key.secret))


_length = struct.Struct(">I").pack


def _table_fields(table_name: str) -> bytes:
    name = table_name.encode("utf-8")
    return _length(len(name)) + name


def _row_fields(handle: str, user_id: Any, created: Any, idle: Any) -> bytes:
    # Runs on every load and save: one join, no helper calls. Types are checked exactly,
    # since a SQLite column can hold text where an integer belongs, and a bool is an int
    # to Python but never one to the database.
    if type(created) is not int or not (idle is None or type(idle) is int):
        raise DecryptionFailed("a stored column holds a value of the wrong type")
    if user_id is None:
        user = _NULL
    elif type(user_id) is str:
        user = user_id.encode("utf-8", "surrogatepass")
        user = _length(len(user)) + user
    else:
        raise DecryptionFailed("a stored column holds a value of the wrong type")
    row = handle.encode("ascii")
    since = b"%d" % created
    if idle is None:
        return b"".join((_length(len(row)), row, user, _length(len(since)), since, _NULL))
    seconds = b"%d" % idle
    return b"".join(
        (_length(len(row)), row, user, _length(len(since)), since, _length(len(seconds)), seconds)
    )


def associated_data(
    header: bytes, table_name: str, handle: str, user_id: str | None, created: int, idle: int | None
) -> bytes:
    """Return the associated data of format 2 for one row of one table."""
    return header + _table_fields(table_name) + _row_fields(handle, user_id, created, idle)


class _Sealer(NamedTuple):
    """What one process seals with until its budget runs out: replaced whole, never edited."""

    header: bytes
    aead: AESGCM
    budget: Iterator[int]
    generation: int


class Envelope:
    """Seal and open payloads with a newest-first list of keys.

    ``legacy=False`` refuses envelopes of format 1 (whose columns are not authenticated).
    """

    def __init__(self, keys: Sequence[Key], table_name: str, *, legacy: bool = True) -> None:
        self.keys = tuple(keys)
        self.table_name = table_name
        self.legacy = legacy
        self._aad_table = _table_fields(table_name)
        self._aad_v1_table = b"\0" + table_name.encode("utf-8") + b"\0"
        self._by_id: dict[bytes, list[Key]] = {}
        for key in self.keys:
            self._by_id.setdefault(key.key_id, []).append(key)
        self._lock = forks.Lock()
        self._cache: OrderedDict[bytes, AESGCM] = OrderedDict()
        self._sealer = self._new_sealer()

    # -- sealing -------------------------------------------------------------------
    def _new_sealer(self) -> _Sealer:
        salt = os.urandom(16)
        key = self.keys[0]
        return _Sealer(
            _VERSION_BYTE + key.key_id + salt,
            _derive(key, salt),
            itertools.count(SUBKEY_MESSAGES, -1),
            forks.generation(),
        )

    def _current(self) -> _Sealer:
        sealer = self._sealer
        if sealer.generation == forks.generation() and next(sealer.budget) > 0:
            return sealer
        with self._lock:
            if self._sealer is sealer:  # no other thread renewed it meanwhile
                self._sealer = self._new_sealer()
            return self._sealer

    def seal(
        self,
        data: bytes,
        handle: str,
        user_id: str | None,
        created: int,
        idle: int | None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Encrypt ``data`` (JSON) and ``metadata`` for the row ``handle`` with these columns."""
        sealer = self._current()
        if metadata:
            meta = serialization.dumps(dict(metadata))
            plaintext = len(meta).to_bytes(_META_LENGTH, "big") + meta + data
        else:
            plaintext = _EMPTY_META + data
        header = sealer.header
        aad = header + self._aad_table + _row_fields(handle, user_id, created, idle)
        nonce = os.urandom(_NONCE)
        return header + nonce + sealer.aead.encrypt(nonce, plaintext, aad)

    # -- opening -------------------------------------------------------------------
    def open(
        self, envelope: bytes, handle: str, user_id: str | None, created: int, idle: int | None
    ) -> tuple[dict[str, Any], bytes]:
        """Return the metadata and the data JSON of an envelope read from the row ``handle``.

        ``user_id``, ``created`` and ``idle`` are the row's columns, which format 2 binds.
        Raises :class:`DecryptionFailed` when it does not open.
        """
        version = envelope[0] if len(envelope) >= _HEADER + _NONCE + _TAG else 0
        header = envelope[:_HEADER]
        if version == FORMAT_VERSION:
            aad = header + self._aad_table + _row_fields(handle, user_id, created, idle)
        elif version == LEGACY_FORMAT:
            if not self.legacy:
                raise DecryptionFailed("format 1, which legacy_envelopes=False refuses")
            aad = header + self._aad_v1_table + handle.encode("ascii")
        else:
            raise DecryptionFailed("not a storedsession envelope of a known format")
        plaintext = self._decrypt(header, envelope[_HEADER : _HEADER + _NONCE], envelope, aad)
        if version == LEGACY_FORMAT:
            return {}, plaintext
        return _split(plaintext)

    def _decrypt(self, header: bytes, nonce: bytes, envelope: bytes, aad: bytes) -> bytes:
        body = envelope[_HEADER + _NONCE :]
        subkey = header[1:]  # key id and salt: the same sub-key in either format
        aead = self._cache.get(subkey)  # a single dict read needs no lock
        if aead is not None:
            try:
                return aead.decrypt(nonce, body, aad)
            except InvalidTag:
                pass  # tampered, or (once in 2**32) another key with the same id
        candidates = self._by_id.get(header[1:5])
        if not candidates:
            raise KeyNotConfigured("encrypted with a key that is not configured")
        for key in candidates:
            aead = _derive(key, header[5:])
            try:
                plaintext = aead.decrypt(nonce, body, aad)
            except InvalidTag:
                continue
            self._remember(subkey, aead)
            return plaintext
        raise DecryptionFailed(
            "authentication failed (the ciphertext was altered, moved or foreign, or its "
            "row's user_id, creation time or idle timeout was edited)"
        )

    def needs_rotation(self, envelope: bytes) -> bool:
        """Tell whether an envelope is not format 2 under the newest key."""
        return envelope[:1] != _VERSION_BYTE or envelope[1:5] != self.keys[0].key_id

    def _remember(self, subkey: bytes, aead: AESGCM) -> None:
        with self._lock:
            self._cache[subkey] = aead
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)  # the oldest salt first


def _split(plaintext: bytes) -> tuple[dict[str, Any], bytes]:
    """Split the plaintext of format 2 into the metadata map and the data JSON."""
    if plaintext.startswith(_EMPTY_META):
        return {}, plaintext[len(_EMPTY_META) :]
    end = _META_LENGTH + int.from_bytes(plaintext[:_META_LENGTH], "big")
    if len(plaintext) < end:
        raise ValueError("the metadata runs past the end of the plaintext")
    return serialization.loads(plaintext[_META_LENGTH:end]), plaintext[end:]
