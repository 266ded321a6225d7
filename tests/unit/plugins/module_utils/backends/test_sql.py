# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sql backend against real servers and real Prosody (mod_storage_sql driven from Lua 5.4).

Each test gets its own database (dbfixtures.py). Prosody's own module writes and reads through
LuaDBI, so "Prosody reads it back" here means exactly what a running Prosody 0.12 would see.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.dialects import (
    SqlConfigError,
    SqlConnectError,
    SqlDatabaseError,
    resolve_relative_path,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import (
    SqlBackend,
    SqlEncodeError,
    SqlSchemaError,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import EncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import my_admin

from prosody_oracle import canon, run_lua

# Loads mod_storage_sql.lua with stub `module`/`prosody` globals, runs a list of operations
# given as canon on stdin, and writes the results as canon. Stanzas travel as XML text in and
# as preserialized tables out, so they compare as data whatever the attribute order.
HARNESS = r"""
local st = require "util.stanza"
local xml_parse = require "util.xml".parse
local input = canon.decode(io.read("a"))

local function load_storage(host)
  prosody = { paths = { data = input.data_path or "." }, hosts = {} }
  local provided
  local module = { host = host, name = "storage_sql" }
  function module:get_option_number(_, d) return d end
  function module:get_option(name, d) if name == "sql" then return input.params end return d end
  function module:measure() return function() end end
  function module:log(level, fmt, ...) io.stderr:write(level, ": ", fmt:format(...), "\n") end
  function module:shared() return {} end
  function module:provides(_, d) provided = d end
  local env = setmetatable({ module = module, prosody = prosody }, { __index = _G })
  assert(loadfile("/usr/lib/prosody/modules/mod_storage_sql.lua", "t", env))()
  module.load()
  return provided
end

local drivers = {}
local function open(op, kind)
  drivers[op.host] = drivers[op.host] or load_storage(op.host)
  return assert(drivers[op.host]:open(op.store, kind))
end

local out = {}
for i, op in ipairs(input.ops) do
  if op.op == "kv_set" then
    out[i] = assert(open(op):set(op.user, op.value))
  elseif op.op == "kv_get" then
    local v, err = open(op):get(op.user)
    assert(err == nil, err)
    out[i] = { value = v }
  elseif op.op == "append" then
    local value = op.value
    if op.xml then value = assert(xml_parse(op.xml)) end
    out[i] = assert(open(op, "archive"):append(op.user, op.key, value, op.when, op.with))
  elseif op.op == "find" then
    local items = {}
    local iter = assert(open(op, "archive"):find(op.user))
    for key, value, when, with in iter do
      if st.is_stanza(value) then value = { stanza = st.preserialize(value) } else value = { plain = value } end
      -- MySQL's LuaDBI gives a BIGINT as a float; the value is what is compared.
      items[#items + 1] = { key = key, value = value, when = math.tointeger(when) or when, with = with }
    end
    out[i] = items
  elseif op.op == "normalize" then
    out[i] = st.preserialize(assert(xml_parse(op.xml)))
  else
    error("unknown op " .. tostring(op.op))
  end
end
io.write(canon.encode(out))
"""


def lua_params(params: dict[str, Any]) -> dict[str, Any]:
    """The `sql` option Prosody gets for the same database (SQLite path resolved by Prosody)."""
    keys = (
        ("driver", "database")
        if params["driver"] == "SQLite3"
        else ("driver", "database", "host", "port", "username", "password")
    )
    return {k: params[k] for k in keys if params.get(k) is not None}


def prosody(params: dict[str, Any], ops: list[dict[str, Any]]) -> bytes:
    """Run operations through Prosody's mod_storage_sql; results come back decoded by Lua's canon."""
    payload = {
        "params": lua_params(params),
        "data_path": params.get("data_path"),
        "ops": {i + 1: op for i, op in enumerate(ops)},
    }
    return run_lua(HARNESS, stdin=canon(payload))


def lua_list(items: list[Any]) -> dict[int, Any]:
    return {i + 1: v for i, v in enumerate(items)}


# -- test data ----------------------------------------------------------------------------------

HOST = "example.com"
ODD_HOST = "ex'am\"ple;%.com"
ODD_NAMES = ["jürgen", "o'brien", 'quo"te', "per%cent", "semi;colon", "back\\slash", "ques?tion", "雪", "a b", "bob "]

ROSTER = {
    BoolKey(False): {"version": 7, "pending": {}},
    "bob@example.net": {"name": "Bob 🙂", "subscription": "both", "groups": {1: "Friends", 2: "Ünïcode"}},
    "carol@example.net": {"name": "", "subscription": "none", "ask": "subscribe", "groups": {}},
}
KEYVAL_VALUES: dict[str, Any] = {
    "roster": ROSTER,
    "account": {"password": "p'%;\"\\", "iteration_count": 4096, "ratio": 0.1, "big": 2**53, "neg": -1.5, "whole": 2.0},
    "private": {"storage:bookmarks": "<x/>", "": "empty key", 1: "first", 2: "second", 1.5: "float key"},
    "flags": {BoolKey(True): "yes", "count": 0, "half": 0.5, "t": True, "e": "", "in": {"f": False}},
    "nested": {"a": {"b": {"c": {1: 1, 2: {}, 3: "x"}}}},
}

STANZAS = [
    "<message xmlns='jabber:client' type='chat' to='a@example.com' id='1'>"
    "<body>hi &lt;&amp;&gt; &quot;there&quot;</body></message>",
    "<message xmlns='jabber:client' from='b@example.net/res'>"
    "<x xmlns='urn:x:test' a='1'><y xmlns='urn:other'>ü 雪</y></x>"
    "<delay xmlns='urn:xmpp:delay' stamp='2023-01-01T00:00:00Z'/></message>",
    "<iq xmlns='jabber:client' type='set'><query xmlns='jabber:iq:roster' xml:lang='en'><item jid='x@y'/></query></iq>",
    "<message xmlns='jabber:client'><body>line1\nline2\ttab &apos;q&apos; ]]&gt;</body></message>",
]


def xml_items() -> list[tuple[str, str, int, str | None]]:
    """(key, xml, when, with): with and without a peer, a duplicate key, one large body."""
    big = "<message xmlns='jabber:client'><body>" + "long text ü " * 20000 + "</body></message>"
    return [
        ("k1", STANZAS[0], 1700000000, "bob@example.net"),
        ("k2", STANZAS[1], 1700000001, None),
        ("k3", STANZAS[2], 1, "x@y/res"),
        ("k1", STANZAS[3], 1700000002, "carol@example.net"),  # replaces the first k1, moves to the end
        ("big", big, 2**31 - 1, None),
    ]


def keyval_ops(host: str, users: list[str | None]) -> list[dict[str, Any]]:
    ops = []
    for user in users:
        for store, value in KEYVAL_VALUES.items():
            ops.append({"op": "kv_set", "host": host, "store": store, "user": user, "value": value})
    return ops


# -- Prosody writes, we read ----------------------------------------------------------------------


def test_prosody_keyval_is_read_exactly(sql_params: dict[str, Any]) -> None:
    users: list[str | None] = [None, "alice", *ODD_NAMES]
    writes = keyval_ops(HOST, users) + keyval_ops(ODD_HOST, ["alice"])
    reads = [{**op, "op": "kv_get"} for op in writes]
    prosody(sql_params, writes)
    theirs = prosody(sql_params, reads)
    with SqlBackend(sql_params) as backend:
        ours = [{"value": backend.keyval_get(op["host"], op["store"], op["user"])} for op in reads]
        assert sorted(backend.hosts()) == sorted([HOST, ODD_HOST])
        assert list(backend.stores(HOST)) == [(s, "keyval") for s in sorted(KEYVAL_VALUES)]
        assert list(backend.keyval_users(HOST, "roster")) == sorted(["alice", *ODD_NAMES])
        assert backend.keyval_get(HOST, "roster", "nobody") is None
    assert canon(lua_list(ours)) == theirs


def test_prosody_archive_is_read_exactly(sql_params: dict[str, Any]) -> None:
    users: list[str | None] = [None, "alice", "jürgen", "o'brien"]
    ops = []
    for user in users:
        for key, xml, when, with_ in xml_items():
            ops.append(
                {
                    "op": "append",
                    "host": HOST,
                    "store": "archive",
                    "user": user,
                    "key": key,
                    "xml": xml,
                    "when": when,
                    "with": with_,
                }
            )
        # A non-stanza archive value, as mod_http_file_share stores.
        ops.append(
            {
                "op": "append",
                "host": HOST,
                "store": "uploads",
                "user": user,
                "key": "u1",
                "value": {"filename": "a b.png", "size": 3},
                "when": 5,
            }
        )
    finds = [{"op": "find", "host": HOST, "store": s, "user": u} for u in users for s in ("archive", "uploads")]
    prosody(sql_params, ops)
    theirs = prosody(sql_params, finds)
    with SqlBackend(sql_params) as backend:
        ours = []
        for find in finds:
            items = list(backend.archive_items(HOST, find["store"], find["user"]))
            assert backend.archive_keys(HOST, find["store"], find["user"]) == [i.key for i in items]
            ours.append(lua_list([as_lua_item(i) for i in items]))
        assert list(backend.archive_users(HOST, "archive")) == sorted(["alice", "jürgen", "o'brien"])
        assert list(backend.stores(HOST)) == [("archive", "archive"), ("uploads", "archive")]
        assert [i.with_ for i in backend.archive_items(HOST, "archive", "alice")] == [
            None,
            "x@y/res",
            "carol@example.net",
            None,
        ]
    assert [i["key"] for i in ours[0].values()] == ["k2", "k3", "k1", "big"]
    assert canon(lua_list(ours)) == theirs


def as_lua_item(item: ArchiveItem) -> dict[str, Any]:
    """An item as the harness reports Prosody's (which gives ``with`` as stored, '' for none)."""
    value = {"stanza": item.value.preserialize()} if isinstance(item.value, Element) else {"plain": item.value}
    return {"key": item.key, "value": value, "when": item.when, "with": item.with_ or ""}


# -- we write, Prosody reads ----------------------------------------------------------------------


def test_our_keyval_is_read_by_prosody(sql_params: dict[str, Any]) -> None:
    users: list[str | None] = [None, "alice", *ODD_NAMES]
    with SqlBackend(sql_params) as backend:
        for host, user, store, value in cases(users):
            backend.keyval_set(host, store, user, value)
        backend.keyval_set(HOST, "roster", "alice", {"only": "this"})  # replaces the whole value
        backend.keyval_set(HOST, "account", "alice", None)  # removes it
        backend.keyval_set(HOST, "flags", "alice", {})  # so does an empty table
    expected = {(h, u, s): v for h, u, s, v in cases(users)}
    expected[(HOST, "alice", "roster")] = {"only": "this"}
    expected[(HOST, "alice", "account")] = None
    expected[(HOST, "alice", "flags")] = None
    reads = [{"op": "kv_get", "host": h, "user": u, "store": s} for h, u, s in expected]
    theirs = prosody(sql_params, reads)
    assert theirs == canon(lua_list([{} if v is None else {"value": v} for v in expected.values()]))


def cases(users: list[str | None]) -> list[tuple[str, str | None, str, Any]]:
    out = [(HOST, u, s, v) for u in users for s, v in KEYVAL_VALUES.items()]
    return [*out, (ODD_HOST, "alice", "o'dd;store%", {"k": "v"})]


def test_our_archive_is_read_by_prosody(sql_params: dict[str, Any]) -> None:
    users: list[str | None] = [None, "alice", "o'brien"]
    items = [ArchiveItem(k, Element.from_xml(x, "test"), w, wi) for k, x, w, wi in xml_items()]
    upload = ArchiveItem("u1", {"size": 3, "name": "ü", "list": {1: "a", 2: "b"}}, 7, "uploader@example.com")
    with SqlBackend(sql_params) as backend:
        for user in users:
            backend.archive_write(HOST, "archive", user, items[:2])
            backend.archive_write(HOST, "archive", user, items[2:])  # k1 again: replaces the stored one
            backend.archive_write(HOST, "uploads", user, [upload])
        ours = [
            lua_list([as_lua_item(i) for i in backend.archive_items(HOST, s, u)])
            for s in ("archive", "uploads")
            for u in users
        ]
        assert list(backend.archive_items(HOST, "archive", "alice")) == items[1:]
        assert backend.archive_items(HOST, "archive", "alice").__next__().with_ is None
    finds = [{"op": "find", "host": HOST, "store": s, "user": u} for s in ("archive", "uploads") for u in users]
    assert prosody(sql_params, finds) == canon(lua_list(ours))


def test_archive_write_matches_prosody_appends(sql_params: dict[str, Any]) -> None:
    """Duplicate keys, within one batch and against stored items, end as Prosody's appends leave them."""
    seq = [("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5)]
    ops = [
        {"op": "append", "host": HOST, "store": "p", "user": "u", "key": k, "value": f"v{w}", "when": w} for k, w in seq
    ]
    prosody(sql_params, ops)
    with SqlBackend(sql_params) as backend:
        backend.archive_write(HOST, "q", "u", [ArchiveItem(k, f"v{w}", w) for k, w in seq[:2]])
        backend.archive_write(HOST, "q", "u", [ArchiveItem(k, f"v{w}", w) for k, w in seq[2:]])
        theirs = [(i.key, i.value, i.when) for i in backend.archive_items(HOST, "p", "u")]
        ours = [(i.key, i.value, i.when) for i in backend.archive_items(HOST, "q", "u")]
        assert ours == theirs == [("a", "v3", 3), ("c", "v4", 4), ("b", "v5", 5)]
        assert all(i.with_ is None for i in backend.archive_items(HOST, "q", "u"))


# -- times ------------------------------------------------------------------------------------


def test_time_past_2038_on_our_schema(sql_params: dict[str, Any]) -> None:
    when = 2**32 + 5  # the year 2106
    with SqlBackend(sql_params) as backend:
        backend.archive_write(HOST, "archive", "alice", [ArchiveItem("k", "v", when), ArchiveItem("f", "w", 1e10)])
        assert [(i.key, i.when) for i in backend.archive_items(HOST, "archive", "alice")] == [
            ("k", when),
            ("f", 10**10),
        ]
    assert raw_rows(sql_params, 'SELECT "when" FROM "prosodyarchive" ORDER BY "sort_id"') == [(when,), (10**10,)]
    if sql_params["driver"] == "MySQL":
        # Prosody's LuaDBI reads MySQL's BIGINT as a float, exact for any such time. (Its SQLite
        # and PostgreSQL drivers cut every integer to 32 bits when reading, whatever the column.)
        found = prosody(sql_params, [{"op": "find", "host": HOST, "store": "archive", "user": "alice"}])
        assert b"s4:wheni4294967301;" in found and b"s4:wheni10000000000;" in found


def test_prosody_time_past_2038_in_sqlite(sqlite_params: dict[str, Any]) -> None:
    when = 2**32 + 5
    prosody(
        sqlite_params,
        [{"op": "append", "host": HOST, "store": "a", "user": "u", "key": "k", "value": "v", "when": when}],
    )
    with SqlBackend(sqlite_params) as backend:
        assert [i.when for i in backend.archive_items(HOST, "a", "u")] == [when]


@pytest.mark.parametrize("driver", ["PostgreSQL", "MySQL"])
def test_prosody_created_32bit_time_refuses_2038(driver: str, request: pytest.FixtureRequest) -> None:
    params = request.getfixturevalue("pg_params" if driver == "PostgreSQL" else "mysql_params")
    prosody(params, [{"op": "append", "host": HOST, "store": "a", "user": "u", "key": "old", "value": "v", "when": 5}])
    with SqlBackend(params) as backend:
        with pytest.raises(SqlEncodeError) as err:
            backend.archive_write(HOST, "a", "u", [ArchiveItem("ok", "v", 2**31 - 1), ArchiveItem("late", "v", 2**31)])
        text = str(err.value)
        for part in (repr(HOST), "'a'", "'u'", "'late'", str(2**31), "int"):
            assert part in text
        assert backend.archive_keys(HOST, "a", "u") == ["old"]  # nothing written
        backend.archive_write(HOST, "a", "u", [ArchiveItem("ok", "v", 2**31 - 1)])
    (col,) = raw_rows(params, when_type_query(driver))
    assert col[0].lower() in ("integer", "int")  # left alone


def test_fractional_time(sql_params: dict[str, Any]) -> None:
    with SqlBackend(sql_params) as backend:
        item = ArchiveItem("k", "v", 1700000000.25, None)
        if sql_params["driver"] == "SQLite3":
            backend.archive_write(HOST, "a", "u", [item])  # SQLite keeps REAL, as Prosody's own writes do
            assert list(backend.archive_items(HOST, "a", "u")) == [item]
        else:
            with pytest.raises(SqlEncodeError, match="fraction"):
                backend.archive_write(HOST, "a", "u", [item])


def when_type_query(driver: str) -> str:
    schema = "current_schema()" if driver == "PostgreSQL" else "DATABASE()"
    return (
        "SELECT data_type FROM information_schema.columns "
        f"WHERE table_schema = {schema} AND table_name = 'prosodyarchive' AND column_name = 'when'"
    )


def raw_rows(params: dict[str, Any], query: str) -> list[tuple[Any, ...]]:
    """Rows straight from the server, bypassing the backend."""
    if params["driver"] == "SQLite3":
        conn = sqlite3.connect(resolve_relative_path(params["data_path"], params["database"]))
        conn.text_factory = bytes
        try:
            return [tuple(r) for r in conn.execute(query)]
        finally:
            conn.close()
    if params["driver"] == "PostgreSQL":
        import psycopg

        with psycopg.connect(
            host=params["host"], port=params["port"], user=params["username"], dbname=params["database"]
        ) as conn:
            return [tuple(r) for r in conn.execute(query)]
    conn = my_admin(params["database"])
    try:
        with conn.cursor() as cur:
            cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
            cur.execute(query)
            return [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


# -- what a destination cannot hold ---------------------------------------------------------------

CANNOT_HOLD = {  # (text, what the error says)
    "SQLite3": [("a\x00b", "NUL")],
    "PostgreSQL": [("a\x00b", "NUL"), ("caf\udce9", "not valid UTF-8")],
    "MySQL": [("caf\udce9", "not valid UTF-8")],
}


def test_values_the_destination_cannot_hold(sql_params: dict[str, Any]) -> None:
    driver = sql_params["driver"]
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", "keep", {"x": "old"})
        for bad, reason in CANNOT_HOLD[driver]:
            attempts = [
                lambda b=bad: backend.keyval_set(HOST, "s", "keep", {"x": b}),
                lambda b=bad: backend.keyval_set(HOST, "s", "keep", {b: "x"}),
                lambda b=bad: backend.keyval_set(HOST, "s", b, {"x": "y"}),
                lambda b=bad: backend.archive_write(HOST, "a", "keep", [ArchiveItem("k", b, 1)]),
                lambda b=bad: backend.archive_write(HOST, "a", "keep", [ArchiveItem("k", "v", 1, b)]),
            ]
            for attempt in attempts:
                with pytest.raises(SqlEncodeError) as err:
                    attempt()
                assert isinstance(err.value, EncodeError)
                assert reason in str(err.value) and repr(HOST) in str(err.value) and driver in str(err.value)
        assert "'keep'" in str(err.value) and "'a'" in str(err.value)
        assert backend.keyval_get(HOST, "s", "keep") == {"x": "old"}
        assert backend.archive_keys(HOST, "a", "keep") == []


def test_mysql_size_limits(mysql_params: dict[str, Any]) -> None:
    with SqlBackend(mysql_params) as backend:
        backend.keyval_set(HOST, "s", "u", {"big": "ü" * 2**20})  # 2 MiB: more than TEXT, fits MEDIUMTEXT
        with pytest.raises(SqlEncodeError, match=r"'u'.*the value .* is 16777216 bytes, more than the 16777215"):
            backend.keyval_set(HOST, "s", "u", {"big": "x" * 2**24})
        with pytest.raises(SqlEncodeError, match=r"'u'.*the key .* is 65536 bytes, more than the 65535 its text"):
            backend.keyval_set(HOST, "s", "u", {"k" * 65536: 1})
        with pytest.raises(SqlEncodeError, match=r"'u'.*max_allowed_packet"):
            backend.archive_write(HOST, "a", "u", [ArchiveItem("k", "x" * (2**24 - 100), 1)])
        assert backend.keyval_get(HOST, "s", "u") == {"big": "ü" * 2**20}
        assert backend.archive_keys(HOST, "a", "u") == []


def test_non_utf8_and_nul_where_they_fit(sql_params: dict[str, Any]) -> None:
    """SQLite keeps bytes that are not UTF-8 as TEXT, MySQL keeps NUL; Prosody reads both back exact."""
    driver = sql_params["driver"]
    odd = {"SQLite3": "caf\udce9 \udcff\udcfe", "MySQL": "nul\x00inside", "PostgreSQL": "plain"}[driver]
    value = {"s": odd, odd: "key", "t": {1: odd}}
    item = ArchiveItem(odd, odd, 3, odd)
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", odd, value)
        backend.archive_write(HOST, "a", odd, [item])
        assert backend.keyval_get(HOST, "s", odd) == value
        assert list(backend.archive_items(HOST, "a", odd)) == [item]
        assert list(backend.keyval_users(HOST, "s")) == [odd]
    got = prosody(
        sql_params,
        [
            {"op": "kv_get", "host": HOST, "store": "s", "user": odd},
            {"op": "find", "host": HOST, "store": "a", "user": odd},
        ],
    )
    assert got == canon(
        lua_list([{"value": value}, lua_list([{"key": odd, "value": {"plain": odd}, "when": 3, "with": odd}])])
    )
    if driver == "SQLite3":
        assert raw_rows(sql_params, 'SELECT DISTINCT typeof("value") FROM prosody') == [(b"text",)]
        # And what Prosody writes that way, we read exactly.
        prosody(sql_params, [{"op": "kv_set", "host": HOST, "store": "p", "user": "u", "value": {"b": "\udcff"}}])
        with SqlBackend(sql_params) as backend:
            assert backend.keyval_get(HOST, "p", "u") == {"b": "\udcff"}


def test_trailing_space_names_stay_apart(sql_params: dict[str, Any]) -> None:
    """MySQL's _bin collation pads ('bob' = 'bob '); our queries still tell the two apart."""
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", "bob", {"a": 1})
        backend.keyval_set(HOST, "s", "bob ", {"b": 2})
        backend.archive_write(HOST, "a", "bob", [ArchiveItem("k", "1", 1), ArchiveItem("k ", "2", 2)])
        backend.archive_write(HOST, "a", "bob", [ArchiveItem("k", "3", 3)])
        assert backend.keyval_get(HOST, "s", "bob") == {"a": 1}
        assert backend.keyval_get(HOST, "s", "bob ") == {"b": 2}
        assert list(backend.keyval_users(HOST, "s")) == ["bob", "bob "]
        assert [(i.key, i.value) for i in backend.archive_items(HOST, "a", "bob")] == [("k ", "2"), ("k", "3")]


# -- schema ---------------------------------------------------------------------------------------


def test_reads_of_an_empty_database_create_nothing(sql_params: dict[str, Any]) -> None:
    with SqlBackend(sql_params) as backend:
        assert backend.keyval_get(HOST, "s", "u") is None
        assert list(backend.archive_items(HOST, "a", "u")) == []
        assert list(backend.hosts()) == []
        assert list(backend.stores(HOST)) == []
    if sql_params["driver"] == "SQLite3":
        assert not _exists(sql_params)
    else:
        assert raw_rows(sql_params, tables_query(sql_params["driver"])) == []


def _exists(params: dict[str, Any]) -> bool:
    import os

    return os.path.exists(resolve_relative_path(params["data_path"], params["database"]))


def tables_query(driver: str) -> str:
    schema = "current_schema()" if driver == "PostgreSQL" else "DATABASE()"
    return f"SELECT table_name FROM information_schema.tables WHERE table_schema = {schema}"


def test_created_schema_is_prosodys(sql_params: dict[str, Any]) -> None:
    """Prosody loads our tables without asking for an upgrade, and its own checks pass."""
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", "u", {"a": 1})
        assert backend.schema_problems() == []
    # Prosody's module.load runs create_table and upgrade_table; it would fail on a bad schema.
    assert prosody(sql_params, [{"op": "kv_get", "host": HOST, "store": "s", "user": "u"}]) == canon(
        lua_list([{"value": {"a": 1}}])
    )
    if sql_params["driver"] != "SQLite3":
        assert raw_rows(sql_params, when_type_query(sql_params["driver"]))[0][0].lower() == "bigint"


def test_mysql_old_schema_is_refused_for_writing(mysql_params: dict[str, Any]) -> None:
    prosody(mysql_params, [{"op": "kv_set", "host": HOST, "store": "s", "user": "u", "value": {"a": 1}}])
    conn = my_admin(mysql_params["database"])
    with conn.cursor() as cur:
        cur.execute("ALTER TABLE prosody MODIFY COLUMN value TEXT NOT NULL")
        cur.execute("DROP INDEX prosodyarchive_index ON prosodyarchive")
        cur.execute(
            "CREATE UNIQUE INDEX prosodyarchive_index ON prosodyarchive (host(20), user(20), store(20), `key`(20))"
        )
        cur.execute("ALTER TABLE prosodyarchive MODIFY COLUMN `with` TEXT CHARACTER SET latin1 NOT NULL")
    conn.close()
    with SqlBackend(mysql_params) as backend:
        assert backend.keyval_get(HOST, "s", "u") == {"a": 1}  # reading is fine
        with pytest.raises(SqlSchemaError) as err:
            backend.keyval_set(HOST, "s", "u", {"a": 2})
    text = str(err.value)
    assert "prosodyctl mod_storage_sql upgrade" in text
    with pytest.raises(AssertionError, match="database upgrade needed"):  # Prosody refuses it too
        prosody(mysql_params, [{"op": "kv_get", "host": HOST, "store": "s", "user": "u"}])
    assert (
        "prosody.value is TEXT" in text
        and "prosodyarchive_index is UNIQUE" in text
        and "prosodyarchive.with is latin1" in text
    )


def test_foreign_table_is_refused(sql_params: dict[str, Any]) -> None:
    if sql_params["driver"] == "SQLite3":
        conn = sqlite3.connect(resolve_relative_path(sql_params["data_path"], sql_params["database"]))
        conn.execute('CREATE TABLE "prosody" ("host" TEXT, "data" TEXT)')
        conn.commit()
        conn.close()
    elif sql_params["driver"] == "PostgreSQL":
        import psycopg

        p = sql_params
        with psycopg.connect(host=p["host"], port=p["port"], user=p["username"], dbname=p["database"]) as conn:
            conn.execute('CREATE TABLE "prosody" ("host" TEXT, "data" TEXT)')
    else:
        conn = my_admin(sql_params["database"])
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE prosody (host TEXT, data TEXT)")
        conn.close()
    with pytest.raises(SqlSchemaError, match=r"lacks column.*user, store, key, type, value"):
        SqlBackend(sql_params)


# -- connecting -----------------------------------------------------------------------------------


def test_wrong_mysql_password_is_not_echoed(mysql_params: dict[str, Any]) -> None:
    secret = "s3cr3t-Pa55"
    with pytest.raises(SqlConnectError) as err:
        SqlBackend({**mysql_params, "password": secret})
    text = str(err.value)
    assert secret not in text and "MySQL" in text and mysql_params["database"] in text and "127.0.0.1" in text


def test_postgresql_connect_error_names_database_not_password() -> None:
    secret = "pw-do-not-show"
    params = {
        "driver": "PostgreSQL",
        "database": "pm_no_such_db",
        "host": "127.0.0.1",
        "port": 5432,
        "username": "root",
        "password": secret,
    }
    with pytest.raises(SqlConnectError) as err:
        SqlBackend(params)
    text = str(err.value)
    assert secret not in text and "PostgreSQL" in text and "pm_no_such_db" in text and "127.0.0.1" in text


def test_sqlite_paths_and_errors(tmp_path: Any) -> None:
    assert resolve_relative_path("/var/lib/prosody/", "./x.sqlite") == "/var/lib/prosody/x.sqlite"
    assert resolve_relative_path("/var/lib/prosody", "/abs/x.sqlite") == "/abs/x.sqlite"
    with SqlBackend({"driver": "SQLite3", "database": "sub.sqlite", "data_path": str(tmp_path)}) as backend:
        backend.keyval_set(HOST, "s", "u", {"a": 1})
    assert (tmp_path / "sub.sqlite").exists()
    with pytest.raises(SqlConnectError, match=r"SQLite3 database .*/missing/x\.sqlite"):
        SqlBackend({"driver": "SQLite3", "database": "missing/x.sqlite", "data_path": str(tmp_path)}).keyval_set(
            HOST, "s", "u", {"a": 1}
        )
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(SqlDatabaseError, match=r"SQLite3 database .*junk\.sqlite.*: file is not a database"):
        SqlBackend({"driver": "SQLite3", "database": "junk.sqlite", "data_path": str(tmp_path)})
    with pytest.raises(SqlConfigError, match="unknown SQL driver 'sqlite'"):
        SqlBackend({"driver": "sqlite", "database": "x"})
