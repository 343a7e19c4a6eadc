"""Property tests: any JSON value round-trips exactly; anything JSON would change is refused."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storedsession import SerializationError, SessionStore, ids
from storedsession.serialization import MAX_DEPTH

SAFE_INT = 2**53 - 1
FIXTURE_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-SAFE_INT, max_value=SAFE_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()  # any code point but surrogates, astral planes included
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=30,
)
session_data = st.dictionaries(st.text(max_size=12), json_values, max_size=6)


def _same(a, b) -> bool:
    """Equal, and of the same JSON types all the way down (1 is not 1.0 is not True)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@FIXTURE_SETTINGS
@given(data=session_data)
def test_any_json_value_round_trips_exactly(store: SessionStore, data) -> None:
    session = store.load(None)
    session.update(data)
    session["_"] = 0  # never empty, so it is stored
    store.save(session)
    loaded = store.load(session.id)
    assert _same(dict(loaded), dict(session))
    assert not loaded.modified


@FIXTURE_SETTINGS
@given(
    text=st.text(alphabet=st.characters(min_codepoint=0x10000, max_codepoint=0x10FFFF), min_size=1)
)
def test_astral_text_round_trips(store: SessionStore, text) -> None:
    session = store.load(None)
    session[text] = text
    store.save(session)
    assert dict(store.load(session.id)) == {text: text}


changed_by_json = st.one_of(
    st.tuples(st.integers()),
    st.dictionaries(st.integers(), st.integers(), min_size=1),
    st.just(float("nan")),
    st.just(float("inf")),
    st.binary(),
    st.datetimes().map(lambda d: d),
    st.sets(st.integers(), min_size=1),
)


@settings(max_examples=60, deadline=None)
@given(value=changed_by_json, nest=st.integers(min_value=0, max_value=3))
def test_values_json_would_change_are_refused(value, nest) -> None:
    from storedsession.serialization import dumps

    for _ in range(nest):
        value = [{"inner": value}]
    with pytest.raises(SerializationError) as info:
        dumps({"k": value})
    assert info.value.key == "k"


def test_pathologically_deep_value_fails_cleanly(store: SessionStore) -> None:
    deep: list = []
    cursor = deep
    for _ in range(100_000):
        cursor.append([])
        cursor = cursor[0]
    session = store.load(None)
    session["deep"] = deep
    with pytest.raises(SerializationError, match="levels deep"):
        store.save(session)
    ok: list = []
    cursor = ok
    for _ in range(MAX_DEPTH - 1):
        cursor.append([])
        cursor = cursor[0]
    session["deep"] = ok
    store.save(session)
    assert store.load(session.id)["deep"] == ok


def test_a_self_referencing_value_fails_cleanly(store: SessionStore) -> None:
    loop: list = []
    loop.append(loop)
    session = store.load(None)
    session["loop"] = loop
    with pytest.raises(SerializationError):
        store.save(session)
    assert session.modified  # and asking does not blow up either


@FIXTURE_SETTINGS
@given(value=st.text(max_size=300) | st.binary(max_size=64).map(lambda b: b.hex()))
def test_hostile_cookie_values_never_raise_or_create_rows(store, count_queries, value) -> None:
    with count_queries(store) as q:
        session = store.load(value)
    assert session.new and len(session) == 0
    if not ids.is_public_id(value):
        assert q.count == 0


def test_datetime_values_are_refused() -> None:
    from storedsession.serialization import dumps

    with pytest.raises(SerializationError):
        dumps({"when": datetime(2026, 1, 1)})


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    value=json_values,
    before=st.sampled_from(["", " ", "\n\t"]),
    after=st.sampled_from(["", " ", "\n", "x", "}", ",1", "{}"]),
    compact=st.booleans(),
)
def test_payloads_parse_exactly_as_json_loads_would(value, before, after, compact) -> None:
    from storedsession.serialization import loads

    text = before + json.dumps(value, separators=(",", ":") if compact else None) + after
    try:
        expected = json.loads(text)
    except ValueError:
        expected = ValueError
    if expected is ValueError or type(expected) is not dict:
        with pytest.raises(ValueError):
            loads(text.encode("utf-8", "surrogatepass"))
    else:
        assert loads(text.encode("utf-8", "surrogatepass")) == expected
