"""Checks of option values, shared by every module that takes a count."""

from __future__ import annotations


def is_whole(value: object, least: int) -> bool:
    """Tell whether ``value`` is an ``int`` of at least ``least`` (a bool is not one)."""
    return not isinstance(value, bool) and isinstance(value, int) and value >= least
