"""Async twins of blocking methods: the same code, in a worker thread."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


def offload(method: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Return an async twin of ``method`` that runs it off the event loop."""

    @functools.wraps(method)
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        return await asyncio.to_thread(method, *args, **kwargs)

    twin.__doc__ = f"Async twin of ``{method.__name__}``, run in a worker thread."
    return twin
