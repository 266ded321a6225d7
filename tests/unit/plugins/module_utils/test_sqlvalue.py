# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sqlvalue against mod_storage_sql: its own serialize/deserialize/keyval functions, run by Lua."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils.errors import DecodeError, EncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey
from ansible_collections.xmpp.prosody.plugins.module_utils.prosody_json import JsonError
from ansible_collections.xmpp.prosody.plugins.module_utils.sqlvalue import (
    SqlValueError,
    from_sql,
    keyval_from_rows,
    keyval_to_rows,
    to_sql,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element, StanzaError

from lua_strategies import encodable_values, finite_values, has_nonfinite, nonfinite_values, strings
from prosody_oracle import LuaSession, canon

INF = math.inf

# The functions are cut out of Prosody's own mod_storage_sql.lua (from serialize up to the
# keyval store API) and run against a fake engine that lists and collects rows.
SQL_HANDLERS = """
local json = require "util.json"
local st = require "util.stanza"
handlers = {}

local engine = { rows = {} }
function engine:select()
    local i = 0
    return function() i = i + 1; return self.rows[i] end
end
function engine:delete() end
function engine:insert(_, _, _, _, key, t, value) self.rows[#self.rows + 1] = { key, t, value } end

local path = assert(package.searchpath("modules.mod_storage_sql", package.path))
local file = assert(io.open(path))
local source = file:read("a")
file:close()
local first = assert(source:find("local function serialize(value)", 1, true))
local last = assert(source:find("--- Key/value store API", 1, true))
local sql = assert(load("local json, xml_parse, is_stanza, module, engine = ...\\n"
    .. source:sub(first, last - 1)
    .. "\\nreturn { serialize = serialize, deserialize = deserialize, get = keyval_store_get, set = keyval_store_set }",
    "=mod_storage_sql"))(json, require "util.xml".parse, st.is_stanza, { host = "example.com" }, engine)

local function outvalue(out, ok, value)
    out((ok and value ~= nil) and canon.encode(value) or "ERR")
end

-- (type, text) pairs -> what deserialize reads
function handlers.deserialize(input, out)
    for _, pair in ipairs(input) do outvalue(out, pcall(sql.deserialize, pair[1], pair[2])) end
end

-- values -> serialize's (type, text) and deserialize of that
function handlers.serialize(input, out)
    for _, value in ipairs(input) do
        local t, text = sql.serialize(value)
        out(t); out(text)
        outvalue(out, pcall(sql.deserialize, t, text))
    end
end

-- lists of rows -> keyval_store_get
function handlers.get(input, out)
    for _, rows in ipairs(input) do
        engine.rows = rows
        local ok, value = pcall(sql.get)
        out(ok and canon.encode(value) or "ERR")
    end
end

-- values -> keyval_store_set's rows (count, then key/type/text), then keyval_store_get of them
function handlers.set(input, out)
    for _, value in ipairs(input) do
        engine.rows = {}
        assert(sql.set(value))
        local rows = engine.rows
        out(tostring(#rows))
        for _, row in ipairs(rows) do out(row[1]); out(row[2]); out(row[3]) end
        local ok, back = pcall(sql.get)
        out(ok and canon.encode(back) or "ERR")
    end
end

-- XML texts -> deserialize, as preserialized stanza tables; preserialized tables -> serialize
function handlers.xml_in(input, out)
    for _, text in ipairs(input) do
        local ok, stanza = pcall(sql.deserialize, "xml", text)
        outvalue(out, ok and stanza ~= nil, ok and stanza and st.preserialize(stanza))
    end
end
function handlers.xml_out(input, out)
    for _, table_ in ipairs(input) do
        local t, text = sql.serialize(st.deserialize(table_))
        out(t); out(text)
    end
end
"""


@pytest.fixture(scope="module")
def lua():
    session = LuaSession(SQL_HANDLERS)
    yield session
    session.close()


def text_of(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def row_canon(rows: list[tuple[str, str, str]]) -> dict[int, dict[int, str]]:
    return {i: dict(enumerate(row, 1)) for i, row in enumerate(rows, 1)}


# -- (c) single values ---------------------------------------------------------------------------


@given(st.lists(encodable_values, min_size=1, max_size=4))
def test_prosody_deserializes_our_pairs_to_the_same_value(lua, values):
    pairs = [dict(enumerate(to_sql(v), 1)) for v in values]
    assert lua.call("deserialize", pairs) == [canon(v) for v in values]


@given(st.lists(finite_values, min_size=1, max_size=4))
def test_we_read_prosody_pairs_as_prosody_does(lua, values):
    result = lua.call("serialize", values)
    for type_, text, prosody_value in zip(result[::3], result[1::3], result[2::3]):
        assert prosody_value != b"ERR"
        assert canon(from_sql(type_.decode(), text_of(text), "row")) == prosody_value


@given(st.lists(nonfinite_values, min_size=1, max_size=4))
def test_we_recover_nonfinite_numbers_prosody_cannot_read(lua, values):
    result = lua.call("serialize", values)
    for value, type_, text, prosody_value in zip(values, result[::3], result[1::3], result[2::3]):
        assert (prosody_value == b"ERR") == has_nonfinite(value)
        assert canon(from_sql(type_.decode(), text_of(text), "row")) == canon(value)


@pytest.mark.parametrize(
    ("value", "pair"),
    [
        ("a\x00\udcff", ("string", "a\x00\udcff")),
        (True, ("boolean", "true")),
        (False, ("boolean", "false")),
        (1, ("number", "1")),
        (1.0, ("number", "1.0")),
        (-0.0, ("number", "-0.0")),
        (2**53 + 1, ("number", "9007199254740993")),
        (1e300, ("number", "1e+300")),
        (1 / 3, ("number", "0.3333333333333333")),
        (INF, ("number", "1e999")),
        (-INF, ("number", "-1e999")),
        ({}, ("json", "{}")),
        ({1: "a", "b": False}, ("json", '{"b":false,"__array":["a"]}')),
    ],
)
def test_to_sql(value, pair):
    assert to_sql(value) == pair
    assert canon(from_sql(*pair, "row")) == canon(value)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1e+15", 1e15),
        ("0.33333333333333", 0.33333333333333),
        ("100.0", 100.0),
        ("-9223372036854775808", -(2**63)),
        ("9.2233720368548e+18", 9.2233720368548e18),
        (" 0x10 ", 16),
        ("inf", INF),
        ("-inf", -INF),
    ],
)
def test_numbers_written_by_prosody(lua, text, value):
    assert canon(from_sql("number", text, "row")) == canon(value)
    if text not in ("inf", "-inf"):
        assert lua.call("deserialize", [{1: "number", 2: text}]) == [canon(value)]


def test_nan_written_by_prosody_is_recovered_and_never_written():
    assert math.isnan(from_sql("number", "-nan", "row"))
    assert math.isnan(from_sql("number", "nan", "row"))
    with pytest.raises(EncodeError, match="NaN"):
        to_sql(math.nan)


@pytest.mark.parametrize(
    ("type_", "text", "error", "message"),
    [
        ("boolean", "1", SqlValueError, "invalid boolean"),
        ("boolean", "True", SqlValueError, "invalid boolean"),
        ("number", "", SqlValueError, "invalid number"),
        ("number", "1e", SqlValueError, "invalid number"),
        ("number", "infinity", SqlValueError, "invalid number"),
        ("table", "{}", SqlValueError, "unknown value type"),
        ("json", "{", JsonError, "invalid JSON"),
        ("xml", "<a>", StanzaError, "^prosody row 12: "),
    ],
)
def test_invalid_pairs_name_the_source(type_, text, error, message):
    with pytest.raises(error, match=message) as info:
        from_sql(type_, text, "prosody row 12")
    assert isinstance(info.value, DecodeError)
    assert info.value.source == "prosody row 12"


def test_values_sql_cannot_hold_are_refused():
    for value in (None, object(), [1], 2**64, "\ud800", {"a": Element("x")}):
        with pytest.raises(EncodeError):
            to_sql(value)


# -- stanzas ---------------------------------------------------------------------------------


STANZAS = [
    Element("message", {"xmlns": "jabber:client", "to": "a@b"}).tag("body").text("hi <&> é"),
    Element("iq", {"type": "get", "id": "1"}),
    Element("x", {"xmlns": "urn:x"}).text("a").tag("y", {"k": "'\""}).text("b"),
]


def test_stanzas_are_xml(lua):
    pairs = [to_sql(stanza) for stanza in STANZAS]
    assert pairs == [("xml", stanza.to_xml()) for stanza in STANZAS]
    for stanza, (type_, text) in zip(STANZAS, pairs):
        assert from_sql(type_, text, "row") == stanza
    assert lua.call("xml_in", [text for _type, text in pairs]) == [canon(s.preserialize()) for s in STANZAS]
    result = lua.call("xml_out", [s.preserialize() for s in STANZAS])
    for stanza, type_, text in zip(STANZAS, result[::2], result[1::2]):
        assert from_sql(type_.decode(), text_of(text), "row") == stanza


# -- (d) keyval rows -----------------------------------------------------------------------------

keyval_values = st.one_of(
    encodable_values,
    st.dictionaries(st.one_of(strings, st.integers(-1, 4), st.booleans().map(BoolKey)), encodable_values, max_size=5),
)


def prosody_reads(value: object) -> object:
    """What Prosody's keyval_store_get gives for our rows: our documented gains undone."""
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if not (isinstance(k, str) and k != "" and v is False)}


@given(st.lists(keyval_values, min_size=1, max_size=4))
def test_prosody_reads_our_rows(lua, values):
    rows = [keyval_to_rows(value) for value in values]
    assert lua.call("get", [row_canon(r) for r in rows]) == [canon(prosody_reads(v)) for v in values]
    for value, value_rows in zip(values, rows):
        assert canon(keyval_from_rows(value_rows, "rows")) == canon(None if value == {} else value)


def prosody_rows(result: list[bytes]) -> list[tuple[list[tuple[str, str, str]], bytes]]:
    """Parse the set handler's reply: rows of each value, then Prosody's read of them."""
    parsed, index = [], 0
    while index < len(result):
        count = int(result[index])
        flat = [text_of(f) for f in result[index + 1 : index + 1 + 3 * count]]
        parsed.append((list(zip(flat[::3], flat[1::3], flat[2::3])), result[index + 1 + 3 * count]))
        index += 2 + 3 * count
    return parsed


finite_tables = st.dictionaries(
    st.one_of(strings, st.integers(-1, 4), st.booleans().map(BoolKey)), finite_values, min_size=1, max_size=4
)


@given(st.lists(finite_tables, min_size=1, max_size=2))
def test_we_read_prosody_rows_as_prosody_does(lua, values):
    for rows, prosody_value in prosody_rows(lua.call("set", values)):
        ours = keyval_from_rows(rows, "rows")
        # Prosody drops string keys whose row is boolean false; we keep them (documented).
        kept_false = {key for key, type_, text in rows if key and (type_, text) == ("boolean", "false")}
        assert canon({k: v for k, v in ours.items() if k not in kept_false}) == prosody_value
        assert all(ours[key] is False for key in kept_false)


ROSTER = {
    BoolKey(False): {"version": 7, "pending": {"c@d": True}},
    "a@b": {"subscription": "both", "name": "A", "groups": {"Friends": True}},
    "c@d": {"subscription": "none", "ask": "subscribe", "groups": {}},
}


def test_roster_rows():
    rows = keyval_to_rows(ROSTER)
    assert rows == [
        ("a@b", "json", '{"groups":{"Friends":true},"name":"A","subscription":"both"}'),
        ("c@d", "json", '{"ask":"subscribe","groups":{},"subscription":"none"}'),
        ("", "json", '{"__hash":[false,{"pending":{"c@d":true},"version":7}]}'),
    ]
    assert keyval_from_rows(rows, "roster") == ROSTER
    assert keyval_from_rows(reversed(rows), "roster") == ROSTER


def test_prosody_roster_rows_read_back(lua):
    ((rows, prosody_value),) = prosody_rows(lua.call("set", [ROSTER]))
    assert canon(keyval_from_rows(rows, "roster")) == prosody_value == canon(ROSTER)


@pytest.mark.parametrize(
    ("value", "rows", "prosody_value"),
    [
        (None, [], None),
        ({}, [], None),
        ("text", [("", "string", "text")], {}),
        (False, [("", "boolean", "false")], {}),
        (3, [("", "number", "3")], {}),
        ({"muted": False, "n": 1.5}, [("muted", "boolean", "false"), ("n", "number", "1.5")], {"n": 1.5}),
        ({"": "empty key", 1: "x"}, [("", "json", '{"":"empty key","__array":["x"]}')], {"": "empty key", 1: "x"}),
        # A host-level value: the SQL user column is '' but the rows are laid out the same way.
        ({"last_cleanup": 1700000000, "version": "0.12"},
         [("last_cleanup", "number", "1700000000"), ("version", "string", "0.12")],
         {"last_cleanup": 1700000000, "version": "0.12"}),
    ],
)  # fmt: skip
def test_keyval_layout(lua, value, rows, prosody_value):
    assert keyval_to_rows(value) == rows
    assert canon(keyval_from_rows(rows, "rows")) == canon(None if value == {} else value)
    assert lua.call("get", [row_canon(rows)]) == [canon(prosody_value)]


def test_keyval_rows_are_read_in_order_as_prosody_does(lua):
    rows = [("a", "string", "first"), ("", "json", '{"a":"from json","__array":[1]}'), ("x", "string", "y")]
    for order in (rows, rows[::-1]):
        assert canon(keyval_from_rows(order, "rows")) == lua.call("get", [row_canon(order)])[0]


def test_bad_keyval_row_names_the_source():
    with pytest.raises(SqlValueError, match=r"^user@host roster, key 'a@b': invalid number"):
        keyval_from_rows([("x", "string", "ok"), ("a@b", "number", "many")], "user@host roster")
