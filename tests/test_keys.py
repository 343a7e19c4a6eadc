"""Keys: parsing, validation, and the newest-first list."""

from __future__ import annotations

import base64

import pytest

from storedsession import ConfigurationError, SessionStore, generate_key
from storedsession.keys import KEYS_ENV, parse_keys


def test_generate_key_is_32_bytes_of_urlsafe_base64() -> None:
    key = generate_key()
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert generate_key() != key


def test_one_key_or_a_list_newest_first() -> None:
    a, b = generate_key(), generate_key()
    assert len(parse_keys(a)) == 1
    parsed = parse_keys([a, b])
    assert parsed[0].secret == base64.urlsafe_b64decode(a)
    assert parsed[1].secret == base64.urlsafe_b64decode(b)


def test_unpadded_key_is_accepted() -> None:
    key = generate_key()
    assert parse_keys(key.rstrip("="))[0].secret == parse_keys(key)[0].secret


def test_environment_is_read_when_keys_is_none(monkeypatch) -> None:
    a, b = generate_key(), generate_key()
    monkeypatch.setenv(KEYS_ENV, f"{a}, {b}")
    assert [k.secret for k in parse_keys(None)] == [k.secret for k in parse_keys([a, b])]


@pytest.mark.parametrize(
    "keys, fragment",
    [
        ([], "empty"),
        ("not a key", "URL-safe base64"),
        (base64.urlsafe_b64encode(b"x" * 16).decode(), "URL-safe base64"),
        (base64.b64encode(b"\xfb" * 32).decode(), "URL-safe base64"),  # + and /, not URL-safe
        ([123], "URL-safe base64"),
    ],
)
def test_bad_keys_are_configuration_errors(keys, fragment) -> None:
    with pytest.raises(ConfigurationError, match=fragment) as info:
        parse_keys(keys)
    assert "generate-key" in str(info.value)


def test_duplicate_key_is_an_error() -> None:
    key = generate_key()
    with pytest.raises(ConfigurationError, match="twice"):
        parse_keys([key, key.rstrip("=")])


def test_missing_keys_say_how_to_make_one(monkeypatch, tmp_path) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    with pytest.raises(ConfigurationError) as info:
        SessionStore(f"sqlite:///{tmp_path}/s.db")
    assert KEYS_ENV in str(info.value) and "storedsession generate-key" in str(info.value)


def test_error_messages_never_contain_the_key() -> None:
    good = generate_key()
    bad = good[:-3] + "!!="
    for attempt in ([good, bad], [good, good]):
        with pytest.raises(ConfigurationError) as info:
            parse_keys(attempt)
        assert good not in str(info.value) and bad not in str(info.value)
        assert good[:20] not in str(info.value)


def test_key_repr_hides_the_secret() -> None:
    key = parse_keys(generate_key())[0]
    assert key.secret.hex() not in repr(key) and "secret" not in repr(key)


def test_the_store_and_the_cli_read_the_environment_alike(monkeypatch, tmp_path) -> None:
    """One reading of STOREDSESSION_KEYS: what the CLI's rotate-keys takes, the store takes."""
    from click.testing import CliRunner

    from storedsession.cli import cli

    old, new = generate_key(), generate_key()
    url = f"sqlite:///{tmp_path}/keys.db"
    writer = SessionStore(url, keys=[old])
    writer.create_table()
    session = writer.load(None)
    session["a"] = 1
    writer.save(session)
    monkeypatch.setenv(KEYS_ENV, f" {new} ,\t{old} ,, ")  # spaces, a tab, an empty item
    assert dict(SessionStore(url).load(session.id)) == {"a": 1}
    result = CliRunner().invoke(cli, ["rotate-keys", "--database", url])
    assert result.exit_code == 0, result.output
    assert "Re-encrypted 1 session " in result.output
    assert dict(SessionStore(url, keys=[new]).load(session.id)) == {"a": 1}
