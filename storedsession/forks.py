"""Fork detection: one generation counter for everything a forked child must not inherit.

A pre-fork server (gunicorn, uWSGI, multiprocessing) copies the parent's memory into each
worker: its pooled connections, SQLite handles, locks and the envelope's salt. A child that
used them would share sockets with its parent and its siblings, or encrypt under their salt.

:func:`generation` changes in every child, whether it was forked by ``os.fork`` (seen by
``os.register_at_fork``) or by a path that bypasses it, such as uWSGI's prefork calling
``fork()`` from C (seen by a change of process id at the next call). Holders of per-process
state remember the generation they were built in and rebuild when it differs.

What a child inherits must be forgotten, never closed: closing an inherited psycopg2 or
PyMySQL connection ends the parent's session on the server, and SQLite forbids closing a
handle opened in another process. :func:`abandon` keeps such objects referenced for the
life of the child, so that not even the garbage collector closes them.
"""

from __future__ import annotations

import os
from typing import Any

_pid = os.getpid()
_generation = 0
#: What this process inherited and must never close, kept across later forks too: a
#: grandchild that let go of them would close its grandparent's sockets.
_abandoned: list[Any] = []


def _forked() -> None:
    global _pid, _generation
    _pid = os.getpid()
    _generation += 1


os.register_at_fork(after_in_child=_forked)


def generation() -> int:
    """Return the current process generation; it differs in every forked child."""
    if os.getpid() != _pid:  # forked without os.fork's hooks
        _forked()
    return _generation


def abandon(*objects: Any) -> None:
    """Keep inherited objects alive and unused, so that nothing ever closes them."""
    _abandoned.extend(o for o in objects if o is not None)
