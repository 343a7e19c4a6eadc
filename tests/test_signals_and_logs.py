"""Instrumentation: blinker signals with hashed ids, and security logs without secrets."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from storedsession import SessionStore, ids, signals


@pytest.fixture
def received() -> Iterator[list[tuple[str, dict]]]:
    events: list[tuple[str, dict]] = []
    handlers = {}
    for name in ("session_read", "session_write", "session_delete", "sessions_expired"):
        signal = getattr(signals, name)

        def handler(sender, _name=name, **kwargs):
            events.append((_name, kwargs))

        handlers[name] = handler
        signal.connect(handler)
    yield events
    for name, handler in handlers.items():
        getattr(signals, name).disconnect(handler)


def test_signals_carry_the_hashed_id_only(store: SessionStore, received, clock) -> None:
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    loaded = store.load(session.id)
    loaded["a"] = 2
    store.save(loaded)
    loaded.regenerate()
    old_handle = loaded.handle
    store.save(loaded)
    store.delete(store.load(loaded.id))
    store.expire()
    names = [name for name, _ in received]
    assert names == [
        "session_write",  # insert
        "session_read",
        "session_write",  # update
        "session_write",
        "session_delete",  # regenerate: insert new, delete old
        "session_read",
        "session_delete",
        "sessions_expired",
    ]
    sids = [kwargs["sid"] for _, kwargs in received if "sid" in kwargs]
    assert session.id not in sids and loaded.id not in sids
    assert all(ids.is_handle(sid) for sid in sids)
    assert sids[:3] == [old_handle] * 3 and old_handle == session.handle
    assert sids[3:] == [loaded.handle, old_handle, loaded.handle, loaded.handle]
    assert received[-1][1] == {"count": 0}


def test_a_whole_lifecycle_logs_no_id_key_or_value(make_store, keys, caplog, clock) -> None:
    canary = "canary-9f1c2e"
    store = make_store(idle_timeout=60)
    with caplog.at_level(logging.DEBUG):
        session = store.load(None)
        session["secret"] = canary
        store.save(session)
        public_ids = [session.id]
        session.regenerate()
        store.save(session)
        public_ids.append(session.id)
        store.load("not-a-valid-id\nFAKE LOG LINE")
        store.load(public_ids[0])  # unknown now
        from storedsession import generate_key

        make_store(keys=[generate_key()]).load(session.id)  # wrong key
        clock.advance(61)
        store.load(session.id)  # expired
        store.expire()
    text = "\n".join(record.getMessage() for record in caplog.records)
    text += "\n".join(str(record.args) for record in caplog.records)
    assert caplog.records, "security events should be logged"
    for secret in [canary, *public_ids, *keys]:
        assert secret not in text
    assert "FAKE LOG LINE" not in text


def test_security_events_use_the_security_logger(store: SessionStore, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="storedsession.security"):
        store.load("garbage")
        from storedsession import ids

        store.load(ids.new_public_id())
    loggers = {record.name for record in caplog.records}
    assert loggers == {"storedsession.security"}
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]


def test_errors_and_cli_output_hold_no_id_key_or_value(
    make_store, keys, database_url, table_name, caplog, clock, monkeypatch
) -> None:
    """Database down, tampering, rotation and the CLI: no secret in any text."""
    from click.testing import CliRunner

    from storedsession import StoreUnavailable, generate_key
    from storedsession.cli import cli

    canary = "canary-3b7d1a"
    store = make_store(clock=None)  # the CLI runs on real time
    texts: list[str] = []
    with caplog.at_level(logging.DEBUG):
        session = store.load(None)
        session["secret"] = canary
        store.save(session)
        public_id = session.id
        model = store.model
        with store.connected():  # tamper with the row
            payload = bytearray(model.get(model.sid == session.handle).payload)
            payload[-3] ^= 0xFF
            model.update(payload=bytes(payload)).where(model.sid == session.handle).execute()
        store.load(public_id)
        store.drop_table()  # the database "goes down" for this table
        for call in (
            lambda: store.load(public_id),
            lambda: store.save(session),
            lambda: store.delete(session),
        ):
            try:
                call()
            except StoreUnavailable as exc:
                texts.append(str(exc))
                texts.append(repr(exc))
                texts.append(str(exc.__cause__))
        store.create_table()
        fresh = store.load(None)
        fresh["secret"] = canary
        store.save(fresh)
        new_key = generate_key()
        monkeypatch.setenv("STOREDSESSION_KEYS", f"{new_key},{keys[0]}")
        runner = CliRunner()
        for args in (["stats"], ["expire", "--dry-run"], ["expire"], ["rotate-keys"], ["init"]):
            result = runner.invoke(cli, [*args, "--database", database_url, "--table", table_name])
            assert result.exit_code == 0, result.output
            texts.append(result.output)
    texts += [record.getMessage() for record in caplog.records]
    text = "\n".join(texts)
    for secret in (canary, public_id, fresh.id, new_key, *keys):
        assert secret not in text
    assert any("decrypt" in t for t in texts) and any("Re-encrypted 1" in t for t in texts)
