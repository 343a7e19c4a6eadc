"""Async twins: the same behaviour, off the event loop."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from storedsession import ConfigurationError, SessionStore, signals

from .support import stored


def test_async_twins_round_trip_off_the_event_loop(store: SessionStore, clock) -> None:
    threads: set[int] = set()
    store.database.query_hooks.append(lambda event: threads.add(threading.get_ident()))

    async def scenario() -> None:
        loop_thread = threading.get_ident()
        session = await store.aload(None)
        session["a"] = 1
        session.user_id = 3
        await store.asave(session)
        loaded = await store.aload(session.id)
        assert loaded["a"] == 1
        assert [i.handle for i in await store.asessions_for(3)] == [session.handle]
        assert await store.arevoke_user(3, keep=loaded) == 0
        other = await store.aload(None)
        other["b"] = 1
        other.user_id = 3
        await store.asave(other)
        assert await store.arevoke(other.handle, user_id=3)
        await store.adelete(loaded)
        clock.advance(days=400)
        assert await store.aexpire() == 0
        assert loop_thread not in threads

    asyncio.run(scenario())
    assert threads


def test_async_work_runs_in_the_stores_own_threads_at_most_async_threads_at_once(
    make_store,
) -> None:
    store = make_store(async_threads=2)
    public_id = stored(store, n=1)
    threads: set[int] = set()
    store.database.query_hooks.append(lambda event: threads.add(threading.get_ident()))

    async def many() -> list[int]:
        sessions = await asyncio.gather(*(store.aload(public_id) for _ in range(30)))
        return [session["n"] for session in sessions]

    assert asyncio.run(many()) == [1] * 30
    # asyncio's default executor would have used up to min(32, cpus + 4) threads here.
    assert 1 <= len(threads) <= 2
    names = {thread.name for thread in threading.enumerate() if thread.ident in threads}
    assert names and all(name.startswith("storedsession") for name in names), names


def test_async_work_sees_the_callers_context_variables(store: SessionStore) -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str | None] = []

    def on_read(sender: object, **kwargs: object) -> None:
        seen.append(request_id.get(None))

    public_id = stored(store, n=1)
    signals.session_read.connect(on_read)
    try:

        async def request() -> None:
            request_id.set("r-17")
            await store.aload(public_id)

        asyncio.run(request())
    finally:
        signals.session_read.disconnect(on_read)
    assert seen == ["r-17"]


def test_a_closed_store_starts_its_threads_again_on_the_next_async_call(
    store: SessionStore,
) -> None:
    public_id = stored(store, n=1)
    assert asyncio.run(store.aload(public_id))["n"] == 1
    store.close()
    assert asyncio.run(store.aload(public_id))["n"] == 1


@pytest.mark.parametrize("threads", [0, -1, True, 1.5, "2"])
def test_async_threads_must_be_a_whole_number_of_at_least_one(database_url, keys, threads) -> None:
    with pytest.raises(ConfigurationError, match="async_threads"):
        SessionStore(database_url, keys=keys, async_threads=threads)
