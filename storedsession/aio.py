"""Async twins of blocking methods: the same code, in the store's worker threads.

A store runs its blocking work for async callers (its async twins, the ASGI middleware's
loads and saves) in threads of its own, :data:`THREADS` of them, not in the event loop's
default executor. That executor has ``min(32, cpus + 4)`` threads, shared with whatever
else the application offloads: on a 2-core machine six threads, each with its own pooled
connection, took turns at the GIL with the event loop, and PostgreSQL reads under uvicorn
came to 0.77 of the floor with six threads against 1.16 with two (docs/performance.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from . import forks

P = ParamSpec("P")
R = TypeVar("R")

#: How many threads one store runs its async callers' database work in, per process.
THREADS = 2


class Workers:
    """A store's worker threads, started on first use, again in a forked child.

    A child inherits the executor but not its threads (a fork copies only the thread
    that forked): it starts a pool of its own before its first job.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._generation = forks.generation()  # of the process that made _executor
        self._lock = forks.Lock()

    async def run(self, function: Callable[..., R], /, *args: Any) -> R:
        """Run ``function(*args)`` in a worker thread, in the caller's context (as
        ``asyncio.to_thread`` does), and return what it returns."""
        call = functools.partial(contextvars.copy_context().run, function, *args)
        return await asyncio.get_running_loop().run_in_executor(self._pool(), call)

    def _pool(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is not None and self._generation == forks.generation():
            return executor
        with self._lock:
            if self._executor is None or self._generation != forks.generation():
                # An inherited executor is dropped, not shut down: its threads are the
                # parent's, and shutting it down would wait for them.
                self._executor = ThreadPoolExecutor(
                    self.threads, thread_name_prefix="storedsession"
                )
                self._generation = forks.generation()
            return self._executor

    def shutdown(self) -> None:
        """Stop the threads once their jobs are done; a later job starts new ones."""
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None and self._generation == forks.generation():
            executor.shutdown(wait=False)


def offload(method: Callable[P, R]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Return an async twin of the store method ``method``, run in the store's workers."""

    @functools.wraps(method)
    async def twin(*args: P.args, **kwargs: P.kwargs) -> R:
        workers: Workers = args[0]._workers  # type: ignore[attr-defined]
        return await workers.run(functools.partial(method, *args, **kwargs))

    twin.__doc__ = f"Async twin of ``{method.__name__}``, run in the store's worker threads."
    return twin
