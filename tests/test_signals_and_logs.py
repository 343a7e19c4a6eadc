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
    handles = [kwargs["sid"] for _, kwargs in received if "sid" in kwargs]
    assert session.id not in handles and loaded.id not in handles
    assert all(ids.is_handle(handle) for handle in handles)
    assert handles[:3] == [old_handle] * 3 and old_handle == session.handle
    assert handles[3:] == [loaded.handle, old_handle, loaded.handle, loaded.handle]
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


@pytest.mark.slow
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


def test_a_database_failure_is_raised_and_not_logged(keys, caplog) -> None:
    """The application that catches StoreUnavailable decides what to log; we log nothing."""
    from storedsession import StoreUnavailable

    down = SessionStore("postgresql://nobody@127.0.0.1:9/none?connect_timeout=1", keys=keys)
    with caplog.at_level(logging.DEBUG, logger="storedsession"):
        with pytest.raises(StoreUnavailable):
            down.load(ids.new_public_id())
        fresh = down.load(None)
        fresh["a"] = 1
        with pytest.raises(StoreUnavailable):
            down.save(fresh)
    assert caplog.records == []


def test_an_expired_session_is_an_operational_event(make_store, clock, caplog) -> None:
    store = make_store(idle_timeout=60)
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    clock.advance(61)
    with caplog.at_level(logging.DEBUG, logger="storedsession"):
        assert store.load(session.id).new
    assert [(r.name, r.getMessage()) for r in caplog.records] == [
        ("storedsession", "Ignored an expired session.")
    ]


def test_a_save_over_a_session_rewritten_under_an_unknown_key(make_store, keys, caplog) -> None:
    """A process with a newer key rewrote the row: the old one must not overwrite it."""
    from storedsession import StoreUnavailable, UnknownKey, generate_key

    old = make_store()
    newer = make_store(keys=[generate_key(), *keys])  # deployed first, on one host only
    session = old.load(None)
    session["a"] = 1
    old.save(session)
    mine, theirs = old.load(session.id), newer.load(session.id)
    theirs["b"] = 2
    newer.save(theirs)  # sealed with the key ``old`` lacks
    mine["c"] = 3
    with caplog.at_level(logging.DEBUG, logger="storedsession"):
        with pytest.raises(UnknownKey) as info:
            old.save(mine)
    assert isinstance(info.value, StoreUnavailable)
    assert "same keys" in str(info.value)
    assert caplog.records == []
    assert dict(newer.load(session.id)) == {"a": 1, "b": 2}  # theirs, intact


def test_a_resurrection_blocked_behind_an_adapter_is_logged_once(make_store, caplog) -> None:
    from storedsession.web import SessionMiddlewareCore

    store = make_store()
    core = SessionMiddlewareCore(store)
    session = store.load(None)
    session["a"] = 1
    store.save(session)
    request = core.begin(f"session={session.id}", https=False)
    request.session["a"] = 2
    store.delete(store.load(session.id))  # a logout in another tab
    with caplog.at_level(logging.DEBUG, logger="storedsession"):
        headers = request.finish(200)
    assert not any(name == "Set-Cookie" for name, _ in headers)
    assert [(r.name, r.levelno) for r in caplog.records] == [
        ("storedsession.security", logging.WARNING)
    ]
