# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The internal (file) backend against real Prosody: util.datamanager and mod_storage_internal."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import fsutil
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import (
    InternalBackend,
    InternalStoreError,
    format_stamp,
    parse_stamp,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import DecodeError, EncodeError, ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element

from prosody_oracle import PROSODY_SRC, canon, collections_path, run_lua

HOSTS = ["example.com", "müc.example"]
# Names that need encoding: dots and @, non-ASCII, a slash, escape attempts, bytes that are not UTF-8,
# text that looks encoded already, upper case, spaces, NUL.
USERS = ["alice", "a.b@c", "ü", "x/y", "../../etc/passwd", "\udcff-not-utf8", "%2e", "MiXeD", "with space", "nul\x00"]

# Helpers every Lua script gets: mod_storage_internal loaded with stubs for the module API,
# emit() writing length-prefixed (label, canon) records, and a snapshot of a plan of stores.
LUA_LIB = f"""
local dm = require "util.datamanager"
local st = require "util.stanza"
package.loaded["core.storagemanager"] = {{ olddm = dm }}
local drivers = {{}}
local function storage_internal(host)
  if not drivers[host] then
    local stub = {{
      host = host,
      get_option_number = function(_, name, default)
        if name == "storage_archive_item_limit" then return math.maxinteger end
        return default
      end,
      get_option = function(_, _, default) return default end,
      log = function() end,
      provides = function(_, _, driver) drivers[host] = driver end,
    }}
    local env = setmetatable({{ module = stub }}, {{ __index = _G }})
    assert(loadfile({PROSODY_SRC + "/modules/mod_storage_internal.lua"!r}, "t", env))()
  end
  return drivers[host]
end
local function emit(label, value)
  local c = canon.encode(value)
  io.write(#label, ":", label, #c, ":", c)
end
local function label(kind, host, store, user)
  return kind .. "|" .. host .. "|" .. store .. "|" .. (user or "<nil>")
end
local function archive_dump(ar, user)
  local out = {{}}
  for key, stanza, when, with in assert(ar:find(user)) do
    out[#out + 1] = {{ key = key, value = st.preserialize(stanza), when = when, with = with }}
  end
  return out
end
local function snapshot(plan)
  for _, p in ipairs(plan) do
    local host, store, kind = p[1], p[2], p[3]
    local users, set = {{}}, {{}}
    for user in dm.users(host, store, kind == "archive" and "list" or "keyval") do
      users[#users + 1] = user
      set[user] = true
    end
    if #users > 0 then emit(label("users-" .. kind, host, store, nil), set) end
    local ar = kind == "archive" and storage_internal(host):open(store, "archive")
    for i = 0, #users do
      local user = users[i]
      if ar then
        local items = archive_dump(ar, user)
        if #items > 0 then emit(label("archive", host, store, user), items) end
      else
        local value = dm.load(user, host, store)
        if value ~= nil then emit(label("keyval", host, store, user), value) end
      end
    end
  end
end
local input = canon.decode(io.read("a"))
dm.set_data_path(input.path)
"""


@pytest.fixture(autouse=True, scope="module")
def _no_fsync():
    """fsync makes no difference a test can see but costs milliseconds: test_writes_are_made_durable covers it."""
    with mock.patch.object(fsutil.os, "fsync"):
        yield


def lua(script: str, **inputs: Any) -> dict[str, bytes]:
    """Run a script after LUA_LIB with ``input`` decoded from ``inputs``; return its emitted records."""
    out = run_lua(LUA_LIB + textwrap.dedent(script), stdin=canon(lua_table(inputs)))
    records, pos = {}, 0
    while pos < len(out):
        fields = []
        for _field in range(2):  # a key, then its value
            colon = out.index(b":", pos)
            end = colon + 1 + int(out[pos:colon])
            fields.append(out[colon + 1 : end])
            pos = end
        records[fields[0].decode("utf-8", "surrogateescape")] = fields[1]
    return records


def lua_table(value: Any) -> Any:
    """Python lists and tuples as Lua sequences, recursively."""
    if isinstance(value, (list, tuple)):
        return {i: lua_table(v) for i, v in enumerate(value, 1)}
    if isinstance(value, dict):
        return {k: lua_table(v) for k, v in value.items()}
    return value


def label(kind: str, host: str, store: str, user: str | None) -> str:
    return f"{kind}|{host}|{store}|{'<nil>' if user is None else user}"


def item_table(item: ArchiveItem) -> dict[str, Any]:
    """An item as the Lua side dumps what archive:find returns."""
    table = {"key": item.key, "value": item.value.preserialize(), "when": item.when}
    if item.with_ is not None:
        table["with"] = item.with_
    return table


def snapshot(backend: InternalBackend) -> dict[str, bytes]:
    """Everything our backend finds through its own discovery, labelled as the Lua snapshot labels it."""
    out = {}
    for host in backend.hosts():
        for store, kind in backend.stores(host):
            lister = backend.keyval_users if kind == "keyval" else backend.archive_users
            users = list(lister(host, store))
            assert users == sorted(users)
            if users:
                out[label(f"users-{kind}", host, store, None)] = canon(dict.fromkeys(users, True))
            for user in [None, *users]:
                if kind == "keyval":
                    value = backend.keyval_get(host, store, user)
                    if value is not None:
                        out[label(kind, host, store, user)] = canon(value)
                else:
                    items = [item_table(item) for item in backend.archive_items(host, store, user)]
                    assert backend.archive_keys(host, store, user) == [item["key"] for item in items]
                    if items:
                        out[label(kind, host, store, user)] = canon(lua_table(items))
    return out


def message(i: int, peer: str = "bob@example.com") -> Element:
    body = Element("body", {}, [f"hello {i} ü"])
    return Element("message", {"to": peer, "type": "chat", "id": f"m{i}"}, [body])


def tree(root: os.PathLike[str]) -> list[str]:
    """Every path under a directory, relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        found += [os.path.relpath(os.path.join(dirpath, name), root) for name in dirnames + filenames]
    return sorted(found)


# -- reading what Prosody wrote -----------------------------------------------------------------

PLAN = [
    *[(host, store, "keyval") for host in HOSTS for store in ("accounts", "roster", "host_config")],
    *[(host, "archive", "archive") for host in HOSTS],
    (HOSTS[0], "private", "keyval"),
    (HOSTS[0], "muc_log", "archive"),
]

PROSODY_WRITES = """
local hosts, users = input.hosts, input.users
local function msg(i, extra)
  local m = st.message({ to = "bob@example.com", type = "chat", id = "m" .. i }):tag("body"):text("hello " .. i):up()
  if extra then m:tag("x", { xmlns = "urn:example" }):text("ü"):up() end
  return m
end
for _, host in ipairs(hosts) do
  for _, user in ipairs(users) do
    assert(dm.store(user, host, "accounts", { password = "hash-" .. user, iteration_count = 4096,
      [1] = "one", [2.5] = "half", [true] = "yes", [false] = { nested = { deep = true } }, [-3] = -3.25 }))
    assert(dm.store(user, host, "roster", { [false] = { version = 7, pending = { ["carol@example.net"] = true } },
      ["bob@example.com"] = { subscription = "both", groups = { Friends = true }, name = "Bob" } }))
  end
  assert(dm.store(nil, host, "host_config", { a = 1, list = { 1, 2, 3 } }))
end
local list = {}
for i = 1, 20000 do list[i] = { n = i, s = "v" .. i } end
assert(dm.store("big", hosts[1], "private", { blob = string.rep("0123456789", 300000), list = list }))

local ar = storage_internal(hosts[1]):open("archive", "archive")
for _, user in ipairs(users) do
  assert(ar:append(user, "k1", msg(1), 1600000000, "bob@example.com"))
  assert(ar:append(user, "k2", msg(2, true), 1600000001, nil))
  assert(ar:append(user, "k3", msg(3), 1600000002, "carol@example.net"))
  assert(ar:append(user, "k1", msg(4), 1600000003, "bob@example.com")) -- same key: the old item goes
  assert(ar:append(user, nil, msg(5), 1600000004.0, nil)) -- a generated key
end
assert(ar:append(nil, "host-item", msg(6), 1600000005, nil)) -- host-level archive
local many = storage_internal(hosts[1]):open("muc_log", "archive")
for i = 1, input.many or 10050 do
  assert(many:append("room", nil, msg(i), 1500000000 + i, i % 3 == 0 and "x@y" or nil))
end

-- Items as older Prosody versions left them: no key, no when (only the stamp), a legacy stamp,
-- a fractional time, a legacy namespaced attribute.
assert(dm.list_store("old", hosts[2], "archive", {
  { name = "message", attr = { to = "a@b", stamp = "2019-05-06T07:08:09Z" }, { name = "body", attr = {}, "no key" } },
  { name = "message", attr = { stamp = "2019-05-06T07:08:09.123+02:30", stamp_legacy = "20190506T07:08:09" },
    key = "k", with = "x@y" },
  { name = "message", attr = {}, key = "f", when = 1557126489.75 },
  { name = "message", attr = { ["urn:x|lang"] = "en" }, key = "legacy-attr", when = 5 },
  { name = "message", attr = { stamp = "2019-05-06T07:08:09-0100" }, when = false },
}))
snapshot(input.plan)
"""


def test_reads_exactly_what_prosody_wrote(tmp_path):
    prosody = lua(PROSODY_WRITES, path=str(tmp_path), hosts=HOSTS, users=USERS, plan=PLAN)
    backend = InternalBackend({"path": str(tmp_path)})
    ours = snapshot(backend)
    assert sorted(ours) == sorted(prosody)
    for key in prosody:
        assert ours[key] == prosody[key], key
    assert backend.warnings == []
    # Sanity of the data itself, so that an empty snapshot on both sides cannot pass.
    assert len(prosody[label("archive", HOSTS[0], "muc_log", "room")]) > 10050 * 50
    old = list(backend.archive_items(HOSTS[1], "archive", "old"))
    assert [(item.key, item.when, item.with_) for item in old] == [
        ("1", 1557126489, None),
        ("k", 1557126489 - 9000, "x@y"),
        ("f", 1557126489.75, None),
        ("legacy-attr", 5, None),
        ("5", 1557126489 + 3600, None),
    ]
    assert old[3].value.attr == {"urn:x\x01lang": "en"}
    assert "stamp" not in old[1].value.attr and "stamp_legacy" not in old[1].value.attr


def test_lists_hosts_and_stores_with_their_kind(tmp_path):
    lua(PROSODY_WRITES, path=str(tmp_path), hosts=HOSTS, users=USERS[:2], plan=[], many=3)
    backend = InternalBackend({"path": str(tmp_path)})
    assert list(backend.hosts()) == sorted(HOSTS)
    assert list(backend.stores(HOSTS[0])) == [
        ("accounts", "keyval"),
        ("archive", "archive"),  # both the users' .list files and the host-level archive.list
        ("host_config", "keyval"),
        ("muc_log", "archive"),
        ("private", "keyval"),
        ("roster", "keyval"),
    ]
    assert list(backend.archive_users(HOSTS[0], "archive")) == sorted(USERS[:2])
    assert backend.keyval_get(HOSTS[0], "accounts", "nobody") is None
    assert list(backend.archive_items(HOSTS[0], "archive", "nobody")) == []
    assert list(backend.keyval_users("nohost.example", "accounts")) == []


# -- Prosody reading what we wrote --------------------------------------------------------------


def test_prosody_reads_exactly_what_we_wrote(tmp_path):
    backend = InternalBackend({"path": str(tmp_path / "data")})
    expected: dict[str, Any] = {}
    account = {"iteration_count": 4096, 1: "one", 2.5: "half", BoolKey(True): "yes", BoolKey(False): {"n": {"d": True}}}
    roster = {BoolKey(False): {"version": 7, "pending": {}}, "bob@example.com": {"subscription": "both", "name": "B"}}
    for host in HOSTS:
        for user in USERS:
            for store, value in (("accounts", {**account, "password": f"hash-{user}"}), ("roster", roster)):
                backend.keyval_set(host, store, user, value)
                expected[label("keyval", host, store, user)] = value
        expected[label("users-keyval", host, "accounts", None)] = dict.fromkeys(USERS, True)
        expected[label("users-keyval", host, "roster", None)] = dict.fromkeys(USERS, True)
        backend.keyval_set(host, "host_config", None, {"a": 1})
        expected[label("keyval", host, "host_config", None)] = {"a": 1}
    big = {"blob": "0123456789" * 300000, "list": {i: {"n": i} for i in range(1, 20001)}}
    backend.keyval_set(HOSTS[0], "private", "big", big)
    expected[label("keyval", HOSTS[0], "private", "big")] = big
    expected[label("users-keyval", HOSTS[0], "private", None)] = {"big": True}

    for user in [*USERS, None]:
        # Times as stored: an integer, and a float with an integral value that stays a float.
        first = [
            ArchiveItem(
                f"k{i}", message(i), (1600000000 + i) * (1.0 if i == 3 else 1), "bob@example.com" if i % 2 else None
            )
            for i in (1, 2, 3)
        ]
        backend.archive_write(HOSTS[0], "archive", user, first)
        # k1 replaced and moved last, k2 given twice in one call (the last one wins), a fractional time.
        second = [
            ArchiveItem("k2", message(20), 3),
            ArchiveItem("k1", message(10), 7.5),
            ArchiveItem("k2", message(21), 9),
        ]
        backend.archive_write(HOSTS[0], "archive", user, second)
        final = [first[2], second[1], second[2]]
        expected[label("archive", HOSTS[0], "archive", user)] = [item_table(item) for item in final]
    expected[label("users-archive", HOSTS[0], "archive", None)] = dict.fromkeys(USERS, True)
    many = [ArchiveItem(f"id{i}", message(i), 1500000000 + i, None if i % 3 else "x@y") for i in range(10050)]
    backend.archive_write(HOSTS[0], "muc_log", "room", many)
    expected[label("archive", HOSTS[0], "muc_log", "room")] = [item_table(item) for item in many]
    expected[label("users-archive", HOSTS[0], "muc_log", None)] = {"room": True}

    prosody = lua("snapshot(input.plan)", path=str(tmp_path / "data"), plan=PLAN)
    assert sorted(prosody) == sorted(expected)
    for key, value in expected.items():
        assert prosody[key] == canon(lua_table(value)), key
    assert snapshot(backend) == prosody


def test_archive_stamp_is_prosodys(tmp_path):
    backend = InternalBackend({"path": str(tmp_path)})
    backend.archive_write(
        "h", "archive", "u", [ArchiveItem("a", message(1), 1600000000), ArchiveItem("b", message(2), 1.75)]
    )
    out = lua(
        """
        for i, item in ipairs(dm.list_load("u", "h", "archive")) do
          emit(tostring(i), { item.attr.stamp, require "util.datetime".datetime(math.floor(item.when)) })
        end
        """,
        path=str(tmp_path),
    )
    assert out == {
        "1": canon({1: "2020-09-13T12:26:40Z", 2: "2020-09-13T12:26:40Z"}),
        "2": canon({1: "1970-01-01T00:00:01Z", 2: "1970-01-01T00:00:01Z"}),
    }


names = st.one_of(
    st.text(min_size=1, max_size=12),
    st.binary(min_size=1, max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
)
# Floats Prosody's serializer keeps as floats: 2.0 it writes as "2", read back as an integer.
lua_floats = st.integers(-(2**40), 2**40).map(lambda i: i / 4 + 0.125) | st.sampled_from(
    [math.inf, -math.inf, math.nan, 0.1, 1e-300, -5e-324, 1.7976931348623157e-308]
)
lua_keys = st.one_of(
    st.text(max_size=6),
    st.integers(-(2**63), 2**63 - 1),
    lua_floats.filter(lambda f: not math.isnan(f)),  # NaN cannot be a table key
    st.booleans().map(BoolKey),
)
lua_values = st.recursive(
    # Not math.mininteger: Prosody writes it as a decimal literal, which Lua reads back as a float.
    st.one_of(st.booleans(), st.integers(-(2**63) + 1, 2**63 - 1), lua_floats, names),
    lambda inner: st.dictionaries(lua_keys, inner, max_size=3),
    max_leaves=8,
)


def drawn(strategy: st.SearchStrategy[Any]) -> list[Any]:
    """Every example Hypothesis draws (under the profile's settings), to check in one Lua run.

    One Lua process per example would cost seconds per test; a batch costs one, and a failure
    still names the example (its label) among the differing records.
    """
    examples = []

    @given(strategy)
    def draw(example: Any) -> None:
        examples.append(example)

    draw()
    return examples


def test_keyval_values_and_names_round_trip_through_prosody(tmp_path):
    cases = drawn(st.dictionaries(names, st.dictionaries(lua_keys, lua_values, min_size=1, max_size=3), max_size=3))
    ours = InternalBackend({"path": str(tmp_path / "ours")})
    expected, plan, writes = {}, [], []
    for i, case in enumerate(cases):
        store = f"s{i}"
        plan.append(("h.example", store, "keyval"))
        for user, value in case.items():
            ours.keyval_set("h.example", store, user, value)
            writes.append((store, user, value))
            expected[label("keyval", "h.example", store, user)] = canon(value)
        if case:
            expected[label("users-keyval", "h.example", store, None)] = canon(dict.fromkeys(case, True))
    out = lua(
        """
        snapshot(input.plan)
        dm.set_data_path(input.other)
        for _, w in ipairs(input.writes) do assert(dm.store(w[2], "h.example", w[1], w[3])) end
        """,
        path=str(tmp_path / "ours"),
        other=str(tmp_path / "prosody"),
        plan=plan,
        writes=writes,
    )
    assert out == expected
    assert snapshot(InternalBackend({"path": str(tmp_path / "prosody")})) == expected


archive_calls = st.lists(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(0, 2**33),  # Prosody on Lua 5.4 cannot stamp a fractional time
            st.none() | st.sampled_from(["x@example.com", "y@example.com"]),
        ),
        min_size=1,
        max_size=5,
    ),
    min_size=1,
    max_size=3,
)


def test_archive_write_is_a_sequence_of_prosody_appends(tmp_path):
    """Each archive_write call equals mod_storage_internal appending its items one by one."""
    ours = InternalBackend({"path": str(tmp_path / "ours")})
    cases = []
    for i, (calls, user) in enumerate(drawn(st.tuples(archive_calls, st.none() | names))):
        store, lua_calls = f"a{i}", []
        for call in calls:
            items = [ArchiveItem(key, message(n), when, peer) for n, (key, when, peer) in enumerate(call)]
            ours.archive_write("h.example", store, user, items)
            lua_calls.append([item_table(item) for item in items])
        cases.append({"store": store, "calls": lua_calls, **({} if user is None else {"user": user})})
    out = lua(
        """
        local function dump_all()
          local out = {}
          for i, case in ipairs(input.cases) do
            out[i] = archive_dump(storage_internal("h.example"):open(case.store, "archive"), case.user)
          end
          return out
        end
        emit("ours", dump_all())
        dm.set_data_path(input.other)
        for _, case in ipairs(input.cases) do
          local ar = storage_internal("h.example"):open(case.store, "archive")
          for _, call in ipairs(case.calls) do
            for _, item in ipairs(call) do
              assert(ar:append(case.user, item.key, st.deserialize(item.value), item.when, item.with))
            end
          end
        end
        emit("prosody", dump_all())
        """,
        path=str(tmp_path / "ours"),
        other=str(tmp_path / "prosody"),
        cases=cases,
    )
    assert out["ours"] == out["prosody"]
    theirs = InternalBackend({"path": str(tmp_path / "prosody")})
    dumps = [
        [item_table(item) for item in theirs.archive_items("h.example", case["store"], case.get("user"))]
        for case in cases
    ]
    assert canon(lua_table(dumps)) == out["prosody"]


# -- names and times -----------------------------------------------------------------------------


def test_names_are_encoded_and_decoded_as_datamanager_does(tmp_path):
    """Our file for (host, store, user) is the one datamanager's getpath names, whatever the names."""
    all_names = sorted({name for names_ in drawn(st.lists(names, min_size=1, max_size=10)) for name in names_})
    backend = InternalBackend({"path": str(tmp_path)})
    for name in all_names:
        backend.keyval_set(name, name, name, {"user": name})
        backend.keyval_set(name, name, None, {"host": name})
    out = lua(
        """
        for _, name in ipairs(input.names) do
          emit(name, { dm.load(name, name, name), dm.load(nil, name, name), dm.path_decode(dm.path_encode(name)) })
        end
        """,
        path=str(tmp_path),
        names=all_names,
    )
    assert out == {name: canon({1: {"user": name}, 2: {"host": name}, 3: name}) for name in all_names}
    for path in tree(tmp_path):
        assert all(re.fullmatch(r"[A-Za-z0-9%_]+(\.dat)?", part) for part in path.split(os.sep)), path
    assert list(backend.hosts()) == all_names


STAMP_PARTS = st.tuples(
    st.from_regex(r"\A[0-9]{4}-?[0-9]{2}-?[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\Z"),
    st.sampled_from(["", ".", ".123", ".5"]),
    st.sampled_from(["", "Z", "+02:00", "-0530", "+1", "-07:3", "+00:000", "Zjunk", "x", "+05:30junk", "junk-01:00"]),
)


def test_stamps_parse_as_util_datetime_parses_them():
    stamps = drawn(STAMP_PARTS.map("".join) | st.text(max_size=30))
    with mock.patch.dict(os.environ, {"TZ": "UTC"}):
        out = lua(
            """
            local parse = require "util.datetime".parse
            for i, s in ipairs(input.stamps) do
              local ok, t = pcall(parse, s)
              if not ok then t = "error" elseif t == nil then t = false end
              emit(tostring(i), t)
            end
            """,
            stamps=stamps,
        )
    assert out == {str(i): canon(lua_parse_result(parse_stamp(s))) for i, s in enumerate(stamps, 1)}


def lua_parse_result(parsed: int | None) -> int | str | bool:
    """What the Lua side reports for a parse: false for nil, and an error for exactly -1."""
    if parsed is None:
        return False
    # Lua's os.time cannot return -1 (its failure value): the one stamp Prosody fails to read.
    return "error" if parsed == -1 else parsed


def test_stamps_format_as_util_datetime_formats_them():
    times = [0, 1, -1, 59, 86399, 951782400, 1600000000, 2**31, 2**33, -(2**31), -62135596800, 253402300800, 2**40]
    out = lua(
        """
        local datetime = require "util.datetime".datetime
        for i, t in ipairs(input.times) do emit(tostring(i), datetime(t)) end
        """,
        times=times,
    )
    assert out == {str(i): canon(format_stamp(t)) for i, t in enumerate(times, 1)}
    assert format_stamp(1600000000.999) == format_stamp(1600000000)
    with pytest.raises(EncodeError):
        format_stamp(float("inf"))
    with pytest.raises(EncodeError):
        format_stamp(2**70)


# gmtime's range on 64-bit glibc (the year must fit in an int): its first and last second.
GMTIME_MIN, GMTIME_MAX = -67768040609740800, 67768036191676799


def strftime_stamp(when: int | float) -> str | None:
    """format_stamp as strftime(gmtime()) alone writes it; None where it fails."""
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(math.floor(when)))
    except (OverflowError, OSError, ValueError):
        return None


@given(
    when=st.one_of(
        st.integers(-(2**64), 2**64),
        st.integers(-(10**12), 10**12),
        st.integers(-86400 * 3, 86400 * 3),
        st.sampled_from([GMTIME_MIN, GMTIME_MAX]).flatmap(lambda t: st.integers(t - 86400 * 2, t + 86400 * 2)),
        st.floats(-1e12, 1e12),
    )
)
def test_stamps_format_as_strftime(when: int | float) -> None:
    """The date formatted once per day and the time by arithmetic: strftime's text, and its failures."""
    try:
        ours = format_stamp(when)
    except EncodeError:
        ours = None
    assert ours == strftime_stamp(when)


# -- safety of paths -----------------------------------------------------------------------------

ESCAPES = ["../../etc/x", "..", ".", "/", "/etc/passwd", "a/../../b", "\x00", "~", "-", ".hidden", "C:\\x", "\udcff"]


def test_no_name_leaves_the_data_directory(tmp_path):
    root = tmp_path / "data"
    backend = InternalBackend({"path": str(root)})
    for name in ESCAPES:
        backend.keyval_set(name, name, name, {"x": name})
        backend.keyval_set("h", "s", name, {"x": name})
        backend.keyval_set(name, name, None, {"x": name})
        backend.archive_write(name, name, name, [ArchiveItem("k", message(1), 5)])
    assert os.listdir(tmp_path) == ["data"]
    for path in tree(root):
        real = os.path.realpath(os.path.join(root, path))
        assert real.startswith(str(root) + os.sep)
        assert not any(part in (".", "..") for part in path.split(os.sep))
    for name in ESCAPES:
        assert backend.keyval_get(name, name, name) == {"x": name}
        assert backend.keyval_get("h", "s", name) == {"x": name}
        assert [item.key for item in backend.archive_items(name, name, name)] == ["k"]
    assert list(backend.keyval_users("h", "s")) == sorted(ESCAPES)
    assert list(backend.hosts()) == sorted([*ESCAPES, "h"])


def test_empty_host_and_store_names_are_refused(tmp_path):
    backend = InternalBackend({"path": str(tmp_path)})
    with pytest.raises(InternalStoreError, match="empty host"):
        backend.keyval_set("", "s", "u", {"a": 1})
    with pytest.raises(InternalStoreError, match="empty store"):
        backend.keyval_get("h", "", "u")
    with pytest.raises(InternalStoreError, match="not a string of bytes"):
        backend.keyval_set("h", "s", "\ud800", {"a": 1})
    # The empty user name is unambiguous (<store>/.dat), as datamanager writes it.
    backend.keyval_set("h", "s", "", {"a": 1})
    assert list(backend.keyval_users("h", "s")) == [""]
    assert lua('emit("v", dm.load("", "h", "s"))', path=str(tmp_path)) == {"v": canon({"a": 1})}
    assert os.listdir(tmp_path) == ["h"]


def test_file_names_not_in_prosodys_encoding_are_reported(tmp_path):
    store = tmp_path / "h" / "roster"
    store.mkdir(parents=True)
    for name in ("bob.dat", "a.b.dat", "x%2Ey.dat", "stray%.dat", "%zz.dat", ".dat~", "bob.dat~"):
        (store / name).write_text('return { ["k"] = "' + name + '" };\n')
    (tmp_path / "h" / "odd.store").mkdir()
    (tmp_path / "h" / "odd.store" / "u.dat").write_text("return {};\n")
    (tmp_path / "Bad.Host").mkdir()
    (tmp_path / "_global").mkdir()
    backend = InternalBackend({"path": str(tmp_path)})
    assert list(backend.keyval_users("h", "roster")) == ["bob"]
    assert list(backend.stores("h")) == [("roster", "keyval")]
    assert list(backend.hosts()) == ["h"]
    reported = "\n".join(backend.warnings)
    for name in ("a.b.dat", "x%2Ey.dat", "stray%.dat", "%zz.dat", "odd.store", "Bad.Host", "_global"):
        assert name in reported
    assert len(backend.warnings) == 7
    assert "x%2ey.dat" in reported  # names the file Prosody would read instead
    # Prosody lists such a file under its decoded name but reads another file: its data is never loaded.
    out = lua(
        """
        for user in dm.users("h", "roster", "keyval") do emit(user, dm.load(user, "h", "roster") or false) end
        """,
        path=str(tmp_path),
    )
    assert out["x.y"] == out["a.b"] == out["stray%"] == out["%zz"] == canon(False)
    assert out["bob"] == canon({"k": "bob.dat"})


# -- writes: removal, atomicity, modes ------------------------------------------------------------


def test_empty_values_remove_the_file_as_prosody_does(tmp_path):
    backend = InternalBackend({"path": str(tmp_path)})
    for empty in (None, {}, False):
        backend.keyval_set("h", "s", "u", {"a": 1})
        backend.keyval_set("h", "s", None, {"a": 1})
        backend.keyval_set("h", "s", "u", empty)
        backend.keyval_set("h", "s", None, empty)
        assert backend.keyval_get("h", "s", "u") is None
        assert tree(tmp_path) == ["h", "h/s"]
    backend.archive_write("h", "a", "u", [])
    assert tree(tmp_path) == ["h", "h/s"]


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path):
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "u", {"a": 1})
    backend.archive_write("h", "a", "u", [ArchiveItem("k", message(1), 5)])
    before = {path: (tmp_path / path).read_bytes() for path in tree(tmp_path) if os.path.isfile(tmp_path / path)}
    with mock.patch.object(fsutil.os, "replace", side_effect=OSError(28, "No space left on device")):
        with pytest.raises(InternalStoreError, match=r"cannot write .*u\.dat: No space left"):
            backend.keyval_set("h", "s", "u", {"a": 2})
        with pytest.raises(InternalStoreError, match=r"u\.list"):
            backend.archive_write("h", "a", "u", [ArchiveItem("k2", message(2), 6)])
    after = {path: (tmp_path / path).read_bytes() for path in tree(tmp_path) if os.path.isfile(tmp_path / path)}
    assert after == before
    assert backend.keyval_get("h", "s", "u") == {"a": 1}


@contextlib.contextmanager
def durability_calls() -> Iterator[list[tuple[str, str]]]:
    """Record, in order, every fsync (of the file or directory it names) and rename fsutil makes."""
    calls: list[tuple[str, str]] = []
    rename = os.replace

    def record_fsync(fd: int) -> None:
        calls.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def record_replace(src: str, dst: str) -> None:
        calls.append(("replace", os.fsdecode(dst)))
        rename(src, dst)

    with mock.patch.object(fsutil.os, "fsync", record_fsync), mock.patch.object(fsutil.os, "replace", record_replace):
        yield calls


def test_writes_are_made_durable(tmp_path):
    """The data reaches the disk before the rename, and the rename (or removal) before we go on."""
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "u", {"a": 1})
    with durability_calls() as calls:
        backend.keyval_set("h", "s", "u", {"a": 2})
        backend.keyval_set("h", "s", "u", None)
    store = str(tmp_path / "h" / "s")
    assert calls[0][0] == "fsync" and fsutil.is_temp_name(os.path.basename(calls[0][1]))
    assert calls[1:] == [("replace", f"{store}/u.dat"), ("fsync", store), ("fsync", store)]


def test_batched_writes_are_made_durable_at_flush(tmp_path):
    """In a batch (as the engine runs) each file is still renamed into place whole, but the fsyncs
    wait for flush: then every file written, then every directory changed, once each."""
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "old", {"a": 1})
    backend.start_batch()
    with durability_calls() as calls:
        backend.keyval_set("h", "s", "u", {"a": 2})
        backend.keyval_set("h", "s", "v", {"a": 3})
        backend.keyval_set("h", "t", "u", {"a": 4})  # a new store directory
        backend.keyval_set("h", "s", "old", None)
        written = list(calls)
        backend.flush()
        flushed = calls[len(written) :]
        backend.flush()  # nothing left to flush
        assert len(calls) == len(written) + len(flushed)
    host, store, other = str(tmp_path / "h"), str(tmp_path / "h" / "s"), str(tmp_path / "h" / "t")
    assert written == [("replace", f"{store}/u.dat"), ("replace", f"{store}/v.dat"), ("replace", f"{other}/u.dat")]
    # Several at once (a file system commits concurrent fsyncs together), so in no set order:
    # every file before any directory.
    assert len(flushed) == 6 and {name for _call, name in flushed} == {
        f"{store}/u.dat",
        f"{store}/v.dat",
        f"{other}/u.dat",
        host,
        store,
        other,
    }
    assert {name for _call, name in flushed[:3]} == {f"{store}/u.dat", f"{store}/v.dat", f"{other}/u.dat"}
    assert backend.keyval_get("h", "s", "old") is None and backend.keyval_get("h", "t", "u") == {"a": 4}


def test_a_failed_fsync_at_flush_is_raised_and_stays_to_be_done(tmp_path):
    """One file's fsync failing: the others are done, the error comes out of flush, and the next
    flush tries that file again (then its directories)."""
    backend = InternalBackend({"path": str(tmp_path)})
    backend.start_batch()
    for user in ("a", "b", "c"):
        backend.keyval_set("h", "s", user, {"n": 1})
    bad = str(tmp_path / "h" / "s" / "b.dat")
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        name = os.readlink(f"/proc/self/fd/{fd}")
        if name == bad:
            raise OSError(errno.EIO, "Input/output error")
        synced.append(name)
        real_fsync(fd)

    with mock.patch.object(fsutil.os, "fsync", fsync), pytest.raises(ProsodyMigrateError, match="Input/output error"):
        backend.flush()
    assert sorted(synced) == [str(tmp_path / "h" / "s" / f"{u}.dat") for u in ("a", "c")]
    with durability_calls() as calls:
        backend.flush()
    assert calls[0] == ("fsync", bad) and len(calls) > 1  # then the directories, never done yet


KILLED_WRITER = """
import os, signal, sys
sys.path.insert(0, {collections!r})
from ansible_collections.xmpp.prosody.plugins.module_utils import fsutil
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
fsutil.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
InternalBackend({{"path": {path!r}}}).keyval_set("h", "s", "u", {{"password": "new"}})
"""


def test_a_killed_write_leaves_a_temporary_file_that_is_never_data(tmp_path):
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "u", {"password": "old"})
    script = KILLED_WRITER.format(collections=collections_path(), path=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, check=False)
    assert proc.returncode == -9, proc.stderr
    leftovers = [name for name in os.listdir(tmp_path / "h" / "s") if name != "u.dat"]
    assert len(leftovers) == 1 and fsutil.is_temp_name(leftovers[0])
    assert b"new" in (tmp_path / "h" / "s" / leftovers[0]).read_bytes()

    fresh = InternalBackend({"path": str(tmp_path)})
    assert list(fresh.keyval_users("h", "s")) == ["u"]
    assert fresh.keyval_get("h", "s", "u") == {"password": "old"}
    assert list(fresh.stores("h")) == [("s", "keyval")]
    assert lua('for u in dm.users("h", "s") do emit(u, dm.load(u, "h", "s")) end', path=str(tmp_path)) == {
        "u": canon({"password": "old"})
    }
    fresh.keyval_set("h", "s", "v", {"a": 1})  # the next write into that directory clears it
    assert sorted(os.listdir(tmp_path / "h" / "s")) == ["u.dat", "v.dat"]


def mode(path: os.PathLike[str]) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_new_files_get_prosodys_default_modes(tmp_path):
    root = tmp_path / "data"
    backend = InternalBackend({"path": str(root)})
    umask = os.umask(0)  # the most permissive umask: the modes must come from us
    try:
        backend.keyval_set("h", "s", "u", {"a": 1})
        backend.keyval_set("h", "s", None, {"a": 1})
        backend.archive_write("h", "a", "u", [ArchiveItem("k", message(1), 5)])
    finally:
        os.umask(umask)
    assert mode(root) == 0o750
    for path in ("h", "h/s", "h/a"):
        assert mode(root / path) == 0o750, path
    for path in ("h/s/u.dat", "h/s.dat", "h/a/u.list"):
        assert mode(root / path) == 0o640, path


def test_rewritten_files_keep_their_mode_but_never_world_bits(tmp_path):
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "u", {"a": 1})
    backend.keyval_set("h", "s", "w", {"a": 1})
    os.chmod(tmp_path / "h/s/u.dat", 0o600)
    os.chmod(tmp_path / "h/s/w.dat", 0o664)
    backend.keyval_set("h", "s", "u", {"a": 2})
    backend.keyval_set("h", "s", "w", {"a": 2})
    assert mode(tmp_path / "h/s/u.dat") == 0o600
    assert mode(tmp_path / "h/s/w.dat") == 0o660


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_new_files_and_directories_follow_their_siblings(tmp_path):
    uid, gid = 4242, 4343
    host = tmp_path / "h"
    (host / "s").mkdir(parents=True)
    (host / "s" / "old.dat").write_text("return {};\n")
    os.chmod(host / "s" / "old.dat", 0o600)
    os.chmod(host / "s", 0o700)
    for path in (host, host / "s", host / "s" / "old.dat"):
        os.chown(path, uid, gid)
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "new", {"a": 1})
    backend.keyval_set("h", "t", "new", {"a": 1})  # a new store directory beside s
    backend.keyval_set("h", "t", "newer", {"a": 1})
    for path, expected in (("s/new.dat", 0o600), ("t", 0o700), ("t/new.dat", 0o640), ("t/newer.dat", 0o640)):
        st_ = os.stat(host / path)
        assert (stat.S_IMODE(st_.st_mode), st_.st_uid, st_.st_gid) == (expected, uid, gid), path


# -- errors ---------------------------------------------------------------------------------------


def test_the_data_directory_is_required_and_named(tmp_path):
    with pytest.raises(InternalStoreError, match="'path'"):
        InternalBackend({})
    missing = InternalBackend({"path": str(tmp_path / "missing")})
    for call in (
        missing.hosts,
        lambda: missing.keyval_get("h", "s", "u"),
        lambda: list(missing.archive_items("h", "s", "u")),
    ):
        with pytest.raises(InternalStoreError, match="missing' does not exist or is not a directory"):
            call()
    (tmp_path / "file").write_text("")
    with pytest.raises(InternalStoreError, match="file' does not exist or is not a directory"):
        list(InternalBackend({"path": str(tmp_path / "file")}).keyval_users("h", "s"))


def test_bad_archive_items_are_errors_naming_file_and_item(tmp_path):
    lua(
        """
        assert(dm.list_store("u@x", "h", "archive", { { name = "message", attr = {}, key = "ok", when = 1 }, "text" }))
        assert(dm.list_store("v", "h", "archive", { { name = "message", attr = {} } }))
        assert(dm.list_store("w", "h", "archive", { { name = "message", attr = {}, when = 1, key = 7 } }))
        assert(dm.list_store("x", "h", "archive", { { name = "message", attr = {}, when = "soon" } }))
        """,
        path=str(tmp_path),
    )
    backend = InternalBackend({"path": str(tmp_path)})
    file = os.path.join(str(tmp_path), "h", "archive", "u%40x.list")
    with pytest.raises(DecodeError) as info:
        list(backend.archive_items("h", "archive", "u@x"))
    assert str(info.value) == (
        f"{file} (host 'h', store 'archive', user 'u@x') item 2: "
        "not a stanza table (a table with an 'attr' table), as archive items must be"
    )
    for user, problem in (
        ("v", "no 'when' and no parsable 'stamp'"),
        ("w", "key 7 is not a string"),
        ("x", "'soon' is not a number"),
    ):
        with pytest.raises(DecodeError, match=f"user '{user}'\\) item 1: .*{problem}"):
            list(backend.archive_items("h", "archive", user))


def test_unreadable_data_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "h" / "s").mkdir(parents=True)
    (tmp_path / "h" / "s" / "u.dat").write_text("return {")
    (tmp_path / "h" / "s" / "u.list").write_text("item({})\nitem(")
    backend = InternalBackend({"path": str(tmp_path)})
    with pytest.raises(DecodeError, match=r"h/s/u\.dat"):
        backend.keyval_get("h", "s", "u")
    with pytest.raises(DecodeError, match=r"h/s/u\.list"):
        backend.archive_write("h", "s", "u", [ArchiveItem("k", message(1), 5)])
    assert (tmp_path / "h" / "s" / "u.list").read_text() == "item({})\nitem("
    with pytest.raises(EncodeError, match="not a stanza"):
        backend.archive_write("h", "s", "v", [ArchiveItem("k", {"name": "message"}, 5)])
    assert not (tmp_path / "h" / "s" / "v.list").exists()


def test_temporary_files_of_a_live_writer_are_left_alone(tmp_path: Any):
    backend = InternalBackend({"path": str(tmp_path)})
    backend.keyval_set("h", "s", "u", {"a": "b"})
    directory = tmp_path / "h" / "s"
    live = directory / f"{fsutil.TEMP_PREFIX}{os.getppid()}-0123456789ab{fsutil.TEMP_SUFFIX}"
    gone = directory / f"{fsutil.TEMP_PREFIX}999999999-0123456789ab{fsutil.TEMP_SUFFIX}"
    live.write_bytes(b"being written")
    gone.write_bytes(b"left by a killed run")
    fresh = InternalBackend({"path": str(tmp_path)})
    fresh.keyval_set("h", "s", "v", {"c": "d"})
    assert live.exists() and not gone.exists()
    assert sorted(fresh.keyval_users("h", "s")) == ["u", "v"]
    assert InternalBackend({"path": str(tmp_path)}).keyval_get("h", "s", "v") == {"c": "d"}
