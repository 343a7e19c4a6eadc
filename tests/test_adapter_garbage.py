"""A request that used its session leaves no reference cycle behind, on every front and
backend: each cycle waits for the garbage collector, whose passes over a large heap cost
every request (Falcon's ``req.context`` once held the request's session state, which held
the request: 7 objects a request)."""

from __future__ import annotations

import gc

import pytest


@pytest.mark.parametrize("path", ["/read", "/count"], ids=["read", "write"])
@pytest.mark.parametrize("with_cookie", [True, False], ids=["stored", "new"])
def test_a_request_that_used_its_session_leaves_no_cycle(front, path, with_cookie) -> None:
    pair = front.get("/count").session_pair() if with_cookie else None
    front.get(path, cookie=pair)  # warm: connections, caches
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            front.get(path, cookie=pair)
        assert gc.collect() == 0
    finally:
        gc.enable()
