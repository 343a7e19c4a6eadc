"""Async twins: the same behaviour, off the event loop."""

from __future__ import annotations

import asyncio
import threading

from storedsession import SessionStore


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
