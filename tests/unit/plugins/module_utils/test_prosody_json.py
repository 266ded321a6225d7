# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""prosody_json against util/json.lua: fixed cases, then properties checked by real Prosody."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import prosody_json
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import DecodeError, EncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey
from ansible_collections.xmpp.prosody.plugins.module_utils.prosody_json import (
    MAX_DEPTH,
    JsonError,
    decode,
    encode,
    lua_tonumber,
)

from lua_strategies import INF, encodable_values, finite_values, has_nonfinite, nonfinite_values
from prosody_oracle import LuaSession, canon

JSON_HANDLERS = """
local json = require "util.json"
handlers = {}

local function table_key(value)
    if type(value) ~= "table" then return false end
    for k, v in pairs(value) do
        if type(k) == "table" or table_key(v) then return true end
    end
    return false
end

function handlers.decode(input, out)
    for _, text in ipairs(input) do
        local ok, value = pcall(json.decode, text)
        if not ok or value == nil then out("ERR")
        elseif table_key(value) then out("TABLE-KEY")
        else out(canon.encode(value)) end
    end
end

function handlers.encode(input, out)
    for _, value in ipairs(input) do
        local text = json.encode(value)
        local ok, back = pcall(json.decode, text)
        out(text)
        out((ok and back ~= nil) and canon.encode(back) or "ERR")
    end
end

function handlers.tonumber(input, out)
    for _, text in ipairs(input) do out(canon.encode(tonumber(text))) end
end
"""


@pytest.fixture(scope="module")
def lua():
    session = LuaSession(JSON_HANDLERS)
    yield session
    session.close()


# -- properties through real Prosody ------------------------------------------------------------


@given(st.lists(encodable_values, min_size=1, max_size=4))
def test_prosody_decodes_our_encoding_to_the_same_value(lua, values):
    assert lua.call("decode", [encode(v) for v in values]) == [canon(v) for v in values]


@given(st.lists(finite_values, min_size=1, max_size=4))
def test_we_decode_prosody_encoding_as_prosody_does(lua, values):
    result = lua.call("encode", values)
    for text, prosody_value in zip(result[::2], result[1::2]):
        assert prosody_value != b"ERR", text
        assert canon(decode(text.decode("utf-8", "surrogateescape"), "row")) == prosody_value


@given(st.lists(nonfinite_values, min_size=1, max_size=4))
def test_we_recover_infinities_and_nan_that_prosody_cannot_read(lua, values):
    result = lua.call("encode", values)
    for value, text, prosody_value in zip(values, result[::2], result[1::2]):
        assert (prosody_value == b"ERR") == has_nonfinite(value), text
        assert canon(decode(text.decode("utf-8", "surrogateescape"), "row")) == canon(value)


# Texts built from JSON's pieces and the quirks of util/json.lua, to compare both decoders on
# input neither encoder writes (errors included: Prosody's nil is our JsonError).
json_atoms = st.sampled_from(
    [
        "1",
        "-0",
        "1.0",
        "1e2",
        "-1e999",
        "9223372036854775808",
        "-9223372036854775808",
        "1e",
        "1-2",
        "0.5e-3",
        "00012",
        "true",
        "false",
        "null",
        "nul",
        '"a"',
        '"\\x"',
        '"\\u00e9"',
        '"\\ud83d\\ude00"',
        '"\\ud83d"',
        '"\\u12"',
        '"\\\\u0041"',
        '"\\/\\b\\f\\n\\r\\t"',
        '"raw\x01\n"',
        '"\\"q"',
        "\t",
        " ",
        ",",
        ":",
        "[",
        "]",
        "{",
        "}",
        '"__array"',
        '"__hash"',
        '{"__array":[1,2]}',
        '{"__hash":[true,1,2.5,"x",1.0,3]}',
        '{"__array":"s"}',
        '{"__array":5}',
        '{"__hash":[null,1]}',
        '{"__array":false}',
        "[1,]",
        '{"a":1,}',
        "",
    ]
)


@given(st.lists(st.lists(json_atoms, max_size=8).map("".join), min_size=1, max_size=10))
def test_decoding_arbitrary_text_matches_prosody(lua, texts):
    for text, prosody_value in zip(texts, lua.call("decode", texts)):
        try:
            ours = canon(decode(text, "row"))
        except JsonError as exc:
            # A table as a key is valid Lua that our model cannot hold: the one refusal we add.
            ours = b"TABLE-KEY" if "used as a key" in str(exc) else b"ERR"
        assert ours == prosody_value, text


# -- fixed cases: the layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ({}, "{}"),
        ({1: "a", 2: "b"}, '["a","b"]'),
        ({1: "a", 2: "b", 4: "d"}, '{"__hash":[4,"d"],"__array":["a","b"]}'),
        ({"b": 1, "a": {}}, '{"a":{},"b":1}'),
        ({BoolKey(False): {"version": 3}, "x@y": {"subscription": "both"}},
         '{"x@y":{"subscription":"both"},"__hash":[false,{"version":3}]}'),
        ({"k": "v", 1: 1, 2.5: 2, BoolKey(True): 3, -1: 4, "__array": 5},
         '{"k":"v","__hash":[true,3,-1,4,2.5,2,"__array",5],"__array":[1]}'),
        ({1: {1: {1: {}}}}, "[[[{}]]]"),
        ({3.0: "x", 1.0: "y"}, '{"__hash":[3,"x"],"__array":["y"]}'),
        ({"a": None, 1: None}, "{}"),
    ],
)  # fmt: skip
def test_table_layout(value, text):
    assert encode(value) == text


def test_key_order_is_fixed():
    assert encode({"b": 1, "a": 2, "\udcff": 3, "é": 4}) == '{"a":2,"b":1,"é":4,"\udcff":3}'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1, "1"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (2**53 + 1, "9007199254740993"),
        (float(2**53), "9007199254740992.0"),
        (1e300, "1e+300"),
        (0.1 + 0.2, "0.30000000000000004"),
        (INF, "1e999"),
        (-INF, "-1e999"),
        (-(2**63), "-9223372036854775808"),
    ],
)
def test_numbers(value, text):
    assert encode(value) == text
    assert canon(decode(text, "row")) == canon(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e+15", 1e15),
        ("9223372036854775808", 9.223372036854775808e18),
        ("-9223372036854775809", -9.223372036854775808e18),
        ("00012", 12),
        ("-0", 0),
        ("1E2", 100.0),
        ("inf", INF),
        ("-inf", -INF),
        ("1" * 5000, INF),
        ("0." + "0" * 5000 + "1", 0.0),
    ],
)
def test_numbers_read_as_lua_reads_them(text, value):
    assert canon(decode(text, "row")) == canon(value)


def test_nan_is_read_back_from_prosody_text():
    assert math.isnan(decode("-nan", "row"))
    assert math.isnan(decode("[nan]", "row")[1])


def test_nan_cannot_be_written():
    with pytest.raises(EncodeError, match="NaN"):
        encode({"a": math.nan})
    with pytest.raises(EncodeError, match="NaN"):
        encode({math.nan: 1})


@pytest.mark.parametrize(
    ("value", "text"),
    [
        ("a\x00b", '"a\\u0000b"'),
        ('q"\\/', '"q\\"\\\\/"'),
        ("\b\f\n\r\t\x01\x1f\x7f", '"\\b\\f\\n\\r\\t\\u0001\\u001F\x7f"'),
        ("é😀", '"é😀"'),
        ("\udcff\udcc3(", '"\udcff\udcc3("'),
    ],
)
def test_strings(value, text):
    assert encode(value) == text
    assert decode(text, "row") == value
    assert decode(text.encode("utf-8", "surrogateescape"), "row") == value


def test_strings_that_are_not_bytes_are_refused():
    with pytest.raises(EncodeError):
        encode("\ud800")
    with pytest.raises(JsonError):
        decode('"\ud800"', "row")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"\\x\\q"', "\\x\\q"),  # unknown escapes stay, as in Prosody
        ('"\\u00E9\\ud83d\\ude00"', "é😀"),
        ('"\\\\ud83d"', "\\ud83d"),
        ('"\\u0000"', "\x00"),
        ('"raw\ncontrol\x01"', "raw\ncontrol\x01"),
        ("null", {}),
        ("[1,null]", {1: 1, 2: {}}),
        (" [ ] ", {}),
        ('{"__array":[1,2],"x":3}', {1: 1, 2: 2, "x": 3}),
        ('{"__hash":[true,"t",false,"f",2.5,"h",1.0,"one","__hash","x","odd"]}',
         {BoolKey(True): "t", BoolKey(False): "f", 2.5: "h", 1: "one", "__hash": "x"}),
        ('{"__array":["a"],"__hash":[1,"b"]}', {1: "b"}),
        ('{"__array":"str","__hash":null}', {}),
        ('{"__array":false}', {"__array": False}),
        ('{"__array":[1],}', {"__array": {1: 1}}),  # Prosody does not fold after a trailing comma
        ('{"a":1,"a":2}', {"a": 2}),
        ('{"__hash":[{"__array":[1]},2]}', None),
    ],
)  # fmt: skip
def test_decoding_follows_prosody(text, value):
    if value is None:
        with pytest.raises(JsonError, match="key"):
            decode(text, "row")
    else:
        assert canon(decode(text, "row")) == canon(value)


@pytest.mark.parametrize(
    "text",
    ["", "  ", "[1,]", "[,1]", "{,}", '{"a"}', '{"a":}', "[1 2]", '"\\ud83d"', '"\\u12"', '"abc', "1e", "-",
     "+1", ".5", "nul", "[1]x", '{"__array":5}', '{"__hash":true}', "0x10", "\\u0031"],
)  # fmt: skip
def test_invalid_text_names_the_source(text):
    with pytest.raises(JsonError, match=r"^roster row 7: invalid JSON") as info:
        decode(text, "roster row 7")
    assert isinstance(info.value, DecodeError)
    assert info.value.source == "roster row 7"


def test_deep_nesting_is_bounded():
    assert decode("[" * MAX_DEPTH + "]" * MAX_DEPTH, "row") is not None
    with pytest.raises(JsonError, match="nested deeper"):
        decode("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "row")
    with pytest.raises(JsonError, match="nested deeper"):
        decode('{"a":' * 100000, "row")
    deep: dict = {}
    for _level in range(MAX_DEPTH):
        deep = {"a": deep}
    with pytest.raises(EncodeError, match="nested deeper"):
        encode(deep)
    assert decode(encode(deep["a"]), "row") == deep["a"]


def test_values_json_cannot_hold_are_refused():
    for value in (None, object(), {"a": object()}, {(1, 2): 1}, 2**63, {1: -(2**63) - 1}):
        with pytest.raises(EncodeError):
            encode(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0x10", 16),
        (" 0x10 ", 16),
        ("-0x10", -16),
        ("0xffffffffffffffffff", -1),
        ("0x1p4", 16.0),
        ("0x.8", 0.5),
        ("0x1p99999", INF),
        ("\t5\n", 5),
        ("1.", 1.0),
        ("inf", None),
        ("nan", None),
        ("1e", None),
        ("0x", None),
        ("5\x00", None),
        ("1_0", None),
        ("", None),
    ],
)
def test_lua_tonumber(text, value):
    result = lua_tonumber(text)
    assert canon(result) == canon(value)


def test_lua_tonumber_matches_lua(lua):
    texts = ["0x10", " 0x10 ", "-0x10", "0xffffffffffffffffff", "0x1p4", "0x.8", "0x1p99999", "\t5\n", "1.",
             "1e", "0x", "1_0", "", "1e999", "-0", "+5", "+.5e1", "9223372036854775807", "-9223372036854775809",
             "0X1P-2", "1 2", "\v7\f"]  # fmt: skip
    assert [canon(lua_tonumber(text)) for text in texts] == lua.call("tonumber", texts)


# -- the fast path (Python's json module) against _Reader, the step-by-step reader ----------------


def _by_reader(data: bytes) -> object:
    reader = prosody_json._Reader(data, "row")
    try:
        value, index = reader.value(0, 0)
    except JsonError:
        return b"ERR"
    if prosody_json._NOT_SPACE.search(reader.data, index):
        return b"ERR"
    return b"TABLE-KEY" if reader.table_key else canon(value)


def _by_fast_path(data: bytes) -> object:
    reader = prosody_json._Reader(b"", "row")
    try:
        value = prosody_json._fast(data, reader)
    except JsonError:
        return b"ERR"
    if value is prosody_json._SLOW:
        return value
    return b"TABLE-KEY" if reader.table_key else canon(value)


def _agree(data: bytes) -> bool:
    """The fast path gives the reader's value or error, or leaves the text to it; True if it answered."""
    fast = _by_fast_path(data)
    if fast is prosody_json._SLOW:
        return False
    assert fast == _by_reader(data), data
    return True


@given(st.lists(json_atoms, max_size=12).map("".join))
def test_fast_path_agrees_with_the_reader_on_arbitrary_text(text):
    _agree(text.encode("utf-8", "surrogateescape"))


@given(finite_values)
def test_fast_path_reads_our_encoding_as_the_reader_does(value):
    _agree(encode(value).encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize(
    "data",
    [b'{"groups":{},"subscription":"none"}', b'{"a":[1,null,{"__array":[true]}]}', b"[]", b"-0", b'"caf\xc3\xa9"',
     b'"\xff\xfe raw"', b'{"__hash":[false,{"version":1}]}', b'{"__hash":[{"k":1},2]}', b'"\\u00e9"',
     b"9223372036854775807", b"-9223372036854775809", b"1E400", b'{"a":1,"a":2}', b'{"__array":5}'],
)  # fmt: skip
def test_fast_path_takes_standard_json(data):
    assert _agree(data)


@pytest.mark.parametrize(
    "data",
    [b'"\\ud83d"', b'"\\ud83d\\ude00"', b"NaN", b"-Infinity", b"[1,]", b'"\\x"', b"01",
     b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)],
)  # fmt: skip
def test_fast_path_leaves_the_rest_to_the_reader(data):
    assert _by_fast_path(data) is prosody_json._SLOW
    try:
        ours = canon(decode(data, "row"))
    except JsonError:
        ours = b"ERR"
    assert ours == _by_reader(data)
