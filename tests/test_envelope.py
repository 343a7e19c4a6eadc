"""The envelope: AES-256-GCM bound to its row and columns, rotation, sub-keys, known answers."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from storedsession import SessionStore, crypto, generate_key, ids
from storedsession.crypto import OVERHEAD, DecryptionFailed, Envelope
from storedsession.keys import parse_keys

from .support import FakeClock
from .vectors import generate

VECTORS = json.loads((Path(__file__).parent / "vectors" / "envelope-v1.json").read_text("utf-8"))
VECTORS_V2 = json.loads(generate.V2_PATH.read_text("utf-8"))
HANDLE = "ab" * 32
#: The columns a sealed payload is bound to besides its stored id: user_id, created, idle.
ROW: tuple[Any, ...] = ("7", 1767268800000, None)


@pytest.fixture
def envelope() -> Envelope:
    return Envelope(parse_keys([generate_key()]), "stored_sessions")


def seal_v1(envelope: Envelope, plaintext: bytes, handle: str) -> bytes:
    """Seal in format 1, which the package no longer writes, under the envelope's first key."""
    key = base64.urlsafe_b64encode(envelope.keys[0].secret).decode("ascii")
    salt, nonce = os.urandom(16), os.urandom(12)
    return generate.seal_v1(key, salt, nonce, envelope.table_name, handle, plaintext)


def test_round_trip_and_overhead(envelope: Envelope) -> None:
    sealed = envelope.seal(b'{"a":1}', HANDLE, *ROW)
    assert sealed[0] == crypto.FORMAT_VERSION == 2
    assert len(sealed) == len(b'{"a":1}') + len(b"{}") + OVERHEAD
    assert b'{"a":1}' not in sealed
    assert envelope.open(sealed, HANDLE, *ROW) == ({}, b'{"a":1}')


def test_metadata_travels_beside_the_data(envelope: Envelope) -> None:
    metadata = {"user_agent": "Firefox", "ip": "::1"}
    sealed = envelope.seal(b'{"a":1}', HANDLE, *ROW, metadata)
    assert envelope.open(sealed, HANDLE, *ROW) == (metadata, b'{"a":1}')


def test_same_plaintext_never_gives_the_same_ciphertext(envelope: Envelope) -> None:
    assert envelope.seal(b"x", HANDLE, *ROW) != envelope.seal(b"x", HANDLE, *ROW)


def test_bound_to_row_and_table(envelope: Envelope) -> None:
    sealed = envelope.seal(b"secret", HANDLE, *ROW)
    with pytest.raises(DecryptionFailed):
        envelope.open(sealed, "cd" * 32, *ROW)
    other_table = Envelope(envelope.keys, "other_sessions")
    with pytest.raises(DecryptionFailed):
        other_table.open(sealed, HANDLE, *ROW)


@pytest.mark.parametrize(
    "columns",
    [
        (None, 1767268800000, None),  # user_id dropped
        ("8", 1767268800000, None),  # another user
        ("7 ", 1767268800000, None),  # trailing space
        ("", 1767268800000, None),  # empty, not NULL
        ("7", 1767268800001, None),  # created moved by 1 ms
        ("7", 1767268800000, 0),  # idle NULL -> 0
        ("7", 1767268800000, 86400),  # idle stretched
    ],
)
def test_bound_to_user_id_creation_and_idle_timeout(envelope: Envelope, columns) -> None:
    sealed = envelope.seal(b"{}", HANDLE, *ROW)
    with pytest.raises(DecryptionFailed, match="authentication failed"):
        envelope.open(sealed, HANDLE, *columns)


def test_associated_data_is_unambiguous() -> None:
    header = b"\x02" + b"\0" * 20
    aad = crypto.associated_data
    pairs = [
        (("t", HANDLE, None, 1, None), ("t", HANDLE, "", 1, None)),  # NULL is not empty
        (("t", HANDLE, "1", 23, None), ("t", HANDLE, "12", 3, None)),  # no shifting across fields
        (("t", HANDLE, None, 1, None), ("t", HANDLE, None, 1, 0)),
        (("t", HANDLE, "a", 1, 2), ("t", HANDLE, "a", 12, None)),
        (("ta", HANDLE, None, 1, None), ("t", "a" + HANDLE, None, 1, None)),
    ]
    for left, right in pairs:
        assert aad(header, *left) != aad(header, *right)
    assert aad(header, "t", HANDLE, "Zoë", 1, 2) == generate.aad_v2(
        header, "t", HANDLE, "Zoë", 1, 2
    )


@pytest.mark.parametrize("bad", [("7", "1767268800000", None), ("7", 1, "60"), (b"7", 1, None)])
def test_columns_of_the_wrong_type_do_not_open(envelope: Envelope, bad) -> None:
    sealed = envelope.seal(b"{}", HANDLE, *ROW)
    with pytest.raises(DecryptionFailed, match="wrong type"):
        envelope.open(sealed, HANDLE, *bad)


def test_every_bit_flip_is_refused(envelope: Envelope) -> None:
    sealed = envelope.seal(b'{"k":"value"}', HANDLE, *ROW)
    for bit in range(len(sealed) * 8):
        tampered = bytearray(sealed)
        tampered[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(DecryptionFailed):
            envelope.open(bytes(tampered), HANDLE, *ROW)


def test_every_truncation_is_refused(envelope: Envelope) -> None:
    sealed = envelope.seal(b'{"k":"value"}', HANDLE, *ROW)
    for length in range(len(sealed)):
        with pytest.raises(DecryptionFailed):
            envelope.open(sealed[:length], HANDLE, *ROW)


def test_wrong_key_is_refused(envelope: Envelope) -> None:
    sealed = envelope.seal(b"x", HANDLE, *ROW)
    with pytest.raises(DecryptionFailed, match="not configured"):
        Envelope(parse_keys(generate_key()), "stored_sessions").open(sealed, HANDLE, *ROW)


def test_rotation_old_key_second_still_decrypts() -> None:
    old, new = generate_key(), generate_key()
    sealed = Envelope(parse_keys(old), "t").seal(b"x", HANDLE, *ROW)
    rotated = Envelope(parse_keys([new, old]), "t")
    assert rotated.open(sealed, HANDLE, *ROW) == ({}, b"x")
    assert rotated.needs_rotation(sealed)
    assert not rotated.needs_rotation(rotated.seal(b"x", HANDLE, *ROW))


def test_format_1_opens_needs_rotation_even_under_the_newest_key(envelope: Envelope) -> None:
    sealed = seal_v1(envelope, b'{"a":1}', HANDLE)
    assert sealed[0] == 1 and sealed[1:5] == envelope.keys[0].key_id
    # Format 1 binds no columns: any user_id, creation or idle timeout opens it.
    assert envelope.open(sealed, HANDLE, None, 0, None) == ({}, b'{"a":1}')
    assert envelope.open(sealed, HANDLE, "admin", 5, 10**6) == ({}, b'{"a":1}')
    assert envelope.needs_rotation(sealed)
    with pytest.raises(DecryptionFailed):
        envelope.open(sealed, "cd" * 32, *ROW)  # still bound to its row


def test_format_1_is_refused_without_legacy_envelopes(envelope: Envelope) -> None:
    strict = Envelope(envelope.keys, envelope.table_name, legacy=False)
    sealed = seal_v1(envelope, b"{}", HANDLE)
    with pytest.raises(DecryptionFailed, match="legacy_envelopes=False"):
        strict.open(sealed, HANDLE, *ROW)
    assert strict.open(strict.seal(b"{}", HANDLE, *ROW), HANDLE, *ROW) == ({}, b"{}")


@pytest.mark.parametrize("version", [0, 3, 255])
def test_unknown_formats_are_refused(envelope: Envelope, version: int) -> None:
    sealed = bytearray(envelope.seal(b"{}", HANDLE, *ROW))
    sealed[0] = version
    with pytest.raises(DecryptionFailed, match="known format"):
        envelope.open(bytes(sealed), HANDLE, *ROW)
    assert envelope.needs_rotation(bytes(sealed))


def test_subkey_is_renewed_long_before_the_nonce_limit(monkeypatch, envelope) -> None:
    assert crypto.SUBKEY_MESSAGES <= 2**24
    monkeypatch.setattr(crypto, "SUBKEY_MESSAGES", 3)
    fresh = Envelope(envelope.keys, "stored_sessions")
    salts = {fresh.seal(b"x", HANDLE, *ROW)[5:21] for _ in range(9)}
    assert len(salts) >= 3
    first = fresh.seal(b"early", HANDLE, *ROW)
    for _ in range(10):
        fresh.seal(b"x", HANDLE, *ROW)
    assert fresh.open(first, HANDLE, *ROW) == ({}, b"early")  # older sub-keys still open


def test_subkeys_are_cached_not_derived_per_message(monkeypatch, envelope) -> None:
    calls = []
    real = crypto._derive
    monkeypatch.setattr(crypto, "_derive", lambda key, salt: calls.append(1) or real(key, salt))
    sealed = [envelope.seal(b"x", HANDLE, *ROW) for _ in range(50)]
    for item in sealed:
        envelope.open(item, HANDLE, *ROW)
    assert len(calls) <= 1


# -- known answers ------------------------------------------------------------------
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["sid"][:8])
def test_known_answer_vectors_still_open(vector) -> None:
    """A release that cannot read today's sessions must fail here."""
    envelope = Envelope(parse_keys(VECTORS["keys"]), vector["table_name"])
    # Format 1 binds no columns, so any stand as well as the row's.
    metadata, plaintext = envelope.open(bytes.fromhex(vector["envelope"]), vector["sid"], *ROW)
    assert metadata == {}
    assert plaintext.decode("utf-8") == vector["plaintext"]
    assert json.loads(plaintext) == vector["data"]
    assert ids.handle_for(vector["public_id"]) == vector["sid"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["sid"][:8])
def test_format_1_vectors_are_reproduced_from_the_written_format(vector) -> None:
    sealed = bytes.fromhex(vector["envelope"])
    salt, nonce = sealed[5:21], sealed[21:33]
    plaintext = vector["plaintext"].encode("utf-8")
    again = generate.seal_v1(
        vector["key"], salt, nonce, vector["table_name"], vector["sid"], plaintext
    )
    assert again == sealed


@pytest.mark.parametrize("vector", VECTORS_V2["vectors"], ids=lambda v: v["sid"][:8])
def test_format_2_vectors_open_bound_to_their_columns(vector) -> None:
    envelope = Envelope(parse_keys(VECTORS_V2["keys"]), vector["table_name"])
    sealed = bytes.fromhex(vector["envelope"])
    columns = (vector["user_id"], vector["created_at"], vector["idle_timeout"])
    metadata, plaintext = envelope.open(sealed, vector["sid"], *columns)
    assert metadata == vector["metadata"]
    assert plaintext.decode("utf-8") == vector["plaintext"]
    assert json.loads(plaintext) == vector["data"]
    assert ids.handle_for(vector["public_id"]) == vector["sid"]
    assert sealed[1:5] == generate.key_id(vector["key"])
    assert envelope.needs_rotation(sealed) == (vector["key"] != VECTORS_V2["keys"][0])
    with pytest.raises(DecryptionFailed):
        envelope.open(sealed, vector["sid"], "someone else", *columns[1:])


def test_format_2_vectors_are_reproduced_by_their_generator() -> None:
    """The file is what tests/vectors/generate.py writes, byte for byte."""
    assert generate.render(generate.build_v2()) == generate.V2_PATH.read_text("utf-8")


def test_the_package_seals_what_the_written_format_says(monkeypatch) -> None:
    """storedsession's own sealing, with the salt and nonce fixed, gives the vector."""
    vector = VECTORS_V2["vectors"][2]
    fixed = iter([bytes.fromhex(vector["salt"]), bytes.fromhex(vector["nonce"])])
    monkeypatch.setattr(crypto.os, "urandom", lambda size: next(fixed))
    envelope = Envelope(parse_keys(vector["key"]), vector["table_name"])
    sealed = envelope.seal(
        vector["plaintext"].encode("utf-8"),
        vector["sid"],
        vector["user_id"],
        vector["created_at"],
        vector["idle_timeout"],
        vector["metadata"],
    )
    assert sealed.hex() == vector["envelope"]


def _insert(store: SessionStore, vector: dict[str, Any], **columns: Any) -> None:
    row = {
        "sid": vector["sid"],
        "payload": bytes.fromhex(vector["envelope"]),
        "user_id": vector.get("user_id"),
        "created_at": vector.get("created_at", store.now()),
        "last_seen_at": store.now(),
        "expires_at": None,
        "idle_timeout": vector.get("idle_timeout"),
        "version": 1,
    }
    row.update(columns)
    with store.connected():
        store.model.insert(**row).execute()


def test_known_answer_rows_load_through_the_store(tmp_path) -> None:
    """Today's rows, hashing and table layout included, load in every future release.

    The vectors are bound to the table name "stored_sessions", which tests on shared
    servers must not use; a private SQLite file has no such risk.
    """
    clock = FakeClock()
    clock.advance(60)  # just after the vectors' creation times
    store = SessionStore(f"sqlite:///{tmp_path}/kat.db", keys=VECTORS["keys"], clock=clock)
    store.create_table()
    for vector in VECTORS["vectors"] + VECTORS_V2["vectors"]:
        _insert(store, vector)
    for vector in VECTORS["vectors"] + VECTORS_V2["vectors"]:
        loaded = store.load(vector["public_id"])
        assert dict(loaded) == vector["data"]
        assert loaded._meta == vector.get("metadata", {})
    renamed = SessionStore(store.database, keys=VECTORS["keys"], table_name="renamed")
    renamed.database.execute_sql('ALTER TABLE "stored_sessions" RENAME TO "renamed"')
    for vector in (VECTORS["vectors"][0], VECTORS_V2["vectors"][0]):
        assert len(renamed.load(vector["public_id"])) == 0  # bound to the name
    store.close()


def test_undecryptable_row_reads_empty_and_logs(make_store, caplog) -> None:
    first = make_store()
    session = first.load(None)
    session["canary"] = "do-not-log-me"
    first.save(session)
    stranger = make_store(keys=[generate_key()])
    with caplog.at_level(logging.WARNING, logger="storedsession.security"):
        loaded = stranger.load(session.id)
    assert loaded.new and len(loaded) == 0
    assert any("decrypt" in r.getMessage() for r in caplog.records)
    assert all(
        "do-not-log-me" not in r.getMessage() and session.id not in r.getMessage()
        for r in caplog.records
    )
    assert dict(first.load(session.id)) == {"canary": "do-not-log-me"}  # row left in place
