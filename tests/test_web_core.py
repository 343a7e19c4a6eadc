"""The adapters' shared core: one options definition, a session that loads itself, Finish."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest

from storedsession import ConfigurationError, Session, SessionStore, StoreUnavailable
from storedsession.plugins.bottle import StoredSessionPlugin
from storedsession.plugins.falcon import StoredSessionMiddleware
from storedsession.web import (
    AdapterOptions,
    CookieOptions,
    Finish,
    SessionMiddlewareCore,
    StoreOptions,
)

ADAPTERS = [StoredSessionPlugin, StoredSessionMiddleware]


def _stored(store: SessionStore, **data: Any) -> Session:
    session = store.load(None)
    session.update(data)
    store.save(session)
    return session


# -- one definition of the options ---------------------------------------------------
def test_store_options_are_the_stores_keyword_parameters() -> None:
    parameters = inspect.signature(SessionStore).parameters.values()
    keyword_only = {p.name for p in parameters if p.kind is p.KEYWORD_ONLY}
    assert set(StoreOptions.__optional_keys__) == keyword_only


def test_cookie_options_are_cookie_options_fields() -> None:
    cookie_keys = {k for k in AdapterOptions.__optional_keys__ if k.startswith("cookie_")}
    assert cookie_keys == {f"cookie_{name}" for name in CookieOptions.__dataclass_fields__}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_adapters_take_the_shared_options_with_their_defaults(adapter, store) -> None:
    core = adapter(store).core
    assert core.cookie == CookieOptions(
        name="session", path="/", domain=None, secure=None, httponly=True, samesite="Lax"
    )
    assert core.records and not core.record_ip
    options = adapter(
        store,
        cookie_name="sid",
        cookie_path="/app",
        cookie_domain="example.com",
        cookie_secure=True,
        cookie_httponly=False,
        cookie_samesite="strict",
        record_ip=True,
        client_ip=lambda request: "192.0.2.1",
    ).core
    assert options.cookie == CookieOptions("sid", "/app", "example.com", True, False, "Strict")
    assert options.record_ip
    assert not adapter(store, record_user_agent=False).core.records


def test_the_bottle_plugin_keeps_its_keyword() -> None:
    parameter = inspect.signature(StoredSessionPlugin).parameters["keyword"]
    assert parameter.kind is parameter.KEYWORD_ONLY and parameter.default == "session"
    assert "keyword" not in inspect.signature(StoredSessionMiddleware).parameters


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_an_unknown_keyword_is_a_type_error(adapter, store, database_url, keys) -> None:
    with pytest.raises(TypeError, match="cookie_nmae"):
        adapter(store, cookie_nmae="x")
    with pytest.raises(TypeError, match="cookie_nmae"):
        adapter(database_url, keys=keys, cookie_nmae="x")


def test_falcon_takes_no_bottle_keyword(store) -> None:
    with pytest.raises(TypeError, match="keyword"):
        StoredSessionMiddleware(store, keyword="s")


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_bad_combinations_fail_at_construction(adapter, store, keys) -> None:
    with pytest.raises(ConfigurationError, match="not to the adapter"):
        adapter(store, keys=keys)
    with pytest.raises(ConfigurationError, match="pass one or the other"):
        adapter(store, record_ip=True, record_user_agent=False)
    with pytest.raises(ConfigurationError, match="used only with record_ip=True"):
        adapter(store, client_ip=lambda request: None)
    with pytest.raises(ConfigurationError, match="needs a"):
        adapter(store, cookie_name="__Host-s", cookie_secure=False)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_store_options_build_the_store(adapter, database_url, keys, table_name) -> None:
    built = adapter(database_url, keys=keys, table_name=table_name, idle_timeout=600).store
    assert built.table_name == table_name
    assert built.idle_timeout is not None and built.idle_timeout.total_seconds() == 600


# -- a session that loads itself ----------------------------------------------------
def test_a_deferred_session_loads_on_first_use_only(store, count_queries) -> None:
    stored = _stored(store, a=1)
    calls: list[int] = []

    def loader() -> Session:
        calls.append(1)
        return store.load(stored.id)

    session = Session._deferred(loader)
    assert repr(session) == "<Session, not loaded yet>" and calls == []
    with count_queries(store) as queries:
        assert session["a"] == 1
        assert session.id == stored.id and session.handle == stored.handle
        assert not session.new and not session.modified and dict(session) == {"a": 1}
    assert calls == [1] and queries.count == 1


@pytest.mark.parametrize(
    "use",
    [
        lambda s: s["a"],
        lambda s: s.get("a"),
        lambda s: "a" in s,
        lambda s: len(s),
        lambda s: list(s),
        lambda s: s.id,
        lambda s: s.handle,
        lambda s: s.new,
        lambda s: s.modified,
        lambda s: s.user_id,
        lambda s: s.created_at,
        lambda s: s.last_seen_at,
        lambda s: s.expires_at,
        lambda s: s.idle_timeout,
    ],
)
def test_every_reader_loads_it(use: Callable[[Session], Any], store) -> None:
    stored = _stored(store, a=1)
    session = Session._deferred(lambda: store.load(stored.id))
    use(session)
    assert session.handle == stored.handle and dict(session) == {"a": 1}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s.__setitem__("b", 2), {"a": 1, "b": 2}),
        (lambda s: s.__delitem__("a"), {}),
        (lambda s: s.update(b=2), {"a": 1, "b": 2}),
        (lambda s: setattr(s, "user_id", 7), {"a": 1}),
        (lambda s: s.set_expiry(60), {"a": 1}),
        (lambda s: s.regenerate(), {"a": 1}),
    ],
)
def test_a_change_to_it_is_kept_after_loading(change, expected, store) -> None:
    stored = _stored(store, a=1)
    session = Session._deferred(lambda: store.load(stored.id))
    change(session)
    assert session.modified or session._regenerate
    store.save(session)
    assert dict(store.load(session.id)) == expected


def test_invalidating_it_deletes_the_stored_row(store) -> None:
    stored = _stored(store, a=1)
    session = Session._deferred(lambda: store.load(stored.id))
    session.invalidate()
    store.save(session)
    assert store.load(stored.id).new


def test_a_failed_load_leaves_it_deferred(store) -> None:
    stored = _stored(store, a=1)
    attempts: list[int] = []

    def loader() -> Session:
        attempts.append(1)
        if len(attempts) == 1:
            raise StoreUnavailable("down")
        return store.load(stored.id)

    session = Session._deferred(loader)
    with pytest.raises(StoreUnavailable):
        session.get("a")
    assert repr(session) == "<Session, not loaded yet>"
    assert session.get("a") == 1 and attempts == [1, 1]


def test_the_store_loads_a_session_the_application_never_used(store) -> None:
    stored = _stored(store, a=1)
    request = SessionMiddlewareCore(store).begin(f"session={stored.id}", https=False)
    store.delete(request.session)  # a logout route that never read the session
    assert request.accessed
    assert store.load(stored.id).new
    other = SessionMiddlewareCore(store).begin(None, https=False)
    store.save(other.session)  # new and empty: nothing written, nothing failed
    assert other.session.new


# -- the request lifecycle ------------------------------------------------------------
def test_an_untouched_request_asks_nothing_and_queries_nothing(store, count_queries) -> None:
    stored = _stored(store, a=1)
    with count_queries(store) as queries:
        request = SessionMiddlewareCore(store).begin(f"session={stored.id}", https=False)
        finish = request.finish(200)
    assert not request.accessed and queries.count == 0
    assert (finish.cookie, finish.vary, finish.private) == (None, False, False)
    assert list(finish) == []


def test_a_write_asks_for_a_cookie_vary_and_a_private_cache(store) -> None:
    request = SessionMiddlewareCore(store).begin(None, https=True)
    request.session["a"] = 1
    finish = request.finish(200)
    assert request.accessed and finish.vary and finish.private
    assert finish.cookie is not None
    assert finish.cookie.startswith(f"session={request.session.id}; Path=/; Max-Age=")
    assert "; Secure; HttpOnly; SameSite=Lax" in finish.cookie
    assert list(finish) == [
        ("Vary", "Cookie"),
        ("Set-Cookie", finish.cookie),
        ("Cache-Control", "private"),
    ]


def test_a_read_inside_the_touch_interval_asks_only_for_vary(store) -> None:
    stored = _stored(store, a=1)
    request = SessionMiddlewareCore(store).begin(f"session={stored.id}", https=False)
    assert request.session["a"] == 1
    finish = request.finish(200)
    assert (finish.cookie, finish.vary, finish.private) == (None, True, False)


def test_a_server_error_saves_nothing_but_varies(store) -> None:
    request = SessionMiddlewareCore(store).begin(None, https=False)
    request.session["a"] = 1
    finish = request.finish(500)
    assert (finish.cookie, finish.vary, finish.private) == (None, True, False)
    assert request.session.new


def test_invalidate_asks_for_a_deletion_cookie(store) -> None:
    stored = _stored(store, a=1)
    request = SessionMiddlewareCore(store).begin(f"session={stored.id}", https=False)
    request.session.invalidate()
    finish = request.finish(200)
    assert finish.private and finish.vary
    assert finish.cookie is not None and finish.cookie.startswith("session=; Path=/; Max-Age=0")
    assert store.load(stored.id).new


def test_preload_hands_out_the_loaded_session(store, count_queries) -> None:
    stored = _stored(store, a=1)
    request = SessionMiddlewareCore(store).begin(
        f"session={stored.id}", https=False, hold_connection=False
    )
    asyncio.run(request.preload())
    assert request.accessed
    with count_queries(store) as queries:  # nothing left to query on the event loop
        assert request.session.handle == stored.handle and request.session["a"] == 1
    assert queries.count == 0
    assert asyncio.run(request.finish_async(200)).vary


def test_a_preload_failure_is_raised_on_use_and_by_finish(store) -> None:
    stored = _stored(store, a=1)
    request = SessionMiddlewareCore(store).begin(
        f"session={stored.id}", https=False, hold_connection=False
    )
    store.drop_table()
    asyncio.run(request.preload())
    assert not request.accessed
    with pytest.raises(StoreUnavailable):
        request.session.get("a")
    with pytest.raises(StoreUnavailable):
        request.finish(200)


def test_finish_repr_hides_the_cookie() -> None:
    finish = Finish("session=secret; Path=/", vary=True, private=True)
    assert "secret" not in repr(finish)


def test_a_refused_user_id_costs_no_query(store, count_queries) -> None:
    stored = _stored(store, a=1)
    session = Session._deferred(lambda: store.load(stored.id))
    with count_queries(store) as queries, pytest.raises(ValueError):
        session.user_id = "\x00"
    assert queries.count == 0 and repr(session) == "<Session, not loaded yet>"


@pytest.mark.parametrize("stored", [True, False], ids=["stored", "new"])
def test_loading_adopts_every_slot(stored, store) -> None:
    public_id = _stored(store, a=[1]).id if stored else None
    loaded = store.load(public_id)
    session = Session._deferred(lambda: loaded)
    len(session)  # loads, and hands out no container (which would set _exposed)
    for name in Session.__slots__:
        assert getattr(session, name) == getattr(loaded, name), name
