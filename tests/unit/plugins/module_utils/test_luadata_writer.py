# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The writer's fast paths write exactly what the writer wrote before them.

``reference_dumps*`` below is the writer as it was (one general algorithm: every key normalised,
sorted by a tuple, every string through one regex substitution), kept verbatim as the oracle:
test_luadata.py checks that text against real Prosody. Compared here: the bytes written, or the
EncodeError and its message, for values of every shape, including the ones that leave the fast
paths (keys out of order, holes, non-ASCII keys, subclasses) and strings long and short.
"""

from __future__ import annotations

import enum
import re
from collections import OrderedDict
from typing import Any, Callable

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import luadata
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import EncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import (
    _INDENTS,
    _STR_ESCAPES,
    MAX_DEPTH,
    BoolKey,
    _dump_float,
    _dump_int,
    _encode_str,
    _norm_key,
    dumps,
    dumps_dat,
    dumps_list,
    dumps_stanza_item,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_stanza import RAW_ONE_ATTR, XML_STANZAS

from lua_strategies import encodable_values, finite_values, nonfinite_values, strings

# -- the reference: the writer before its fast paths ----------------------------------------------
# What the fast paths left as it was (the escape table, numbers, keys other than strings) is the
# writer's own; the rest (string quoting, tables) is kept here as it was.
_NEEDS_ESCAPE = re.compile(rb"[\x00-\x1f\"'\\\x7f-\xff]+")
_CLOSERS = [b";\n" + b"\t" * d + b"}" for d in range(MAX_DEPTH + 2)]


def _escape_run(m: re.Match) -> bytes:
    return b"".join([_STR_ESCAPES[c] for c in m.group()])


def _quote(raw: bytes) -> bytes:
    return b'"' + _NEEDS_ESCAPE.sub(_escape_run, raw) + b'"'


def _dump_scalar(v: Any) -> bytes:
    t = type(v)
    if t is str:
        return _quote(_encode_str(v))
    if t is int:
        return _dump_int(v)
    if t is bool:
        return b"true" if v else b"false"
    if t is float:
        return _dump_float(v)
    if v is None:
        return b"nil"
    if t is BoolKey:
        return b"true" if v.value else b"false"
    if isinstance(v, bool):
        return b"true" if v else b"false"
    if isinstance(v, int):
        return _dump_int(int(v))
    if isinstance(v, float):
        return _dump_float(float(v))
    if isinstance(v, str):
        return _quote(_encode_str(str(v)))
    raise EncodeError(f"cannot write a {t.__name__} as Lua data")


def _dump_table(t: dict, out: list, depth: int) -> None:
    depth += 1
    if depth > MAX_DEPTH:
        raise EncodeError(f"tables nested deeper than {MAX_DEPTH} levels (or a cycle)")
    entries = []
    others: dict = {}
    for k, v in t.items():
        if v is None:
            continue
        if type(k) is str:  # pylint: disable=unidiomatic-typecheck
            raw = _encode_str(k)
            entries.append(((2, raw), k, raw, v))
            continue
        sk, nk, text = _norm_key(k)
        if nk in others:
            raise EncodeError(f"table key {k!r} given twice (as {nk!r})")
        others[nk] = v
        entries.append((sk, nk, text, v))
    if not entries:
        out.append(b"{}")
        return
    n = 0
    while (n + 1) in others:
        n += 1
    indent = _INDENTS[depth]
    sep = b";" + indent
    out.append(b"{")
    first = True
    for i in range(1, n + 1):
        out.append(indent if first else sep)
        first = False
        _dump_value(others[i], out, depth)
    if len(entries) > n:
        entries.sort(key=_sort_key)
        for sk, nk, text, v in entries:
            if n and sk[0] == 1 and isinstance(nk, int) and 1 <= nk <= n:
                continue
            out.append(indent if first else sep)
            first = False
            out.append(b"[" + (_quote(text) if sk[0] == 2 else text) + b"] = ")
            _dump_value(v, out, depth)
    out.append(_CLOSERS[depth - 1])


def _sort_key(entry: tuple) -> tuple:
    return entry[0]


def _dump_value(v: Any, out: list, depth: int) -> None:
    if type(v) is dict:  # pylint: disable=unidiomatic-typecheck
        _dump_table(v, out, depth)
    elif isinstance(v, dict):
        _dump_table(dict(v), out, depth)
    else:
        out.append(_dump_scalar(v))


def reference_dumps(value: Any) -> bytes:
    out: list = []
    _dump_value(value, out, 0)
    return b"".join(out)


def reference_dumps_dat(value: Any) -> bytes:
    return b"return " + reference_dumps(value) + b";\n"


def reference_dumps_list(items: list[Any]) -> bytes:
    out = []
    for item in items:
        if item is None:
            raise EncodeError("an archive item cannot be nil")
        out.append(b"item(" + reference_dumps(item) + b");\n")
    return b"".join(out)


# -- values --------------------------------------------------------------------------------------
class Level(enum.IntEnum):
    ONE = 1
    TWO = 2


class Text(str):
    """A str subclass: written as its str() (which this one changes)."""

    def __str__(self) -> str:
        return "text:" + super().__str__()


# Long strings cross the writer's thresholds (cached literals, escaping by str.translate or by runs).
long_strings = st.builds(
    lambda unit, times, tail: unit * times + tail,
    st.sampled_from(["a", "ab'", "é", "x\n", "\U0001f600 ", "plain text ", "\udcff", "\x00\x7f"]),
    st.integers(0, 80),
    strings,
)
any_strings = st.one_of(strings, long_strings, st.sampled_from(["name", "attr", "key", "when", "with", "type"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 5),
    st.integers(-(2**64), 2**64),
    st.floats(),
    any_strings,
    st.sampled_from([Level.ONE, Text("t"), b"bytes", (1,)]),
)
keys = st.one_of(
    any_strings,
    st.integers(0, 6),
    st.integers(-(2**64), 2**64),
    st.floats(),
    st.booleans(),
    st.booleans().map(BoolKey),
    st.sampled_from([Level.ONE, Level.TWO, Text("k"), Text("name"), None, (1, 2), 1.0, 2.0]),
)


def positional(children: st.SearchStrategy) -> st.SearchStrategy:
    """1..n in order (the fast path), plus string fields; sometimes a nil inside."""
    return st.builds(
        lambda items, named: {**dict(enumerate(items, 1)), **named},
        st.lists(children, max_size=5),
        st.dictionaries(any_strings, children, max_size=4),
    )


def tables(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.dictionaries(keys, children, max_size=6),
        st.dictionaries(any_strings, children, max_size=6),
        positional(children),
        positional(children).map(lambda t: OrderedDict(reversed(list(t.items())))),
    )


values = st.recursive(scalars, tables, max_leaves=12)
stanza_texts = st.one_of(any_strings, st.sampled_from(["chat", "user@example.org", "en", "urn:xmpp:sid:0"]))


def stanza_tables(children: st.SearchStrategy) -> st.SearchStrategy:
    """Preserialized stanzas (st.preserialize's shape), as archive items hold them."""
    return st.builds(
        lambda name, attr, kids: {"name": name, "attr": attr, **dict(enumerate(kids, 1))},
        stanza_texts,
        st.dictionaries(stanza_texts, stanza_texts, max_size=5),
        st.lists(children, max_size=4),
    )


stanzas = st.recursive(stanza_texts, stanza_tables, max_leaves=10)
archive_items = st.builds(
    lambda stanza, key, when, peer: (
        {**stanza, "key": key, "when": when, "with": peer} if isinstance(stanza, dict) else stanza
    ),
    stanzas,
    stanza_texts,
    st.one_of(st.integers(0, 2**40), st.floats(0, 2e9)),
    st.one_of(st.none(), stanza_texts),
)


def outcome(write: Callable[[Any], bytes], value: Any) -> Any:
    """What a writer makes of value: its bytes, or the EncodeError's message."""
    try:
        return write(value)
    except EncodeError as exc:
        return ("EncodeError", str(exc))


def assert_as_before(value: Any) -> None:
    assert outcome(dumps, value) == outcome(reference_dumps, value)
    assert outcome(dumps_dat, value) == outcome(reference_dumps_dat, value)


# -- the tests -----------------------------------------------------------------------------------
@given(value=st.one_of(finite_values, nonfinite_values, encodable_values))
def test_lua_values_as_before(value: Any) -> None:
    assert_as_before(value)


@given(value=values)
def test_odd_tables_as_before(value: Any) -> None:
    assert_as_before(value)


@given(value=stanzas)
def test_stanzas_as_before(value: Any) -> None:
    assert_as_before(value)


@given(items=st.lists(st.one_of(archive_items, values), max_size=6))
def test_archive_files_as_before(items: list[Any]) -> None:
    """Items of one file share the writer's string cache: a string met again is written the same."""
    assert outcome(dumps_list, items) == outcome(reference_dumps_list, items)
    assert outcome(dumps_list, items * 2) == outcome(reference_dumps_list, items * 2)


def test_nil_inside_positions_and_keys_out_of_order() -> None:
    for value in (
        {1: "a", 2: None, 3: "c", "x": 1},
        {2: "b", 1: "a"},
        {1: "a", "n": None, 3: "c"},
        {"a": 1, 1: None},
        {True: "t", 2: "b"},
        {1: "a", 2: "b", BoolKey(True): "t", BoolKey(False): "f"},
        {1.0: "a", 2: "b"},
        {Level.ONE: "a", 2: "b"},
        {"é": 1, "\udcc3\udca9": 2, "e": 3},
        {"\ud800": None, "a": 1},
        {"\ud800": 1, "a": 2**64},
        {"b": 2**64, 1: {"\ud800": 1}},
        {Text("k"): 1, "k": 2},
    ):
        assert_as_before(value)


def test_depth_limit_on_every_path() -> None:
    for wrap in (lambda v: {1: v}, lambda v: {"k": v}, lambda v: {2: v}, lambda v: {1: v, "é": 1}):
        for depth in (MAX_DEPTH - 1, MAX_DEPTH, MAX_DEPTH + 1):
            value: Any = {}
            for _level in range(depth - 1):
                value = wrap(value)
            assert_as_before(value)


def test_module_caches_stay_bounded() -> None:
    """Distinct keys and escape runs past the caches' size are written right, and not kept."""
    many = {f"key{i}": f"value{i}" for i in range(luadata._CACHE_MAX + 100)}
    nested = {"a": {"b": {"c": many}}}
    assert dumps(nested) == reference_dumps(nested)
    assert all(len(cache) <= luadata._CACHE_MAX for cache in luadata._KEY_TEXTS)
    runs = "".join(chr(0x400 + i) + " " for i in range(luadata._CACHE_MAX + 100))  # > 128 bytes: by runs
    assert dumps(runs) == reference_dumps(runs)
    assert len(luadata._RUN_ESCAPES) <= luadata._CACHE_MAX


# -- archive items straight from a stanza ----------------------------------------------------------
def stanza_item_outcome(element: Element, stamp: str, fields: dict[str, Any], strings: dict[str, bytes]) -> Any:
    """What dumps_stanza_item writes for an item, and what the reference writer writes for its table."""
    attr = {**element.attr, "stamp": stamp}
    table = {**element.preserialize(), "attr": attr, **fields}
    return outcome(lambda _: dumps_stanza_item(element, attr, fields, strings), None), outcome(
        reference_dumps_list, [table]
    )


item_fields = st.fixed_dictionaries(
    {"key": stanza_texts, "when": st.one_of(st.integers(0, 2**40), st.floats(0, 2e9))},
    optional={"with": stanza_texts},
)


@given(
    items=st.lists(st.tuples(st.one_of(RAW_ONE_ATTR, XML_STANZAS), stanza_texts, item_fields), min_size=1, max_size=4)
)
def test_stanza_items_as_before(items: list[tuple[Element, str, dict[str, Any]]]) -> None:
    """Straight from the element, as the reference writes the table it preserializes to; the
    items of one file share a string cache."""
    strings: dict[str, bytes] = {}
    for element, stamp, fields in items * 2:
        mine, reference = stanza_item_outcome(element, stamp, fields, strings)
        assert mine == reference


def test_stanza_items_of_other_shapes_as_before() -> None:
    """Elements the direct way leaves to the general one are written the same, errors included."""
    deep = [Element("m")]
    for _level in range(MAX_DEPTH + 1):
        deep.append(Element("e", {}, [deep[-1]]))
    odd = [
        Element("m", {"a": 1}),  # type: ignore[dict-item]  # a value that is no text
        Element("m", {}, [Text("child text")]),
        Element("m", {"\udcc3": "x", "é": "y"}),  # names not in byte order as str
        Element("m", {}, [5]),  # type: ignore[list-item]
        *deep[MAX_DEPTH - 3 :],
    ]
    for element in odd:
        mine, reference = stanza_item_outcome(element, "2023-11-19T14:26:41Z", {"key": "k", "when": 1}, {})
        assert mine == reference
    assert mine[0] == "EncodeError"  # the deepest
