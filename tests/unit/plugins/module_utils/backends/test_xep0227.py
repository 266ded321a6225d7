# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The xep0227 backend against real Prosody's mod_storage_xep0227, in both directions."""

from __future__ import annotations

import os
import stat
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import fsutil
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.xep0227 import (
    Xep0227Backend,
    Xep0227Error,
    b64_decode,
    hex_decode,
    jid_bare,
    lua_tonumber,
    lua_tostring,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import DecodeError, EncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.luadata import BoolKey
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element

from prosody_oracle import PROSODY_SRC, canon, run_lua

# Loads mod_storage_xep0227 with stub `module`/`prosody` globals (one driver per host), runs the
# operations given as canon on stdin, writes the results as canon. Stanzas go in as XML text and
# come out as preserialized tables.
HARNESS = f"""
local st = require "util.stanza"
local xml_parse = require "util.xml".parse
local input = canon.decode(io.read("a"))
prosody = {{ paths = {{ data = input.path }} }}
local drivers = {{}}
local function driver(host)
  if drivers[host] then return drivers[host] end
  local m = {{ host = host }}
  function m:log() end
  function m:get_option_string(name, d) if name == "password_hash" then return input.password_hash or d end return d end
  function m:require(name)
    return assert(loadfile({PROSODY_SRC + "/modules/mod_pubsub/"!r} .. name .. ".lib.lua"))()
  end
  function m:provides(_, d) drivers[host] = d end
  local env = setmetatable({{ module = m, prosody = prosody }}, {{ __index = _G }})
  assert(loadfile({PROSODY_SRC + "/modules/mod_storage_xep0227.lua"!r}, "t", env))()
  return drivers[host]
end
local out = {{}}
for i, op in ipairs(input.ops) do
  local d = driver(op.host)
  if op.op == "set" then
    out[i] = assert(assert(d:open(op.store)):set(op.user, op.value))
  elseif op.op == "get" then
    out[i] = {{ value = assert(d:open(op.store)):get(op.user) }}
  elseif op.op == "append" then
    local ar = assert(d:open(op.store, "archive"))
    out[i] = assert(ar:append(op.user, op.key, assert(xml_parse(op.xml)), op.when, op.with))
  elseif op.op == "find" then
    local items = {{}}
    local iter = assert(d:open(op.store, "archive")):find(op.user)
    for key, value, when, with in iter or function() end do
      items[#items + 1] = {{ key = key, value = st.preserialize(value), when = when, with = with }}
    end
    out[i] = items
  elseif op.op == "users" then
    local users = {{}}
    for user in assert(d:open(op.store)):users() do users[user] = true end
    out[i] = users
  elseif op.op == "stores" then
    local stores = {{}}
    for store in d:stores(true) do stores[store] = true end
    out[i] = stores
  elseif op.op == "open" then
    local ok, err = d:open(op.store, op.kind)
    out[i] = {{ ok = ok ~= nil, err = err }}
  end
end
io.write(canon.encode(out))
"""

HOST = "example.com"
HOST2 = "müc.example"
USERS = ["alice", "jürgen", "雪", "o'brien"]
SCRAM = {"stored_key": "00ff10", "server_key": "abcdef0123", "salt": "s\x00ält", "iteration_count": 4096}
ROSTER = {
    BoolKey(False): {"version": "7", "pending": {}},
    "bob@example.net": {
        "jid": "bob@example.net",
        "name": "Bob 🙂",
        "subscription": "both",
        "groups": {"Friends": True, "Ünïcode": True, "": True},
    },
    "carol@example.net": {"jid": "carol@example.net", "subscription": "none", "ask": "subscribe", "groups": {}},
}
VCARD = Element("vCard", {"xmlns": "vcard-temp"}, [Element("FN", {}, ["Jürgen & <co>"]), Element("NICKNAME", {}, [])])
BOOKMARKS = Element(
    "storage", {"xmlns": "storage:bookmarks"}, [Element("conference", {"jid": "a@muc", "autojoin": "1"})]
)
NOTES = Element("storage", {"xmlns": "storage:rosternotes"}, [Element("note", {"jid": "b@x"}, ["hi"])])
PEP = {
    "urn:xmpp:avatar:data": {
        "name": "urn:xmpp:avatar:data",
        "config": {"max_items": 1, "access_model": "presence", "persist_items": True, "title": "Avatar"},
        "affiliations": {"jürgen@example.com": "owner"},
        "subscribers": {},
    },
    "urn:xmpp:microblog:0": {
        "name": "urn:xmpp:microblog:0",
        "config": {"max_items": "max", "notify_retract": False, "notification_type": "normal"},
        "affiliations": {},
        "subscribers": {},
    },
}


@pytest.fixture(autouse=True, scope="module")
def _no_fsync():
    """fsync makes no difference a test can see but costs milliseconds."""
    with mock.patch.object(fsutil.os, "fsync"):
        yield


def reparsed(element: Element) -> dict[Any, Any]:
    """A stanza as any XML store gives it back: children carry their inherited xmlns."""
    return Element.from_xml(element.to_xml(), "test").preserialize()


def value_canon(value: Any) -> bytes:
    """What the harness returns for a get: ``{value = v}``, an empty table when v is nil."""
    return canon({} if value is None else {"value": value})


def lua_list(items: list[Any]) -> dict[int, Any]:
    return {i + 1: v for i, v in enumerate(items)}


def prosody(path: os.PathLike[str] | str, ops: list[dict[str, Any]], password_hash: str | None = None) -> list[bytes]:
    """Run operations through Prosody's module; the canon of each result, in order."""
    payload = {"path": str(path), "ops": lua_list(ops), "password_hash": password_hash}
    out = run_lua(HARNESS, stdin=canon(payload))
    # The top-level canon table is {i: result}; split it back into per-op canon values by
    # re-encoding: decoding canon in Python is not needed when each op is compared alone.
    return _split(out, len(ops))


def _split(out: bytes, count: int) -> list[bytes]:
    """The values of a canon-encoded sequence table (``t<n>{i<k>;<v>...}``), in key order."""
    assert out.startswith(b"t"), out[:50]
    pos = out.index(b"{") + 1
    values: dict[int, bytes] = {}
    while out[pos : pos + 1] != b"}":
        key_end = out.index(b";", pos)
        key = int(out[pos + 1 : key_end])
        end = _skip(out, key_end + 1)
        values[key] = out[key_end + 1 : end]
        pos = end
    return [values.get(i + 1, canon(None)) for i in range(count)]


def _skip(data: bytes, pos: int) -> int:
    """The end of the canon value starting at pos."""
    tag = data[pos : pos + 1]
    if tag in (b"N", b"T", b"F"):
        return pos + 1
    if tag in (b"i", b"f"):
        return data.index(b";", pos) + 1
    if tag == b"s":
        colon = data.index(b":", pos)
        return colon + 1 + int(data[pos + 1 : colon])
    assert tag == b"t", data[pos : pos + 20]
    pos = data.index(b"{", pos) + 1
    while data[pos : pos + 1] != b"}":
        pos = _skip(data, _skip(data, pos))
    return pos + 1


def get(host: str, store: str, user: str) -> dict[str, Any]:
    return {"op": "get", "host": host, "store": store, "user": user}


def find(host: str, store: str, user: str) -> dict[str, Any]:
    return {"op": "find", "host": host, "store": store, "user": user}


def items_canon(items: list[ArchiveItem]) -> bytes:
    return canon(
        lua_list(
            [
                {
                    "key": i.key,
                    "value": i.value.preserialize(),
                    "when": i.when,
                    **({"with": i.with_} if i.with_ else {}),
                }
                for i in items
            ]
        )
    )


def message(i: int, to: str, sender: str) -> Element:
    body = Element("body", {}, [f"hello {i} ü"])
    return Element("message", {"to": to, "from": sender, "type": "chat", "id": f"m{i}"}, [body])


def avatar(i: int) -> Element:
    data = Element("data", {"xmlns": "urn:xmpp:avatar:data"}, [f"QUFB{i}"])
    return Element("item", {"xmlns": "http://jabber.org/protocol/pubsub", "id": f"it{i}"}, [data])


def full_data(user: str, host: str) -> tuple[dict[str, Any], dict[str, list[ArchiveItem]]]:
    """Every mapped store for one user: keyval values and archive items."""
    jid = f"{user}@{host}"
    keyval = {
        "accounts": SCRAM,
        "roster": ROSTER,
        "vcard": VCARD.preserialize(),
        "private": {
            "storage:storage:bookmarks": BOOKMARKS.preserialize(),
            "storage:storage:rosternotes": NOTES.preserialize(),
        },
        "pep": PEP,
    }
    archives = {
        "archive": [
            ArchiveItem("k1", message(1, "bob@example.net", f"{jid}/res"), 1700000000, "bob@example.net"),
            ArchiveItem("k2", message(2, jid, "bob@example.net/phone"), 1700000100, "bob@example.net"),
        ],
        "pep_urn:xmpp:avatar:data": [ArchiveItem(f"it{i}", avatar(i), 0, jid) for i in (1, 2)],
    }
    return keyval, archives


def write_ops(host: str, user: str) -> list[dict[str, Any]]:
    keyval, archives = full_data(user, host)
    ops = [{"op": "set", "host": host, "store": s, "user": user, "value": v} for s, v in keyval.items()]
    for store, items in archives.items():
        ops += [
            {
                "op": "append",
                "host": host,
                "store": store,
                "user": user,
                "key": i.key,
                "xml": i.value.to_xml(),
                "when": i.when,
                "with": i.with_,
            }
            for i in items
        ]
    return ops


def read_ops(host: str, user: str) -> list[dict[str, Any]]:
    keyval, archives = full_data(user, host)
    return [get(host, s, user) for s in keyval] + [find(host, s, user) for s in archives]


def ours_read(backend: Xep0227Backend, host: str, user: str) -> list[bytes]:
    keyval, archives = full_data(user, host)
    out = [value_canon(backend.keyval_get(host, s, user)) for s in keyval]
    return out + [items_canon(list(backend.archive_items(host, s, user))) for s in archives]


# -- reading what Prosody wrote -------------------------------------------------------------------


def test_reads_what_prosody_writes(tmp_path):
    ops = [op for host in (HOST, HOST2) for user in USERS for op in write_ops(host, user)]
    reads = [op for host in (HOST, HOST2) for user in USERS for op in read_ops(host, user)]
    listing = [{"op": "users", "host": HOST, "store": "roster"}, {"op": "stores", "host": HOST}]
    results = prosody(tmp_path, ops + reads + listing)[len(ops) :]
    backend = Xep0227Backend({"path": str(tmp_path)})
    ours = [c for host in (HOST, HOST2) for user in USERS for c in ours_read(backend, host, user)]
    assert ours == results[: len(reads)]
    # Prosody's listing: every user file of the host; every store it maps, once any user has data.
    assert results[-2] == canon(dict.fromkeys(USERS, True))
    assert sorted(backend.keyval_users(HOST, "roster")) == sorted(USERS)
    assert sorted(backend.archive_users(HOST2, "pep_urn:xmpp:avatar:data")) == sorted(USERS)
    assert results[-1] == canon(dict.fromkeys({s for s, _kind in backend.stores(HOST)}, True))
    assert sorted(backend.hosts()) == sorted([HOST, HOST2])
    assert dict(backend.stores(HOST))["pep_urn:xmpp:avatar:data"] == "archive"
    assert backend.warnings == []


def test_reads_prosody_values_in_the_lua_model(tmp_path):
    """Beyond equality with Prosody's reading: the values themselves, as mod_auth/mod_roster keep them."""
    prosody(tmp_path, write_ops(HOST, "jürgen"))
    backend = Xep0227Backend({"path": str(tmp_path)})
    assert backend.keyval_get(HOST, "accounts", "jürgen") == SCRAM
    assert backend.keyval_get(HOST, "roster", "jürgen") == ROSTER
    assert backend.keyval_get(HOST, "vcard", "jürgen") == reparsed(VCARD)
    items = list(backend.archive_items(HOST, "archive", "jürgen"))
    peer = "bob@example.net"
    assert [(i.key, i.when, i.with_) for i in items] == [("k1", 1700000000, peer), ("k2", 1700000100, peer)]
    assert items[0].value.attr["xmlns"] == "jabber:client"
    pep_items = list(backend.archive_items(HOST, "pep_urn:xmpp:avatar:data", "jürgen"))
    assert [(i.key, i.when, i.with_) for i in pep_items] == [
        ("it1", 0, "jürgen@example.com"),
        ("it2", 0, "jürgen@example.com"),
    ]
    assert os.listdir(tmp_path) == ["jürgen@example.com.xml"]


# -- Prosody reading what we wrote ----------------------------------------------------------------


def ours_write(backend: Xep0227Backend, host: str, user: str) -> None:
    keyval, archives = full_data(user, host)
    for store, value in keyval.items():
        backend.keyval_set(host, store, user, value)
    for store, items in archives.items():
        backend.archive_write(host, store, user, items)


def test_prosody_reads_what_we_write(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path)})
    for host in (HOST, HOST2):
        for user in USERS:
            ours_write(backend, host, user)
    reads = [op for host in (HOST, HOST2) for user in USERS for op in read_ops(host, user)]
    results = prosody(tmp_path, reads)
    assert [c for host in (HOST, HOST2) for user in USERS for c in ours_read(backend, host, user)] == results
    # And what was read is what was written (the vCard's children gain their inherited xmlns).
    assert backend.keyval_get(HOST, "accounts", "雪") == SCRAM
    assert backend.keyval_get(HOST, "roster", "雪") == ROSTER
    assert backend.keyval_get(HOST, "private", "雪")["storage:storage:bookmarks"] == reparsed(BOOKMARKS)
    assert backend.keyval_get(HOST, "pep", "雪")["urn:xmpp:avatar:data"]["config"] == {
        **PEP["urn:xmpp:avatar:data"]["config"],
        # the form's defaults, which Prosody writes for absent booleans
        **{"notify_items": True, "include_payload": True, "notify_delete": True, "notify_retract": True},
    }
    for name in os.listdir(tmp_path):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o640  # password hashes: no world bits


def test_writing_one_store_keeps_the_others(tmp_path):
    prosody(tmp_path, write_ops(HOST, "alice"))
    before = prosody(tmp_path, read_ops(HOST, "alice"))
    backend = Xep0227Backend({"path": str(tmp_path)})
    new_roster = {
        BoolKey(False): {"version": "8", "pending": {"eve@x": True}},
        "dan@x": {"subscription": "to", "groups": {}},
    }
    backend.keyval_set(HOST, "roster", "alice", new_roster)
    backend.archive_write(
        HOST, "archive", "alice", [ArchiveItem("k3", message(3, "z@x", "alice@example.com"), 5, "z@x")]
    )
    after = prosody(tmp_path, [*read_ops(HOST, "alice"), get(HOST, "roster", "alice")])
    assert after[0] == before[0] and after[2:5] == before[2:5] and after[6] == before[6]  # all but roster, archive
    assert after[-1] == canon(
        {
            "value": {
                BoolKey(False): {"version": "8", "pending": {"eve@x": True}},
                "dan@x": {"jid": "dan@x", "subscription": "to", "groups": {}},
            }
        }
    )
    keys = [i.key for i in backend.archive_items(HOST, "archive", "alice")]
    assert keys == ["k1", "k2", "k3"]


def test_accounts_forms_and_replacement(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path)})
    backend.keyval_set(HOST, "accounts", "a", {"password": "sécret"})
    backend.keyval_set(HOST, "accounts", "b", {"created": 1700000000, "ratio": 1.5, "note": "x"})
    backend.keyval_set(HOST, "accounts", "c", {"password": "old"})
    backend.keyval_set(HOST, "accounts", "c", SCRAM)  # a second set replaces (Prosody would append)
    backend.keyval_set(HOST, "accounts", "c", {**SCRAM, "salt": "new"})
    results = prosody(tmp_path, [get(HOST, "accounts", u) for u in "abc"])
    assert results == [
        value_canon({"password": "sécret"}),
        value_canon({"created": "1700000000", "ratio": "1.5", "note": "x"}),  # attributes: Lua's tostring
        value_canon({**SCRAM, "salt": "new"}),
    ]
    assert [value_canon(backend.keyval_get(HOST, "accounts", u)) for u in "abc"] == results
    with open(tmp_path / "c@example.com.xml", encoding="utf-8") as f:
        assert f.read().count("<scram-credentials") == 1


def test_password_hash_names_the_mechanism(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path), "password_hash": "SHA-256"})
    backend.keyval_set(HOST, "accounts", "a", SCRAM)
    sha256, sha1 = (
        prosody(tmp_path, [get(HOST, "accounts", "a")], "SHA-256")[0],
        prosody(tmp_path, [get(HOST, "accounts", "a")])[0],
    )
    assert sha256 == value_canon(SCRAM)
    assert sha1 == value_canon({})  # Prosody with SHA-1 ignores SCRAM-SHA-256 credentials
    sha1_backend = Xep0227Backend({"path": str(tmp_path)})
    assert sha1_backend.keyval_get(HOST, "accounts", "a") == {}
    assert "SCRAM-SHA-256" in sha1_backend.warnings[0]
    assert list(sha1_backend.keyval_users(HOST, "accounts")) == []


def test_removing_data(tmp_path):
    prosody(tmp_path, write_ops(HOST, "alice"))
    backend = Xep0227Backend({"path": str(tmp_path)})
    backend.keyval_set(HOST, "accounts", "alice", None)  # Prosody deletes the whole file; we keep the rest
    backend.keyval_set(HOST, "vcard", "alice", {})
    results = prosody(tmp_path, [get(HOST, s, "alice") for s in ("accounts", "vcard", "roster")])
    assert results[:2] == [value_canon({}), value_canon(None)]
    assert results[2] == value_canon(ROSTER)
    for store in ("roster", "private", "pep"):
        backend.keyval_set(HOST, store, "alice", None)
    assert os.path.exists(tmp_path / "alice@example.com.xml")  # archives remain
    backend.keyval_set(HOST, "roster", "nobody", None)
    assert not os.path.exists(tmp_path / "nobody@example.com.xml")


# -- deliberate differences -----------------------------------------------------------------------


def test_pending_subscriptions_survive(tmp_path):
    """Prosody writes pending subscriptions it cannot read back; we read them, and write a form it reads."""
    roster = {
        BoolKey(False): {"version": "1", "pending": {"eve@x": True}},
        "bob@x": {"subscription": "none", "groups": {}},
    }
    prosody(
        tmp_path,
        [
            {"op": "set", "host": HOST, "store": "accounts", "user": "p", "value": {"password": "x"}},
            {"op": "set", "host": HOST, "store": "roster", "user": "p", "value": roster},
        ],
    )
    prosody_read = prosody(tmp_path, [get(HOST, "roster", "p")])[0]
    assert b"eve@x" not in prosody_read  # Prosody's own loss
    backend = Xep0227Backend({"path": str(tmp_path)})
    expected = {BoolKey(False): roster[BoolKey(False)], "bob@x": {"jid": "bob@x", "subscription": "none", "groups": {}}}
    assert backend.keyval_get(HOST, "roster", "p") == expected
    backend.keyval_set(HOST, "roster", "q", roster)
    assert prosody(tmp_path, [get(HOST, "roster", "q")])[0] == value_canon(expected)
    # Without items Prosody reads no pending subscription at all (it looks for them per item); we do.
    alone = {BoolKey(False): {"version": "2", "pending": {"eve@x": True}}}
    backend.keyval_set(HOST, "roster", "r", alone)
    assert backend.keyval_get(HOST, "roster", "r") == alone
    assert prosody(tmp_path, [get(HOST, "roster", "r")])[0] == value_canon(
        {BoolKey(False): {"version": "2", "pending": {}}}
    )


def test_pep_subscribers(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path)})
    nodes = {"n": {"config": {}, "affiliations": {}, "subscribers": {"s@x": True}}}
    backend.keyval_set(HOST, "pep", "u", nodes)
    assert prosody(tmp_path, [get(HOST, "pep", "u")])[0] == canon(
        {"value": {"n": backend.keyval_get(HOST, "pep", "u")["n"]}}
    )
    assert backend.keyval_get(HOST, "pep", "u")["n"]["subscribers"] == {"s@x": True}
    with pytest.raises(Xep0227Error, match=r"subscriber 's@x' has subscription options"):
        backend.keyval_set(HOST, "pep", "u", {"n": {"config": {}, "subscribers": {"s@x": {"include_body": True}}}})
    backend.keyval_set(HOST, "pep", "u", {"n": {"config": {"bogus": 1}}})
    assert "config 'bogus' has no field in the form" in backend.warnings[-1]


def test_archive_write_replaces_keys_and_warns_of_lost_peers(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path)})
    jid = "u@example.com"
    backend.archive_write(
        HOST,
        "archive",
        "u",
        [ArchiveItem("a", message(1, "x@y", jid), 10, "x@y"), ArchiveItem("b", message(2, "x@y", jid), 20)],
    )
    backend.archive_write(HOST, "archive", "u", [ArchiveItem("a", message(3, "room@muc", jid), 30, "other@z")])
    items = prosody(tmp_path, [find(HOST, "archive", "u")])[0]
    assert items == items_canon(list(backend.archive_items(HOST, "archive", "u")))
    assert [(i.key, i.when, i.with_) for i in backend.archive_items(HOST, "archive", "u")] == [
        ("b", 20, "x@y"),
        ("a", 30, "room@muc"),
    ]
    assert "reads back with 'room@muc'" in backend.warnings[0]


# -- what the format cannot hold ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("store", "kind"),
    [
        ("offline", "archive"),
        ("blocklist", "keyval"),
        ("muc_log", "archive"),
        ("archive", "keyval"),
        ("pep_n", "keyval"),
        ("roster", "archive"),
    ],
)
def test_unsupported_stores(tmp_path, store, kind):
    backend = Xep0227Backend({"path": str(tmp_path)})
    pattern = rf"store '{store}' \({kind}\) of host 'example.com', user 'jürgen' cannot be held"
    with pytest.raises(Xep0227Error, match=pattern):
        if kind == "keyval":
            backend.keyval_set(HOST, store, "jürgen", {"x": True})
        else:
            backend.archive_write(HOST, store, "jürgen", [ArchiveItem("k", message(1, "a@b", "c@d"), 1)])
    with pytest.raises(Xep0227Error, match=pattern):
        getter = backend.keyval_get if kind == "keyval" else backend.archive_items
        list(getter(HOST, store, "jürgen") or ())
    if store in ("offline", "blocklist", "muc_log"):
        result = prosody(tmp_path, [{"op": "open", "host": HOST, "store": store, "kind": kind}])[0]
        assert result == canon({"ok": False, "err": "unsupported-datastore"})


def test_host_level_data(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path)})
    assert backend.keyval_get(HOST, "roster", None) is None
    assert list(backend.archive_items(HOST, "archive", None)) == []
    backend.keyval_set(HOST, "roster", None, None)
    with pytest.raises(Xep0227Error, match=r"host-level data of store .accounts., host .example\.com."):
        backend.keyval_set(HOST, "accounts", None, {"password": "x"})
    with pytest.raises(Xep0227Error, match=r"host-level archive .archive. of host .example\.com."):
        backend.archive_write(HOST, "archive", None, [ArchiveItem("k", message(1, "a@b", "c@d"), 1)])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("user", ["a@b", "x/y", "", "nul\x00"])
def test_names_that_cannot_be_files(tmp_path, user):
    backend = Xep0227Backend({"path": str(tmp_path)})
    with pytest.raises(Xep0227Error, match="user"):
        backend.keyval_set(HOST, "accounts", user, {"password": "x"})
    assert os.listdir(tmp_path) == []


def test_values_that_cannot_be_written(tmp_path):
    backend = Xep0227Backend({"path": str(tmp_path)})
    with pytest.raises(EncodeError, match=r"iteration_count 4096\.5 is not an integer"):
        backend.keyval_set(HOST, "accounts", "u", {**SCRAM, "iteration_count": 4096.5})
    with pytest.raises(EncodeError, match="account property 'flag' True is not a string"):
        backend.keyval_set(HOST, "accounts", "u", {"flag": True})
    with pytest.raises(EncodeError, match="not a vcard-temp vCard"):
        backend.keyval_set(HOST, "vcard", "u", {"name": "vCard", "attr": {}})
    with pytest.raises(EncodeError, match="cannot be written as XML that Prosody can read back"):
        backend.keyval_set(HOST, "accounts", "u", {"password": "bad\x01"})
    assert os.listdir(tmp_path) == []


# -- malformed files ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<server-data xmlns='urn:xmpp:pie:0'><host jid='example.com'><user name='u'>", "not well-formed"),
        ("<other/>", "not a XEP-0227 user file"),
        ("<server-data xmlns='urn:xmpp:pie:0'><host/></server-data>", "not a XEP-0227 user file"),
        ("<!DOCTYPE x><server-data/>", "DOCTYPE"),
    ],
)
def test_malformed_file_names_the_file(tmp_path, text, message):
    path = tmp_path / "u@example.com.xml"
    path.write_text(text, encoding="utf-8")
    backend = Xep0227Backend({"path": str(tmp_path)})
    with pytest.raises(DecodeError, match=message) as info:
        backend.keyval_get(HOST, "roster", "u")
    assert str(path) in str(info.value)
    with pytest.raises(DecodeError, match=message):
        list(backend.keyval_users(HOST, "roster"))
    with pytest.raises(DecodeError, match=message):
        backend.keyval_set(HOST, "roster", "u", None)  # never overwrite what could not be read
    assert path.read_text(encoding="utf-8") == text


def test_bad_items_name_the_file(tmp_path):
    path = tmp_path / "u@example.com.xml"
    path.write_text(
        "<server-data xmlns='urn:xmpp:pie:0'><host jid='example.com'><user name='u'>"
        "<archive xmlns='urn:xmpp:pie:0#mam'>"
        "<result xmlns='urn:xmpp:mam:2' id='k'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client'/>"
        "</forwarded></result></archive><scram-credentials xmlns='urn:xmpp:pie:0#scram' mechanism='SCRAM-SHA-1'>"
        "<salt>!!</salt></scram-credentials></user></host></server-data>",
        encoding="utf-8",
    )
    backend = Xep0227Backend({"path": str(tmp_path)})
    with pytest.raises(
        DecodeError, match=r"u@example.com.xml .*item 1: archive <result> has no parsable <delay stamp>"
    ):
        list(backend.archive_items(HOST, "archive", "u"))
    with pytest.raises(DecodeError, match=r"u@example.com.xml .*no valid base64 <server-key>"):
        backend.keyval_get(HOST, "accounts", "u")


# -- files ----------------------------------------------------------------------------------------


def test_modes_and_leftovers(tmp_path):
    data = tmp_path / "data"
    backend = Xep0227Backend({"path": str(data)})
    backend.keyval_set(HOST, "accounts", "a", {"password": "x"})
    assert stat.S_IMODE(os.stat(data).st_mode) == fsutil.DEFAULT_DIR_MODE & ~_umask()
    os.chmod(data / "a@example.com.xml", 0o664)
    leftover = data / f"{fsutil.TEMP_PREFIX}999999999-abc{fsutil.TEMP_SUFFIX}"
    leftover.write_bytes(b"partial")
    other = Xep0227Backend({"path": str(data)})
    other.keyval_set(HOST, "roster", "a", ROSTER)
    other.keyval_set(HOST, "accounts", "b", {"password": "x"})
    assert stat.S_IMODE(os.stat(data / "a@example.com.xml").st_mode) == 0o660  # kept, minus "others"
    assert stat.S_IMODE(os.stat(data / "b@example.com.xml").st_mode) == 0o660  # like its sibling
    assert not leftover.exists()
    assert sorted(other.hosts()) == [HOST]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_files_that_are_not_user_files_are_skipped(tmp_path):
    (tmp_path / "example.com.xml").write_text("<x/>", encoding="utf-8")
    (tmp_path / "@example.com.xml").write_text("<x/>", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("x", encoding="utf-8")
    (tmp_path / f"{fsutil.TEMP_PREFIX}1-a{fsutil.TEMP_SUFFIX}").write_text("x", encoding="utf-8")
    backend = Xep0227Backend({"path": str(tmp_path)})
    assert list(backend.hosts()) == []
    assert list(backend.keyval_users(HOST, "accounts")) == []
    assert "@example.com.xml: no user or host" in backend.warnings[0]
    assert list(Xep0227Backend({"path": str(tmp_path / "missing")}).hosts()) == []


# -- helpers mirroring Prosody's, checked against it ------------------------------------------------

HELPER_CHECK = """
local b64 = require "util.encodings".base64
local hex = require "util.hex"
local jid = require "util.jid"
local out = {}
for i, s in ipairs(input.strings) do
  out[i] = { b64 = b64.decode(s), hex = hex.decode(s), bare = jid.bare(s), num = tonumber(s) }
end
for i, n in ipairs(input.numbers) do out[#input.strings + i] = { str = tostring(n) } end
io.write(canon.encode(out))
"""


def test_helpers_match_prosody():
    collected: list[str] = []
    numbers: list[Any] = [1, -5, 0.5, 1e20, 1e100, 123456789012345.0, -0.0, float("inf"), 2.0**63, 7.0, 1 / 3]
    alphabet = st.sampled_from([*list("QUJDRAa09+/= \n\t@/.xX-eE!\x00ü"), "0x1p4", "1e", "fF"])

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(alphabet, max_size=12).map("".join))
    def collect(text: str) -> None:
        collected.append(text)

    collect()
    edges = ["  42 ", "0x10", "-0x10", "1.5e3", ".5", "5.", "0x.8p1", "1e400", "9223372036854775808", "a@b/c", "a@b@c"]
    strings = [*collected, *edges, "/r"]
    payload = {"strings": lua_list(strings), "numbers": lua_list(numbers)}
    out = _split(
        run_lua("local input = canon.decode(io.read('a'))\n" + HELPER_CHECK, stdin=canon(payload)),
        len(strings) + len(numbers),
    )
    ours = []
    for s in strings:
        raw_b64 = b64_decode(s)
        ours.append(
            canon(
                {
                    k: v
                    for k, v in {
                        "b64": None if raw_b64 is None else raw_b64.decode("utf-8", "surrogateescape"),
                        "hex": hex_decode(s).decode("utf-8", "surrogateescape"),
                        "bare": jid_bare(s),
                        "num": lua_tonumber(s),
                    }.items()
                    if v is not None
                }
            )
        )
    ours += [canon({"str": lua_tostring(n)}) for n in numbers]
    assert ours == out


# -- property: random data written by us is read by Prosody as we read it ---------------------------

names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=8)
attr_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8)
rosters = st.dictionaries(
    names.map(lambda n: n.replace("/", "") + "@ex.org"),
    st.fixed_dictionaries(
        {
            "subscription": st.sampled_from(["none", "to", "from", "both"]),
            "groups": st.dictionaries(attr_text, st.just(True), max_size=3),
        },
        optional={"name": attr_text, "ask": st.just("subscribe")},
    ),
    min_size=1,  # Prosody reads pending subscriptions only beside items: test_pending_subscriptions_survive
    max_size=3,
).flatmap(
    lambda items: st.fixed_dictionaries(
        {
            BoolKey(False): st.fixed_dictionaries(
                {"pending": st.dictionaries(names, st.just(True), max_size=2)},
                optional={"version": st.integers(0, 10**6) | attr_text},
            )
        }
    ).map(lambda meta: {**meta, **items})
)
accounts = st.one_of(
    st.fixed_dictionaries(
        {
            "stored_key": st.binary(max_size=20).map(bytes.hex),
            "server_key": st.binary(max_size=20).map(bytes.hex),
            "salt": st.binary(max_size=12).map(lambda b: b.decode("utf-8", "surrogateescape")),
            "iteration_count": st.integers(1, 10**6),
        }
    ),
    st.fixed_dictionaries({"password": attr_text}),
    st.dictionaries(
        st.from_regex(r"[a-z_][a-z0-9_]{0,6}", fullmatch=True).filter(lambda k: k != "password"),
        attr_text | st.integers(-(10**9), 10**9),
        min_size=1,
        max_size=3,
    ),
)
private = st.dictionaries(
    st.sampled_from(["a", "b", "c"]),
    st.builds(lambda t: t, attr_text),
    min_size=1,
    max_size=3,
).map(
    lambda d: {
        f"storage:urn:x:{k}": Element("storage", {"xmlns": f"urn:x:{k}"}, [v] if v else []).preserialize()
        for k, v in d.items()
    }
)


def test_property_prosody_reads_what_we_write(tmp_path):
    cases: list[tuple[str, dict[str, Any]]] = []
    backend = Xep0227Backend({"path": str(tmp_path)})

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(accounts, rosters, private)
    def write(account: dict[str, Any], roster: dict[Any, Any], priv: dict[str, Any]) -> None:
        user = f"u{len(cases)}ü"
        for store, value in (("accounts", account), ("roster", roster), ("private", priv)):
            backend.keyval_set(HOST, store, user, value)
        cases.append((user, {"accounts": account, "roster": roster}))

    write()
    ops = [get(HOST, store, user) for user, _value in cases for store in ("accounts", "roster", "private")]
    results = prosody(tmp_path, ops)
    ours = [value_canon(backend.keyval_get(HOST, op["store"], op["user"])) for op in ops]
    assert ours == results
    for user, values in cases:  # and our reading gives the data back, in Prosody's normal form
        assert backend.keyval_get(HOST, "accounts", user) == {
            k: v if isinstance(v, str) or k == "iteration_count" else str(v) for k, v in values["accounts"].items()
        }
        roster = values["roster"]
        meta = roster[BoolKey(False)]
        expected = {BoolKey(False): {**meta, **({"version": str(meta["version"])} if "version" in meta else {})}}
        expected.update({jid: {"jid": jid, **item} for jid, item in roster.items() if jid != BoolKey(False)})
        assert backend.keyval_get(HOST, "roster", user) == expected
