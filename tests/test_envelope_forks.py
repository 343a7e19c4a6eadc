"""The envelope across forks and threads: a fresh salt and lock in every child, no torn state."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storedsession import crypto, generate_key
from storedsession.crypto import DecryptionFailed, Envelope
from storedsession.keys import parse_keys

SID = "ab" * 32
ROW = ("7", 1767268800000, None)
#: How long a child may take before it counts as deadlocked.
CHILD_TIMEOUT = 10.0


def _libc_fork() -> int:
    # What uWSGI's prefork does: fork() from C, so os.register_at_fork hooks never run.
    # PyDLL keeps the GIL across the call, as a C caller of fork() holds it.
    return int(ctypes.PyDLL(None).fork())


FORKS = pytest.mark.parametrize("fork", [os.fork, _libc_fork], ids=["os.fork", "libc-fork"])


def in_child(fork: Callable[[], int], work: Callable[[], bytes]) -> bytes:
    """Run ``work`` in a child made by ``fork``; return its bytes, failing if it hangs."""
    read, write = os.pipe()
    pid = fork()
    if pid == 0:  # the child: report, then leave without running pytest's teardown
        code = 0
        try:
            os.close(read)
            os.write(write, work())
        except BaseException as exc:
            os.write(write, b"child failed: " + repr(exc).encode())
            code = 1
        os._exit(code)
    os.close(write)
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            ready, _, _ = select.select([read], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the forked child hung for {CHILD_TIMEOUT} s (deadlock)")
            chunk = os.read(read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read)
        _, status = os.waitpid(pid, 0)
    output = b"".join(chunks)
    assert os.waitstatus_to_exitcode(status) == 0, output
    return output


@pytest.fixture
def envelope() -> Envelope:
    return Envelope(parse_keys(generate_key()), "t")


@FORKS
def test_a_forked_child_never_seals_under_its_parents_salt(fork, envelope) -> None:
    parent = envelope.seal(b"parent", SID, *ROW)
    children = [in_child(fork, lambda: envelope.seal(b"child", SID, *ROW)) for _ in range(2)]
    salts = {parent[5:21], *(child[5:21] for child in children)}
    assert len(salts) == 3  # parent and both siblings: three salts
    for child in children:
        assert envelope.open(child, SID, *ROW) == ({}, b"child")
    assert envelope.seal(b"again", SID, *ROW)[5:21] == parent[5:21]  # the parent goes on


@FORKS
def test_a_lock_held_in_the_parent_at_fork_time_does_not_deadlock_the_child(fork, envelope) -> None:
    # Sealed under another salt: opening it in the child must derive and cache a sub-key.
    foreign = Envelope(envelope.keys, "t").seal(b"foreign", SID, *ROW)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with envelope._lock:
            held.set()
            release.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(5)

        def work() -> bytes:
            sealed = envelope.seal(b"child", SID, *ROW)  # renews: needs the lock
            _, plaintext = envelope.open(foreign, SID, *ROW)  # caches: needs it too
            return plaintext + b"|" + sealed

        output = in_child(fork, work)
    finally:
        release.set()
        holder.join()
    plaintext, sealed = output.split(b"|", 1)
    assert plaintext == b"foreign"
    assert envelope.open(sealed, SID, *ROW) == ({}, b"child")


def test_no_second_fork_hook_in_the_envelope() -> None:
    """Forks are seen through storedsession.forks alone."""
    source = Path(crypto.__file__).read_text("utf-8")
    assert "register_at_fork" not in source and "forks.generation()" in source


def test_a_renewal_never_pairs_a_header_with_another_subkey(monkeypatch, envelope) -> None:
    """Threads seal while others renew the sub-key: every envelope opens."""
    monkeypatch.setattr(crypto, "SUBKEY_MESSAGES", 2)
    real = crypto._derive

    def slow_derive(key, salt):  # type: ignore[no-untyped-def]
        aead = real(key, salt)
        time.sleep(0.0005)  # let the other threads run in the middle of a renewal
        return aead

    monkeypatch.setattr(crypto, "_derive", slow_derive)
    fresh = Envelope(envelope.keys, "t")
    sealed: list[bytes] = []
    errors: list[BaseException] = []

    def seal_many() -> None:
        try:
            for _ in range(60):
                sealed.append(fresh.seal(b"x", SID, *ROW))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=seal_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len({item[5:21] for item in sealed}) > 10  # many renewals happened
    torn = 0
    for item in sealed:
        try:
            fresh.open(item, SID, *ROW)
        except DecryptionFailed:
            torn += 1
    assert torn == 0, f"{torn} of {len(sealed)} envelopes never open"
