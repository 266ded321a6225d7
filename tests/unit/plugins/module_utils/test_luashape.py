# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Archive files read by shape (luashape): the same items and the same errors as the general reader."""

from __future__ import annotations

import glob
import os
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import luadata, luashape
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import LuaDataError, dumps_list, loads_list
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.reliability import make_corpus

from lua_strategies import finite_values, nonfinite_values, strings


def exact(value: Any) -> Any:
    """A value as nested tuples that differ whenever two values differ in any way: types (1, 1.0,
    True), float bits (-0.0), key order, every string's code points."""
    if isinstance(value, dict):
        return ("table", tuple((exact(k), exact(v)) for k, v in value.items()))
    if isinstance(value, float):
        return ("float", struct.pack(">d", value))
    return (type(value).__name__, value)


def general(data: bytes) -> list[Any]:
    """The items as the general reader alone reads them."""
    return luadata._parse(data, luadata._LIST_START)[0]


def outcome(data: bytes, source: str = "t.list") -> Any:
    """loads_list's result as exact(), or its error message."""
    try:
        return exact(loads_list(data, source, sandbox=False))
    except LuaDataError as exc:
        return str(exc)


def general_outcome(data: bytes, source: str = "t.list") -> Any:
    """What loads_list gives with the general reader alone (as before luashape)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(luashape, "read_list", general)
        return outcome(data, source)


@pytest.fixture(autouse=True)
def no_shapes() -> Iterator[None]:
    """Every test starts with no shape learnt (the caches are per process)."""
    luashape._SHAPES.clear()
    luashape._RECENT.clear()
    yield
    luashape._SHAPES.clear()
    luashape._RECENT.clear()


class Counting:
    """Counts the statements (``item(...)``) the general reader reads for read_list."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.statements = 0
        original = luashape._parse

        def counting(*args: Any, **kwargs: Any) -> Any:
            self.statements += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(luashape, "_parse", counting)


def message(i: int, body: str = "hi", extra: dict[Any, Any] | None = None) -> dict[Any, Any]:
    """An archive item as mod_storage_internal stores it."""
    item: dict[Any, Any] = {
        1: {"name": "body", "attr": {}, 1: body},
        "name": "message",
        "attr": {"type": "chat", "to": "a@example.org", "from": "b@example.org/r", "id": f"id{i}", "stamp": "x"},
        "key": f"k{i}",
        "when": 1_700_000_000 + i,
        "with": "b@example.org",
    }
    if extra:
        item[2] = extra
    return item


# the same items ---------------------------------------------------------------------------------
SCALARS = st.one_of(strings, st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans())


@st.composite
def same_shaped(draw: st.DrawFn) -> list[Any]:
    """Items of one or two shapes (a template of keys and nesting), values of any scalar type."""
    keys = st.one_of(st.sampled_from(["name", "attr", "key", "when", "with", "xmlns"]), strings)
    templates = draw(
        st.lists(
            st.recursive(
                st.none(), lambda inner: st.dictionaries(st.one_of(keys, st.integers(1, 3)), inner, max_size=4)
            ),
            min_size=1,
            max_size=2,
        )
    )

    def fill(template: Any) -> Any:
        if template is None:
            return draw(SCALARS)
        return {k: fill(v) for k, v in template.items()}

    return [fill(draw(st.sampled_from(templates))) for _item in range(draw(st.integers(1, 8)))]


@given(same_shaped())
def test_same_shaped_items_read_as_the_general_reader_reads_them(items: list[Any]) -> None:
    data = dumps_list(items)
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))


@given(st.lists(st.one_of(finite_values, nonfinite_values), max_size=6))
def test_any_items_read_as_the_general_reader_reads_them(items: list[Any]) -> None:
    data = dumps_list([item for item in items if item is not None])
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))


def raw_utf8(data: bytes) -> bytes:
    """The text older Prosody wrote (``%q``): bytes above 127 raw, not escaped."""

    def unescape(m: re.Match[bytes]) -> bytes:
        return bytes((int(m[1]),)) if m[1].isdigit() and int(m[1]) > 127 else m[0]

    return re.sub(rb"\\([0-9]{3}|.)", unescape, data, flags=re.S)


@given(st.lists(st.text(max_size=6) | st.binary(max_size=6).map(lambda b: b.decode("utf-8", "surrogateescape"))))
def test_raw_bytes_in_strings_read_as_the_general_reader_reads_them(bodies: list[str]) -> None:
    data = raw_utf8(dumps_list([message(i, body) for i, body in enumerate(bodies)]))
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))


@pytest.mark.parametrize(
    "body",
    [
        b"caf\\195\\169 \\226\\152\\131 \\\"q\\\" \\'s\\' \\\\ \\n\\r\\t\\a\\b\\f\\v \\000\\255",
        b"\\x41\\u{e9}\\u{7FFFFFFF}",
        b"a\\z  \n\t b",
        b"line\\\nnext\\\r\nthird",
        b"\\0123\\1\\12x\\127\\128",
        b"\\195 split \\169",
        b"raw \xc3\xa9 then \\195\\169 and \xff\\255",
        b"\xc3\\169",  # a raw lead byte and an escaped continuation byte: one character
    ],
)
def test_escapes_in_a_known_shape(body: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    known = dumps_list([message(0), message(1)])
    data = known + known.replace(b'"hi"', b'"' + body + b'"')
    counting = Counting(monkeypatch)
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))
    assert counting.statements == 1  # the first item, whose shape is learnt


@pytest.mark.parametrize(
    "when",
    [
        *(b"0", b"-0", b"-0.0", b"1.5", b"1e2", b".5", b"3.", b"1E+2", b"1e999", b"-1e999", b"1" * 400),
        *(b"9223372036854775807", b"9223372036854775808", b"-9223372036854775807", b"-9223372036854775808"),
        *(b"0x10", b"(1/0)", b"(0/0)", b"true", b"false", b"nil", b'"1"'),
    ],
)
def test_numbers_in_a_known_shape(when: bytes) -> None:
    known = dumps_list([message(0), message(1)])
    data = known + known.replace(b"= 1700000001;", b"= " + when + b";")
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))


def test_duplicate_keys_and_mixed_fields_as_lua_stores_them() -> None:
    item = b'item({\n\t"a";\n\t["k"] = 1;\n\t"b";\n\t["k"] = "two";\n\t["j"] = {};\n\t["k"] = 3.5;\n});\n'
    data = item * 3
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))
    assert loads_list(data, "t.list")[2] == {1: "a", 2: "b", "k": 3.5, "j": {}}
    assert list(loads_list(data, "t.list")[2]) == [1, 2, "k", "j"]


# shapes in use ----------------------------------------------------------------------------------
def test_items_of_a_known_shape_skip_the_general_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(monkeypatch)
    data = dumps_list([message(i) for i in range(50)])
    assert loads_list(data, "t.list") == [message(i) for i in range(50)]
    assert counting.statements == 1  # the first item, whose shape is learnt


def test_every_kind_of_value_in_one_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    items = [{"s": f"v{i}", "i": -i, "f": i + 0.5, "b": i % 2 == 0, "t": {1: "x", "n": i, 2: True}} for i in range(6)]
    counting = Counting(monkeypatch)
    assert exact(loads_list(dumps_list(items), "t.list")) == exact(items)
    assert counting.statements == 1


def test_keys_and_values_that_look_like_python_are_data(monkeypatch: pytest.MonkeyPatch) -> None:
    # A shape is compiled to Python once learnt: what the file holds must never become code.
    code = "'] or __import__('os').system('false') or k['"
    items = [{code: f"{code}{i}", "k": {f"}}, {code}": i, "u": code + "\\"}, "g[0]": "g[1]"} for i in range(5)]
    counting = Counting(monkeypatch)
    assert exact(loads_list(dumps_list(items), "t.list")) == exact(items)
    assert counting.statements == 1


def test_shape_changes_mid_file(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = {"name": "markable", "attr": {"xmlns": "urn:xmpp:chat-markers:0"}}
    kinds = "aaabbabbbaab"
    items = [message(i, extra=marker if kind == "b" else None) for i, kind in enumerate(kinds)]
    items[5]["when"] = 1.25  # a float where the others have integers: the same shape
    items[6]["attr"] = {"to": "a@example.org", "type": "chat"}  # other attributes: a shape of its own
    counting = Counting(monkeypatch)
    data = dumps_list(items)
    assert exact(loads_list(data, "t.list")) == exact(items)
    assert counting.statements == 3  # one item of each shape
    assert len(luashape._SHAPES) == 3


def test_items_the_shapes_leave_to_the_general_reader() -> None:
    data = (
        dumps_list([message(0), message(1)])
        + b"-- a comment\n"
        + dumps_list([message(2)])
        + b"item({ name = 'message', attr = { }, key = 'k3', when = 0x10 });\n"
        + b'item("a string");\nitem(nil);\nitem({ ["a"] = nil, [3] = 1, [true] = 2 })\n;;'
        + dumps_list([message(4)])[:-1]  # no newline at the end
    )
    assert exact(loads_list(data, "t.list", sandbox=False)) == exact(general(data))
    assert len(loads_list(data, "t.list")) == 7


def test_shapes_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(luashape, "MAX_SHAPES", 5)
    files = [dumps_list([{f"f{n}-{i}": i} for i in range(3)]) for n in range(12)]
    for data in files:
        assert exact(loads_list(data, "t.list")) == exact(general(data))
    assert len(luashape._SHAPES) == 5
    assert len(luashape._RECENT) <= luashape.RECENT


def test_a_file_of_ever_new_shapes_learns_a_few(monkeypatch: pytest.MonkeyPatch) -> None:
    data = dumps_list([{f"f{i}": i} for i in range(100)])
    counting = Counting(monkeypatch)
    assert exact(loads_list(data, "t.list")) == exact(general(data))
    assert len(luashape._SHAPES) == luashape.MAX_NEW_SHAPES
    assert counting.statements == 100


def test_big_items_are_left_to_the_general_reader() -> None:
    wide = dumps_list([{f"key{n}": n for n in range(luashape.MAX_SLOTS + 1)}] * 2)
    deep: Any = "x"
    for _level in range(luashape.MAX_TABLES + 1):
        deep = {"k": deep}
    long_keys = dumps_list([{"k" * luashape.MAX_LITERAL: 1}] * 2)
    for data in (wide, dumps_list([deep] * 2), long_keys):
        assert exact(loads_list(data, "t.list")) == exact(general(data))
    assert luashape._SHAPES == {}


def test_long_values_are_fine_in_a_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = Counting(monkeypatch)
    items = [message(i, "é" * 50_000 + str(i)) for i in range(3)]
    assert loads_list(dumps_list(items), "t.list") == items
    assert counting.statements == 1


# errors -----------------------------------------------------------------------------------------
VALID = dumps_list([message(i, "caf\xe9") for i in range(5)])


@pytest.mark.parametrize(
    "data",
    [
        VALID + b'item({ ["a"] = ; });\n',  # a corrupt item after valid items
        VALID + VALID[: len(VALID) // 2],  # a truncated file
        VALID + VALID.replace(b"caf\\195\\169", b"caf\\256", 1),  # an escape of a known shape that fails
        VALID + b"item({})\nitem(})",
        VALID.replace(b"}", b"]", 1),
        b"\xc3\xa9 " + VALID,  # bytes before the first item
        raw_utf8(VALID) + b"\nitem(x);",  # raw UTF-8 (two bytes a character) before the error
        VALID + b"item(",
        VALID + b"trailing",
    ],
)
def test_errors_are_the_general_readers(data: bytes) -> None:
    expected = general_outcome(data, "host/store/user.list")
    assert isinstance(expected, str) and expected.startswith("host/store/user.list: not in Prosody's data format")
    assert outcome(data, "host/store/user.list") == expected


def test_values_python_refuses_fail_as_before() -> None:
    data = VALID + VALID.replace(b"1700000003", b"1" * 5000, 1)  # past int()'s digit limit, where it has one
    assert outcome(data) == general_outcome(data)


def test_corrupt_item_after_valid_items_names_the_file_and_line() -> None:
    data = VALID + b'item({\n\t["a"] = ;\n});\n'
    line = VALID.count(b"\n") + 2
    with pytest.raises(LuaDataError, match=rf"^data/u\.list: not in Prosody's data format \(line {line}: "):
        loads_list(data, "data/u.list", sandbox=False)
    with pytest.raises(LuaDataError, match=rf"^data/u\.list: not in Prosody's data format \(line {line}: .*Lua"):
        loads_list(data, "data/u.list")  # the sandbox cannot read it either


def test_a_file_outside_the_grammar_still_goes_to_the_sandbox() -> None:
    data = VALID + b"for i = 1, 2 do item({ n = i }) end\n"
    assert loads_list(data, "x.list")[-2:] == [{"n": 1}, {"n": 2}]


# Prosody's own files ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def prosody_corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_corpus(str(tmp_path_factory.mktemp("shapes") / "data"), 30, 40)


def test_prosody_written_archives(prosody_corpus: str, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = sorted(glob.glob(os.path.join(prosody_corpus, "*", "*", "*.list")))
    assert len(paths) > 30
    counting = Counting(monkeypatch)
    total = 0
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        items = loads_list(data, path)
        assert exact(items) == exact(general(data)), path
        total += len(items)
    assert counting.statements <= len(luashape._SHAPES) < 10  # each shape read once by the general reader
    assert total > 1000
