"""Re-apply one request's changes onto a session another request saved meanwhile."""

from __future__ import annotations

import json
from typing import Any


def reapply(base: dict[str, Any], ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Return ``theirs`` with the changes that turned ``base`` into ``ours`` applied, key by key.

    ``base`` is what this request loaded, ``ours`` what it holds now, ``theirs`` what the
    other request stored. A key added or changed here is set; a key deleted here is
    deleted; a key this request changed but the other deleted stays deleted (a deletion
    it did not see wins); keys untouched here keep the other request's value.
    """
    merged = dict(theirs)
    encode = json.dumps  # 1 == 1.0 == True in Python, not in JSON
    for key in base.keys() | ours.keys():
        if key not in ours:
            merged.pop(key, None)
        elif key not in base or (key in theirs and encode(base[key]) != encode(ours[key])):
            merged[key] = ours[key]
    return merged
