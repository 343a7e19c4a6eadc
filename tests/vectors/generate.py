"""Known-answer envelopes, built from the written format alone (not from storedsession.crypto).

``python -m tests.vectors.generate`` writes ``envelope-v2.json`` next to this file from the
fixed keys, salts, nonces and rows below. It was run once; the tests run the same code and
check that it still gives the stored file byte for byte, that storedsession opens every
vector, and that this independent reading of SECURITY.md's layout agrees with the package.
Format 1 (``envelope-v1.json``) is reproduced from the salt and nonce inside each stored
envelope. :func:`seal_v1` also lets the tests write rows in format 1, which the package no
longer writes.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

HERE = Path(__file__).parent
V2_PATH = HERE / "envelope-v2.json"
#: The keys of envelope-v1.json, newest first.
KEYS = [
    "-qOsiOoWWaPtRL9bG0UDLeUCkDFMQYheNKwMi33sUWc=",
    "vRzLGpFmcT1AAf491kN2cXXuG3ykeyEL_jTj8YKRpt8=",
]
TABLE = "stored_sessions"
_NULL = b"\xff\xff\xff\xff"

#: The rows of envelope-v2.json: random values drawn once and written down here.
V2_CASES: list[dict[str, Any]] = [
    {
        "key": KEYS[0],
        "public_id": "j9VKDfIlNYRne5BiJAjuCZudwVMEQFxUV9vlcgGY7iE",
        "salt": "dbdc1709177a40729a36b5fd8ea9d5a2",
        "nonce": "4e6242392836d279e7ad571d",
        "user_id": "42",
        "created_at": 1767268800000,
        "idle_timeout": None,
        "metadata": {},
        "data": {"user_id": 42, "cart": [1, 2, 3], "name": "Zoë 😀"},
    },
    {
        "key": KEYS[1],
        "public_id": "JtedbBAa7exdk0kcu4iLBSwOOSK-I5oC3kNYw3zv9KU",
        "salt": "73f876706c2820073112641780238d16",
        "nonce": "0dabef02b1e704c3600aca2e",
        "user_id": None,
        "created_at": 1767268800123,
        "idle_timeout": 0,
        "metadata": {},
        "data": {},
    },
    {
        "key": KEYS[0],
        "public_id": "xB5-lg172Gsw4bjqzpvJby2mjT7EGkTVemi-xHO_Jik",
        "salt": "513c5314d12dfcfd921ddf7ee977a7c7",
        "nonce": "9497f5e055e07ffa10871e4f",
        "user_id": "Zoë ",
        "created_at": 1767200000000,
        "idle_timeout": 3600,
        "metadata": {"user_agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0", "ip": "::1"},
        "data": {"nested": {"a": [None, True, 1.5, "x"]}},
    },
]


def secret(key: str) -> bytes:
    """Return the 32 bytes of a key as ``storedsession generate-key`` prints it."""
    return base64.urlsafe_b64decode(key)


def key_id(key: str) -> bytes:
    """Return a key's public 4-byte id."""
    return hashlib.sha256(b"storedsession key id\0" + secret(key)).digest()[:4]


def handle_for(public_id: str) -> str:
    """Return the stored id of a public id."""
    return hashlib.sha256(public_id.encode("ascii")).hexdigest()


def _subkey(key: str, salt: bytes) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"storedsession v1")
    return AESGCM(hkdf.derive(secret(key)))


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def seal_v1(
    key: str, salt: bytes, nonce: bytes, table: str, handle: str, plaintext: bytes
) -> bytes:
    """Seal in format 1: only the header, the table name and the stored id are bound."""
    header = b"\x01" + key_id(key) + salt
    aad = header + b"\0" + table.encode("utf-8") + b"\0" + handle.encode("ascii")
    return header + nonce + _subkey(key, salt).encrypt(nonce, plaintext, aad)


def _field(value: bytes | None) -> bytes:
    return _NULL if value is None else len(value).to_bytes(4, "big") + value


def aad_v2(
    header: bytes, table: str, handle: str, user_id: str | None, created: int, idle: int | None
) -> bytes:
    """The associated data of format 2: the header, then each field length-prefixed."""
    return header + b"".join(
        _field(part)
        for part in (
            table.encode("utf-8"),
            handle.encode("ascii"),
            None if user_id is None else user_id.encode("utf-8"),
            b"%d" % created,
            None if idle is None else b"%d" % idle,
        )
    )


def seal_v2(
    key: str,
    salt: bytes,
    nonce: bytes,
    table: str,
    handle: str,
    user_id: str | None,
    created: int,
    idle: int | None,
    metadata: dict[str, Any],
    data: dict[str, Any],
) -> bytes:
    """Seal in format 2: the plaintext is the metadata JSON, length-prefixed, then the data."""
    header = b"\x02" + key_id(key) + salt
    meta = _json(metadata)
    plaintext = len(meta).to_bytes(4, "big") + meta + _json(data)
    aad = aad_v2(header, table, handle, user_id, created, idle)
    return header + nonce + _subkey(key, salt).encrypt(nonce, plaintext, aad)


def build_v2() -> dict[str, Any]:
    """Return the content of envelope-v2.json."""
    vectors = []
    for case in V2_CASES:
        handle = handle_for(case["public_id"])
        envelope = seal_v2(
            case["key"],
            bytes.fromhex(case["salt"]),
            bytes.fromhex(case["nonce"]),
            TABLE,
            handle,
            case["user_id"],
            case["created_at"],
            case["idle_timeout"],
            case["metadata"],
            case["data"],
        )
        vectors.append(
            {
                **case,
                "table_name": TABLE,
                "sid": handle,
                "plaintext": _json(case["data"]).decode("utf-8"),
                "envelope": envelope.hex(),
            }
        )
    return {"format": 2, "keys": KEYS, "generator": "tests/vectors/generate.py", "vectors": vectors}


def render(content: dict[str, Any]) -> str:
    """Return the text of a vectors file."""
    return json.dumps(content, ensure_ascii=False, indent=2) + "\n"


if __name__ == "__main__":
    V2_PATH.write_text(render(build_v2()), "utf-8")
    print(f"Wrote {V2_PATH}.")
