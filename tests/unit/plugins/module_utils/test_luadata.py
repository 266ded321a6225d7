# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Lua data codec: exact bytes and values, and both directions against real Prosody."""

from __future__ import annotations

import math
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils.errors import EncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import (
    BoolKey,
    LuaDataError,
    dumps,
    dumps_dat,
    dumps_list,
    loads_dat,
    loads_list,
    loads_value,
)

from prosody_oracle import canon, run_lua

INT_MIN, INT_MAX = -(2**63), 2**63 - 1


def roundtrip(value: object) -> object:
    return loads_dat(dumps_dat(value), "test.dat", sandbox=False)


def same(a: object, b: object) -> bool:
    """Equal as Lua data (NaN equals NaN, -0.0 differs from 0.0, 1 differs from 1.0)."""
    return canon(a) == canon(b)


# ---------------------------------------------------------------------------------------------
# Writer: exact bytes


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, b"nil"),
        (True, b"true"),
        (False, b"false"),
        (0, b"0"),
        (-17, b"-17"),
        (INT_MAX, b"9223372036854775807"),
        (INT_MIN, b"0x8000000000000000"),
        (2**53 + 1, b"9007199254740993"),
        (1.5, b"1.5"),
        (0.1, b"0.100000000000000006"),
        (1.0, b"1.0"),
        (-0.0, b"-0.0"),
        (1e15, b"1000000000000000.0"),
        (1e18, b"1e+18"),
        (2.0**63, b"9.22337203685477581e+18"),
        (5e-324, b"4.94065645841246544e-324"),
        (1.7976931348623157e308, b"1.79769313486231571e+308"),
        (math.inf, b"(1/0)"),
        (-math.inf, b"(-1/0)"),
        (math.nan, b"(0/0)"),
        ("", b'""'),
        ("a\"b'c\\d", b'"a\\"b\\\'c\\\\d"'),
        ("\a\b\f\n\r\t\v\x00\x01\x1f\x7f", b'"\\a\\b\\f\\n\\r\\t\\v\\000\\001\\031\\127"'),
        ("h\u00e9", b'"h\\195\\169"'),
        ("\udcff\udc80", b'"\\255\\128"'),  # invalid UTF-8 survives byte for byte
        ({}, b"{}"),
        ({1: "a", 2: "b"}, b'{\n\t"a";\n\t"b";\n}'),
    ],
)
def test_dumps_scalars_and_simple_tables(value: object, text: bytes) -> None:
    assert dumps(value) == text
    assert same(loads_value(text, "t", sandbox=False), value)


def test_dumps_key_order_and_layout() -> None:
    value = {
        "b": 1,
        2: "two",
        "a": {"x": {}},
        1: "one",
        4: "four",
        BoolKey(True): "t",
        BoolKey(False): "f",
        -1: "neg",
        2.5: "float",
        "\x00": "nul",
    }
    assert dumps(value) == (
        b"{\n"
        b'\t"one";\n'
        b'\t"two";\n'
        b'\t[false] = "f";\n'
        b'\t[true] = "t";\n'
        b'\t[-1] = "neg";\n'
        b'\t[2.5] = "float";\n'
        b'\t[4] = "four";\n'
        b'\t["\\000"] = "nul";\n'
        b'\t["a"] = {\n'
        b'\t\t["x"] = {};\n'
        b"\t};\n"
        b'\t["b"] = 1;\n'
        b"}"
    )
    assert roundtrip(value) == value


def test_dumps_dat_and_list_framing() -> None:
    assert dumps_dat({"a": 1}) == b'return {\n\t["a"] = 1;\n};\n'
    assert dumps_dat(None) == b"return nil;\n"
    assert dumps_list([1, "x", {}]) == b'item(1);\nitem("x");\nitem({});\n'
    assert dumps_list([]) == b""


def test_writer_normalises_keys_and_drops_nil_values() -> None:
    # As Lua stores them: 3.0 is the key 3, a plain bool key is a boolean key, nil is no entry.
    assert dumps({3.0: "x", True: 1, "gone": None}) == b'{\n\t[true] = 1;\n\t[3] = "x";\n}'
    assert dumps({1.0: "a", 2: "b"}) == b'{\n\t"a";\n\t"b";\n}'


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (2**63, "does not fit"),
        (-(2**63) - 1, "does not fit"),
        ({"a": 2**64}, "does not fit"),
        ({2**63: 1}, "does not fit"),
        ({math.nan: 1}, "NaN"),
        ({None: 1}, "nil"),
        (b"bytes", "bytes"),
        ([1, 2], "list"),
        ({"a": {1, 2}}, "set"),
        ({(1, 2): 1}, "tuple"),
        ({True: 1, BoolKey(True): 2}, "twice"),
        ("\ud800", "encodable"),
    ],
)
def test_dumps_rejects(value: object, message: str) -> None:
    with pytest.raises(EncodeError, match=message):
        dumps(value)


def nested(depth: int) -> dict:
    value: dict = {}
    for _level in range(depth - 1):
        value = {1: value}
    return value


def test_depth_limit_is_prosodys() -> None:
    text = dumps(nested(127))
    assert text.count(b"{") == 127
    assert loads_value(text, "deep") == nested(127)
    with pytest.raises(EncodeError, match="127"):
        dumps(nested(128))
    cyclic: dict = {}
    cyclic["self"] = cyclic
    with pytest.raises(EncodeError, match="127"):
        dumps(cyclic)


def test_dumps_list_refuses_nil_items() -> None:
    with pytest.raises(EncodeError, match="nil"):
        dumps_list([1, None])


# ---------------------------------------------------------------------------------------------
# Reader


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"1", 1),
        (b"1.0", 1.0),
        (b"-0", 0),
        (b"-0.0", -0.0),
        (b"1e2", 100.0),
        (b".5", 0.5),
        (b"3.", 3.0),
        (b"9223372036854775807", INT_MAX),
        (b"9223372036854775808", 2.0**63),  # overflowing decimal integers are floats, as in Lua
        (b"-9223372036854775808", -(2.0**63)),
        (b"0x10", 16),
        (b"0xffffffffffffffff", -1),  # hex integers wrap around
        (b"0x8000000000000000", INT_MIN),
        (b"-0x8000000000000000", INT_MIN),
        (b"0x1p4", 16.0),
        (b"0x.8", 0.5),
        (b"1e999", math.inf),
        (b"(1/0)", math.inf),
        (b"(-1/0)", -math.inf),
        (b"(0/0)", math.nan),
        (b"true", True),
        (b"false", False),
        (b"nil", None),
        (b'"a\\"b"', 'a"b'),
        (b"'it\\'s \"q\"'", 'it\'s "q"'),
        (b'"\\97\\0989\\x41\\u{e9}\\u{10FFFF}"', "ab9A\u00e9\U0010ffff"),
        (b'"\\u{D800}"', "\udced\udca0\udc80"),  # Lua encodes a surrogate; it is not UTF-8
        (b'"\\u{7FFFFFFF}"', b"\xfd\xbf\xbf\xbf\xbf\xbf".decode("utf-8", "surrogateescape")),
        (b'"a\\z  \n\t b"', "ab"),
        (b'"line\\\nnext"', "line\nnext"),
        (b'"\\a\\b\\f\\n\\r\\t\\v\\\\"', "\a\b\f\n\r\t\v\\"),
        (b'"\\255\\000x"', "\udcff\x00x"),
        (b'"raw \xff\xfe bytes"', "raw \udcff\udcfe bytes"),
        (b"[[\nlong\r\n]]", "long\n"),
        (b"[==[a]]b]==]", "a]]b"),
        (b"{}", {}),
        (b"{ 1, 2; 3, }", {1: 1, 2: 2, 3: 3}),
        (b"{ a = 1, _b2 = 'x' }", {"a": 1, "_b2": "x"}),
        (b"{ [true] = 1, [false] = 0 }", {BoolKey(True): 1, BoolKey(False): 0}),
        (b"{ [1.0] = 'a', [2.5] = 'b', [-0.0] = 'z' }", {1: "a", 2.5: "b", 0: "z"}),
        (b"{ [1] = 'a', [3] = 'c' }", {1: "a", 3: "c"}),
        (b"{ a = 1, a = 2 }", {"a": 2}),  # last field wins
        (b"{ 'x', nil, 'z', k = nil }", {1: "x", 3: "z"}),
        (b"{ [1] = 'keyed', 'positional' }", {1: "positional"}),
        (b"-- comment\n{ --[[ long\ncomment ]] 1 --[==[ x ]==] }", {1: 1}),
    ],
)
def test_loads_value_grammar(text: bytes, value: object) -> None:
    assert same(loads_value(text, "v", sandbox=False), value)  # the strict reader alone


def test_positional_items_are_stored_in_batches_of_50_as_lua_does() -> None:
    # Lua flushes positional items every 50 fields, so a later [1] = beats item 1 only after that.
    items = b", ".join(b"%d" % i for i in range(1, 51))
    assert loads_value(b"{ " + items + b", [1] = 'k' }", "v")[1] == "k"
    assert loads_value(b"{ " + items + b", 51, [1] = 'k' }", "v")[1] == "k"
    assert loads_value(b"{ [1] = 'k', " + items + b" }", "v")[1] == 1
    assert loads_value(b"{ 1, 2, [1] = 'k' }", "v")[1] == 1
    assert loads_value(b"{ 1, 2, [3] = 'k' }", "v")[3] == "k"


def test_integral_float_keys_become_integer_keys() -> None:
    value = loads_value(b"{ [2.0] = 'x', [1e0] = 'y', [1e300] = 'z' }", "v")
    assert [type(k) for k in value] == [int, int, float]
    assert value == {2: "x", 1: "y", 1e300: "z"}


def test_nan_and_nil_keys_are_errors() -> None:
    for text in (b"{ [(0/0)] = 1 }", b"{ [nil] = 1 }"):
        with pytest.raises(LuaDataError, match=r"bad\.dat"):
            loads_dat(b"return " + text + b";", "bad.dat")


def test_loads_dat_empty_forms() -> None:
    for text in (b"", b"  \n", b"return nil;\n", b"return;", b"return", b"-- nothing\n"):
        assert loads_dat(text, "e.dat") is None


def test_strict_only_reports_without_running_lua() -> None:
    with pytest.raises(LuaDataError, match=r"^x\.dat: not in Prosody's data format \(line 1: .*\)$"):
        loads_dat(b"return { a = 1 + 1 };", "x.dat", sandbox=False)


def test_loads_list_forms() -> None:
    assert loads_list(b"", "e.list") == []
    assert loads_list(b'item("a");\nitem(1)\nitem({ 2 });;\n', "x.list") == ["a", 1, {1: 2}]
    assert loads_list(b"item(nil);\nitem(false);\n", "x.list") == [False]  # table.insert(t, nil) adds nothing


def test_prosody_roster_with_metadata_entry() -> None:
    text = (
        b"return {\n"
        b"\t[false] = {\n"
        b'\t\t["pending"] = {\n\t\t\t["carol@example.com"] = true;\n\t\t};\n'
        b'\t\t["version"] = 3;\n'
        b"\t};\n"
        b'\t["bob@example.com"] = {\n'
        b'\t\t["groups"] = {\n\t\t\t["Friends"] = true;\n\t\t};\n'
        b'\t\t["name"] = "Bob";\n'
        b'\t\t["subscription"] = "both";\n'
        b"\t};\n"
        b"};\n"
    )
    roster = loads_dat(text, "alice.dat", sandbox=False)
    assert roster == {
        BoolKey(False): {"version": 3, "pending": {"carol@example.com": True}},
        "bob@example.com": {"subscription": "both", "groups": {"Friends": True}, "name": "Bob"},
    }
    assert dumps_dat(roster) == text
    assert 0 not in roster and False not in roster  # the metadata key is not the integer 0


def test_strings_and_keys_with_invalid_utf8_and_nul() -> None:
    key = b"k\xff\x00\xc3".decode("utf-8", "surrogateescape")
    value = {key: "v\x00\udce9", "\x00": key}
    text = dumps(value)
    assert text == b'{\n\t["\\000"] = "k\\255\\000\\195";\n\t["k\\255\\000\\195"] = "v\\000\\233";\n}'
    assert roundtrip(value) == value


def test_numbers_keep_their_lua_type_through_a_roundtrip() -> None:
    value = {1: 1, 2: 1.0, 3: -0.0, 4: 2**53 + 1, 5: INT_MIN, 6: INT_MAX, 7: math.inf, 8: -math.inf}
    value.update({9: math.nan, 10: 5e-324, 11: 1.7976931348623157e308, 12: 1e15, 13: 0.1})
    back = roundtrip(value)
    assert same(back, value)
    assert math.copysign(1, back[3]) == -1


def test_depth_limit_on_read() -> None:
    ok = b"return " + b"{" * 127 + b"}" * 127 + b";"
    assert loads_dat(ok, "ok.dat") == nested(127)
    start = time.monotonic()
    for depth in (128, 100_000):
        with pytest.raises(LuaDataError, match=r"deep\.dat.*(127|C stack overflow|too many)"):
            loads_dat(b"return " + b"{" * depth + b"}" * depth + b";", "deep.dat")
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "text",
    [
        b'return "' + b"\\z " * 20000,  # unterminated, many ways to split if the regex were ambiguous
        b"return " + b"1" * 200000 + b"x",
        b"return 0x" + b"f" * 200000 + b"g",
        b"return { " + b'["k"] = "v"; ' * 20000 + b"[",
        b'return "' + b"a" * 200000,
    ],
)
def test_pathological_text_fails_fast(text: bytes) -> None:
    start = time.monotonic()
    with pytest.raises(LuaDataError, match=r"^slow\.dat: "):
        loads_dat(text, "slow.dat", sandbox=False)
    assert time.monotonic() - start < 2


def test_errors_name_the_file_and_line() -> None:
    with pytest.raises(LuaDataError) as info:
        loads_dat(b'return {\n\t["a"] = 1;\n\t["b"] = ,\n};\n', "data/host/store/user.dat")
    message = str(info.value)
    assert message.startswith("data/host/store/user.dat: ")
    assert "line 3" in message
    assert info.value.source == "data/host/store/user.dat"
    with pytest.raises(LuaDataError, match=r"^x\.list: .*line 2"):
        loads_list(b"item(1);\nitem(}\n", "x.list")


def test_reader_rejects_non_bytes() -> None:
    with pytest.raises(TypeError):
        loads_dat("return 1", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b'return { a = 1 + 1, ["b"] = ("x"):rep(3) };', {"a": 2, "b": "xxx"}),
        (b"local t = {} t.x = 1 return t", {"x": 1}),
        (b"return { n = 2^53, i = 7 // 2, m = -(2^63) }", {"n": 2.0**53, "i": 3, "m": -(2.0**63)}),
        (b"return 1, 2", 1),
        (b"return {f = 'a' .. 'b'}", {"f": "ab"}),
    ],
)
def test_files_outside_the_grammar_go_through_the_sandbox(text: bytes, value: object) -> None:
    assert same(loads_dat(text, "hand-edited.dat"), value)


def test_list_outside_the_grammar_goes_through_the_sandbox() -> None:
    text = b"local with = 'a@b'\nfor i = 1, 3 do item({ with = with, n = i }) end\nitem(nil)\n"
    assert loads_list(text, "x.list") == [{"with": "a@b", "n": i} for i in (1, 2, 3)]


# ---------------------------------------------------------------------------------------------
# Against real Prosody

ints = st.one_of(
    st.integers(INT_MIN, INT_MAX),
    st.integers(-1000, 1000),
    st.sampled_from([0, 2**53, 2**53 + 1, INT_MIN, INT_MIN + 1, INT_MAX]),
)
floats = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, 1.0, -3.0, 1e15, 1e17, 1e18, 2.0**63, -(2.0**63), 5e-324, 1.7976931348623157e308]),
)
strings = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=12),
    st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
    st.sampled_from(["", "name", "attr", "a@b.example", "\x00", "\\", '"', "'"]),
)
scalars = st.one_of(st.booleans(), ints, floats, strings)
keys = st.one_of(
    strings,
    st.integers(1, 6),
    st.integers(INT_MIN, INT_MAX),
    # integral float keys are int keys in Lua: the model only holds them as ints
    st.floats(allow_nan=False).filter(lambda f: not (f.is_integer() and INT_MIN <= f <= INT_MAX)),
    st.booleans().map(BoolKey),
)


def tables(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(
        st.dictionaries(keys, children, max_size=5),
        st.lists(children, max_size=5).map(lambda items: dict(enumerate(items, 1))),
    )


values = st.recursive(scalars, tables, max_leaves=10)
top_values = st.one_of(st.none(), values)


def prosody_reads_back(value: object) -> object:
    """What Lua reads from Prosody's own text for value: its integral floats become integers."""
    if isinstance(value, float) and not math.isinf(value) and not math.isnan(value):
        text = format(value, ".18g")
        if "." not in text and "e" not in text:
            return int(text)
    if isinstance(value, int) and value == INT_MIN:  # never true for a bool
        return float(value)
    if isinstance(value, dict):
        return {k: prosody_reads_back(v) for k, v in value.items()}
    return value


def framed(chunks: list[bytes]) -> bytes:
    return b"".join(b"%d\n" % len(c) + c for c in chunks)


def unframe(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        nl = data.index(b"\n", pos)
        size = int(data[pos:nl])
        out.append(data[nl + 1 : nl + 1 + size])
        pos = nl + 1 + size
    return out


LUA_COMMON = r"""
local dm = require "util.datamanager"
local serialize = require "util.serialization".serialize
local function framed_input()
    local data, out, pos = io.read("a"), {}, 1
    while pos <= #data do
        local nl = data:find("\n", pos, true)
        local size = tonumber(data:sub(pos, nl - 1))
        out[#out + 1] = data:sub(nl + 1, nl + size)
        pos = nl + 1 + size
    end
    return out
end
local function emit(s) io.write(#s, "\n", s) end
"""

HOST = "example.com"
HOST_DIR = "example%2ecom"


def store_path(root: str, store: str, user: str, ext: str) -> str:
    return os.path.join(root, HOST_DIR, store, f"{user}.{ext}")


LUA_LOAD_OURS = r"""
dm.set_data_path(DATA)
for i = 1, COUNT do
    local v, err = dm.load("u" .. i, "example.com", "kv")
    if err then error("load u" .. i .. ": " .. err) end
    emit(canon.encode(v))
    emit("return " .. serialize(v) .. ";\n")
end
local items, err = dm.list_load("u", "example.com", "ar")
if err or not items then error("list_load: " .. tostring(err)) end
emit(canon.encode(items))
local text = {}
for j, item in ipairs(items) do text[j] = "item(" .. serialize(item) .. ");\n" end
emit(table.concat(text))
"""


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Prosody data directory reused by every example (files are overwritten, never stale-read)."""
    root = str(tmp_path_factory.mktemp("prosody-data"))
    for store in ("kv", "ar"):
        os.makedirs(os.path.join(root, HOST_DIR, store))
    return root


batches = st.lists(top_values, min_size=1, max_size=5)


def as_items(batch: list[object]) -> list[object]:
    """The batch as one archive: its non-nil values."""
    return [v for v in batch if v is not None]


@given(batch=batches)
def test_ours_read_by_prosody(data_root: str, batch: list[object]) -> None:
    """(a) Prosody's datamanager loads our files as the same data; (c) its re-serialization reads back."""
    items = as_items(batch)
    for i, value in enumerate(batch, 1):
        with open(store_path(data_root, "kv", f"u{i}", "dat"), "wb") as f:
            f.write(dumps_dat(value))
    with open(store_path(data_root, "ar", "u", "list"), "wb") as f:
        f.write(dumps_list(items))
    script = LUA_COMMON + LUA_LOAD_OURS.replace("DATA", repr(data_root)).replace("COUNT", str(len(batch)))
    out = unframe(run_lua(script))
    assert len(out) == 2 * len(batch) + 2
    for i, value in enumerate(batch):
        got_value, their_dat = out[2 * i : 2 * i + 2]
        assert got_value == canon(value)
        assert canon(loads_dat(their_dat, "prosody.dat", sandbox=False)) == canon(prosody_reads_back(value))
    got_items, their_list = out[-2:]
    assert got_items == canon(dict(enumerate(items, 1)))
    back = loads_list(their_list, "prosody.list", sandbox=False)
    assert canon(dict(enumerate(back, 1))) == canon(prosody_reads_back(dict(enumerate(items, 1))))


LUA_STORE = r"""
dm.set_data_path(DATA)
local inputs = framed_input()
for i = 1, #inputs - 1 do
    local user, value = "u" .. i, canon.decode(inputs[i])
    if type(value) == "table" and next(value) ~= nil then
        assert(dm.store(user, "example.com", "kv", value))
    else
        -- datamanager.store only takes non-empty tables; this is the text it writes.
        local f = assert(io.open(DATA .. "/example%2ecom/kv/" .. user .. ".dat", "w"))
        f:write("return " .. serialize(value) .. ";\n")
        f:close()
    end
end
assert(dm.list_store("u", "example.com", "ar", canon.decode(inputs[#inputs])))
inputs[#inputs] = nil
serialize_each(inputs)
"""


LUA_SERIALIZE = r"""
local function rebuild(t)
    -- canon.decode fills tables in canon order; refill positional items in order so that
    -- next() walks them as a table Prosody built would (array part first).
    if type(t) ~= "table" then return t end
    local out, n = {}, #t
    for i = 1, n do out[i] = rebuild(t[i]) end
    for k, v in next, t do
        if not (math.type(k) == "integer" and k >= 1 and k <= n) then out[k] = rebuild(v) end
    end
    return out
end
local function rank(k)
    local t = type(k)
    return t == "boolean" and 0 or t == "number" and 1 or 2
end
local function before(a, b)
    local ra, rb = rank(a), rank(b)
    if ra ~= rb then return ra < rb end
    if ra == 0 then return (not a) and b end
    return a < b
end
-- Our documented key order, fed to Prosody's own serializer through its table_iterator option.
local function our_order(t)
    local n = 0
    while rawget(t, n + 1) ~= nil do n = n + 1 end
    local rest, order = {}, {}
    for k in next, t do
        if not (math.type(k) == "integer" and k >= 1 and k <= n) then rest[#rest + 1] = k end
    end
    table.sort(rest, before)
    for i = 1, n do order[i] = i end
    for _, k in ipairs(rest) do order[#order + 1] = k end
    local i = 0
    return function()
        i = i + 1
        local k = order[i]
        if k ~= nil then return k, t[k] end
    end, t, nil
end
local ordered = require "util.serialization".new({ table_iterator = our_order })
local function serialize_each(inputs)
    for _, c in ipairs(inputs) do
        local v = rebuild(canon.decode(c))
        emit(serialize(v))
        emit(ordered(v))
    end
end
"""


def deviates(value: object) -> bool:
    """Values where we write other text than Prosody on purpose (integral floats, -2^63)."""
    if isinstance(value, float):
        return not math.isinf(value) and not math.isnan(value) and dumps(value).endswith(b".0")
    if isinstance(value, int):
        return value == INT_MIN  # False for a bool too
    if isinstance(value, dict):
        return any(deviates(k) or deviates(v) for k, v in value.items())
    return False


def simple_tables(value: object) -> bool:
    """Every table a pure array or a single entry: then Lua's next() order is ours."""
    if not isinstance(value, dict):
        return True
    if len(value) > 1 and set(value) != set(range(1, len(value) + 1)):
        return False
    return all(simple_tables(v) for v in value.values())


@given(batch=batches)
def test_prosody_read_by_ours(data_root: str, batch: list[object]) -> None:
    """(b) Files Prosody's datamanager writes read back as the data Lua would read from them;
    (c) dumps() is Prosody's serialize() byte for byte, given the same key order."""
    items = as_items(batch) or [False]  # list_store deletes an empty archive
    chunks = [canon(value) for value in batch] + [canon(dict(enumerate(items, 1)))]
    script = LUA_COMMON + LUA_SERIALIZE + LUA_STORE.replace("DATA", repr(data_root))
    out = unframe(run_lua(script, framed(chunks)))
    for i, value in enumerate(batch, 1):
        path = store_path(data_root, "kv", f"u{i}", "dat")
        with open(path, "rb") as f:
            assert canon(loads_dat(f.read(), path, sandbox=False)) == canon(prosody_reads_back(value))
    path = store_path(data_root, "ar", "u", "list")
    with open(path, "rb") as f:
        got = loads_list(f.read(), path, sandbox=False)
    assert canon(dict(enumerate(got, 1))) == canon(prosody_reads_back(dict(enumerate(items, 1))))
    assert len(out) == 2 * len(batch)
    for i, value in enumerate(batch):
        if deviates(value):
            continue  # integral floats and -2^63: we write them so that they stay what they are
        plain, ordered = out[2 * i], out[2 * i + 1]
        ours = dumps(value)
        assert ours == ordered
        if simple_tables(value):
            assert ours == plain


def test_byte_identity_covers_arrays_and_single_keys() -> None:
    """The shapes (c) relies on, fixed: an array, a one-key table, a Prosody-style MAM item."""
    item = {
        1: {1: "hi", "name": "body", "attr": {}},
        "name": "message",
        "attr": {"to": "a@b", "type": "chat", "stamp": "2024-01-01T00:00:00Z"},
        "key": "abc",
        "when": 1700000000.5,
        "with": "a@b",
    }
    batch = [[{1: "a", 2: {"x": 1}, 3: [True][0]}][0], {"only": {5: 1}}, item]
    script = LUA_COMMON + LUA_SERIALIZE + "serialize_each(framed_input())"
    out = unframe(run_lua(script, framed([canon(v) for v in batch])))
    assert out[0] == dumps(batch[0])
    assert out[2] == dumps(batch[1])
    assert out[5] == dumps(item)


@pytest.mark.parametrize(
    "text",
    [
        b'return { ["password"] = "s3cr3t-Pa55" .. };',  # Lua: syntax error near the string
        b'return { ["salt"] = s3cr3t-Pa55 };',  # Lua: a name, then nothing it can read
        b'return { ["stored_key"] = "x" @ "s3cr3t-Pa55" };',  # strict reader: unexpected text
        b'return { ["password"] = ("s3cr3t-Pa55"):nope() };',  # Lua runtime error naming a value
        b'error("s3cr3t-Pa55")',  # the file's own message
    ],
)
def test_errors_never_quote_the_file(text: bytes) -> None:
    """A broken account file's error names the file and line, never the secret in it."""
    with pytest.raises(LuaDataError) as info:
        loads_dat(text, "accounts/alice.dat")
    assert "s3cr3t" not in str(info.value) and "Pa55" not in str(info.value)
    assert "accounts/alice.dat" in str(info.value)
