"""Fork detection without os.fork's hooks, by each of its two means: the page the kernel
wipes in every child, and the process id where there is no such page."""

from __future__ import annotations

import ctypes
import os
import sys

import pytest

from storedsession import forks


def _generation_in_raw_child(generation) -> int:
    """Fork as uWSGI's prefork does (no at-fork hooks) and return the child's generation."""
    before = generation()
    read, write = os.pipe()
    pid = ctypes.PyDLL(None).fork()
    if pid == 0:
        code = 1
        try:
            os.write(write, str(generation() - before).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        return int(os.read(read, 100))
    finally:
        os.close(read)


@pytest.mark.skipif(sys.platform != "linux", reason="MADV_WIPEONFORK is Linux's")
def test_the_wiped_page_shows_a_fork_that_ran_no_hooks() -> None:
    assert forks._marker is not None  # Linux 4.14 or later
    assert forks.generation is forks._generation_by_marker
    assert _generation_in_raw_child(forks._generation_by_marker) == 1
    assert forks._generation_by_marker() == forks._generation  # the parent is unchanged


def test_the_process_id_shows_a_fork_that_ran_no_hooks() -> None:
    assert _generation_in_raw_child(forks._generation_by_pid) == 1
    assert forks._generation_by_pid() == forks._generation
