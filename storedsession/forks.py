"""Fork detection: one generation counter for everything a forked child must not inherit.

A pre-fork server (gunicorn, uWSGI, multiprocessing) copies the parent's memory into each
worker: its pooled connections, SQLite handles, locks and the envelope's salt. A child that
used them would share sockets with its parent and its siblings, or encrypt under their salt.

:func:`generation` changes in every child, whether it was forked by ``os.fork`` (seen by
``os.register_at_fork``) or by a path that bypasses it, such as uWSGI's prefork calling
``fork()`` from C (seen at the next call, by a page the kernel wipes in every child, or by
a change of process id where there is no such page). Holders of per-process
state remember the generation they were built in and rebuild when it differs.

What a child inherits must be forgotten, never closed: closing an inherited psycopg2 or
PyMySQL connection ends the parent's session on the server, and SQLite forbids closing a
handle opened in another process. :func:`abandon` keeps such objects referenced for the
life of the child, so that not even the garbage collector closes them.
"""

from __future__ import annotations

import mmap
import os
import platform
import sys
import threading
from collections.abc import Callable
from typing import Any

_pid = os.getpid()
_generation = 0
#: What this process inherited and must never close, kept across later forks too: a
#: grandchild that let go of them would close its grandparent's sockets.
_abandoned: list[Any] = []


def _fork_marker() -> mmap.mmap | None:
    """Return a private page whose first byte every forked child finds zeroed, or None.

    Linux (4.14 and later) zeroes a page marked ``MADV_WIPEONFORK`` in the child of any
    fork, ``os.fork`` or not, so that reading a byte tells what ``os.getpid()`` tells
    without a system call; the store asks several times per operation. Python's ``mmap``
    names the flag only when it was built with headers that had it; its value is 18 on
    every Linux architecture but PA-RISC's. None where the kernel refuses it.
    """
    advice = getattr(mmap, "MADV_WIPEONFORK", None)
    if advice is None and sys.platform == "linux" and not platform.machine().startswith("parisc"):
        advice = 18
    if advice is None:
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(advice)
    except (AttributeError, OSError, ValueError):
        return None
    page[0] = 1
    return page


_marker = _fork_marker()


def _forked() -> None:
    global _pid, _generation
    _pid = os.getpid()
    _generation += 1
    if _marker is not None:
        _marker[0] = 1


os.register_at_fork(after_in_child=_forked)


def _generation_by_marker() -> int:
    """Return the current process generation; it differs in every forked child."""
    if not _marker[0]:  # type: ignore[index]  # forked without os.fork's hooks
        _forked()
    return _generation


def _generation_by_pid() -> int:
    """Return the current process generation; it differs in every forked child."""
    if os.getpid() != _pid:  # forked without os.fork's hooks
        _forked()
    return _generation


#: Return the current process generation; it differs in every forked child.
generation: Callable[[], int] = _generation_by_pid if _marker is None else _generation_by_marker


def abandon(*objects: Any) -> None:
    """Keep inherited objects alive and unused, so that nothing ever closes them."""
    _abandoned.extend(o for o in objects if o is not None)


class Lock:
    """A lock of this process: ``with lock:``. A forked child uses a new one, never the
    lock it inherited, which may be held by a thread the child does not have."""

    __slots__ = ("_lock", "_generation")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = generation()

    def __enter__(self) -> bool:
        current = generation()
        if self._generation != current:
            self._lock, self._generation = threading.Lock(), current
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
