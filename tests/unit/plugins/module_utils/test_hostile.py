# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hostile and broken input: Lua data files that are wrong, endless, greedy or try to escape the
sandbox; values a store should not hold; host, user and store names built to escape a directory
or to be read as SQL. Each fails alone, with its name in the reason, and touches nothing else."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.compare import same_value
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    DRIVERS,
    fresh_database,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.reliability import (
    HOST,
    assert_same_data,
    make_corpus,
    tree_hashes,
)

MARKER = "MARKER"  # an escape would create this file, named by its absolute path in each case

# Keyval files (roster store): each is a user of its own, named after the case.
HOSTILE_DAT = {
    "syntax": b"return { a = 1,, };\n",
    "loop": b"while true do end\n",
    "recursion": b"local function f(n) return f(n + 1) + 1 end\nreturn f(1)\n",
    "hugestring": b'return ("x"):rep(2^40);\n',
    "alloc": b'local t = {} for i = 1, 1e9 do t[i] = ("x"):rep(64) .. i end return t\n',
    "deepsource": b"return " + b"{" * 5000 + b"}" * 5000 + b";\n",
    "deepbuilt": b"local t = {} for i = 1, 100000 do t = { t } end return t\n",
    "cycle": b"local t = {} t.self = t return t\n",
    "function": b"return { f = function() end }\n",
    "bytecode": b"\x1bLuaT\x00\x19\x93\r\n\x1a\n\x04\x08\x08xV\x00\x00",
    "os": b'os.execute("touch @M") return {}\n',
    "io": b'io.open("@M", "w"):write("x") return {}\n',
    "require": b'require("os").execute("touch @M") return {}\n',
    "load": b'load("os.execute([[touch @M]])")() return {}\n',
    "loadstring": b'loadstring("os.execute([[touch @M]])")() return {}\n',
    "dofile": b'dofile("/etc/passwd") return {}\n',
    "dump": b"return { d = string.dump(function() end) }\n",
    "strdump": b'return { d = (""):dump(function() end) }\n',
    "strformat": b'return { s = ("%s"):format("x") }\n',
    "strgsub": b'return { s = ("aaaa"):gsub("a", "b") }\n',
    "debug": b"debug.sethook() while true do end\n",
    "getmetatable": b'getmetatable("").__index = _G return {}\n',
    "setmetatable": b'setmetatable({}, { __gc = function() os.execute("touch @M") end }) return {}\n',
    "rawset": b'rawset(_ENV, "x", 1) return {}\n',
    "collectgarbage": b'collectgarbage("stop") return {}\n',
    "env": b'return { x = _ENV.os.execute("touch @M") }\n',
    "package": b'package.loadlib("libc.so.6", "system")("touch @M") return {}\n',
    "error": b"error(setmetatable({}, { __tostring = function() return 1 end }))\n",
    "coroutine": b"local c = coroutine.wrap(function() while true do end end) c() return {}\n",
}
# Archive files: a list that loops, one that escapes, and items that are not stanzas.
HOSTILE_LIST = {
    "listloop": b'item({ attr = {}, name = "message", key = "a", when = 1 })\nwhile true do end\n',
    "listescape": b'item(os.execute("touch @M"))\n',
    "notastanza": b'item({ key = "k", when = 1, with = "a@b", name = "message", attr = "x" });\n',
    "stringitem": b'item("just a string");\n',
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_corpus(str(tmp_path_factory.mktemp("hostile") / "data"), 8, 3)


@pytest.fixture
def hostile(corpus: str, tmp_path: Any) -> dict[str, Any]:
    """The corpus plus one hostile file per case, each the data of a user named after it."""
    path = str(tmp_path / "source")
    shutil.copytree(corpus, path)
    marker = str(tmp_path / MARKER)
    for store, ext, cases in (("roster", "dat", HOSTILE_DAT), ("archive", "list", HOSTILE_LIST)):
        for name, text in cases.items():
            with open(os.path.join(path, "example%2eorg", store, f"{name}.{ext}"), "wb") as f:
                f.write(text.replace(b"@M", marker.encode()))
    return {"type": "internal", "path": path}


def _file(source: dict[str, Any], store: str, name: str, ext: str) -> str:
    return os.path.join(source["path"], "example%2eorg", store, f"{name}.{ext}")


@pytest.mark.parametrize("case", sorted(HOSTILE_DAT) + sorted(HOSTILE_LIST))
def test_each_hostile_file_fails_fast_with_its_name(hostile: dict[str, Any], tmp_path: Any, case: str):
    backend = InternalBackend(hostile)
    started = time.monotonic()
    with pytest.raises(ProsodyMigrateError) as caught:
        if case in HOSTILE_DAT:
            backend.keyval_get(HOST, "roster", case)
        else:
            list(backend.archive_items(HOST, "archive", case))
    assert time.monotonic() - started < 10
    ext, store = ("dat", "roster") if case in HOSTILE_DAT else ("list", "archive")
    assert _file(hostile, store, case, ext) in str(caught.value)
    assert not os.path.exists(tmp_path / MARKER)


def test_hostile_files_through_the_engine(hostile: dict[str, Any], tmp_path: Any):
    dest = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "dest.sqlite")}
    before = tree_hashes(hostile["path"])
    outside = sorted(os.listdir(tmp_path))
    report = run_migration(hostile, dest, Options(keep_going=True))
    failed = {(f.store, f.user): f.reason for f in report.failures}
    wanted = {("roster", c) for c in HOSTILE_DAT} | {("archive", c) for c in HOSTILE_LIST}
    assert set(failed) == wanted
    for store, user in wanted:
        ext = "dat" if store == "roster" else "list"
        assert _file(hostile, store, user, ext) in failed[store, user]
    # Every other user migrated, and nothing was written anywhere else.
    assert report.store_result(HOST, "roster", "keyval").users_created == 8
    assert report.store_result(HOST, "archive", "archive").users_created == 8
    assert not os.path.exists(tmp_path / MARKER)
    assert tree_hashes(hostile["path"]) == before
    assert sorted(os.listdir(tmp_path)) == sorted([*outside, "dest.sqlite"])
    # Without the hostile files, source and destination hold the same data.
    for case in HOSTILE_DAT:
        os.unlink(_file(hostile, "roster", case, "dat"))
    for case in HOSTILE_LIST:
        os.unlink(_file(hostile, "archive", case, "list"))
    assert_same_data(hostile, dest)


# values a store should not hold -----------------------------------------------------------------
def _sqlite_source(path: str) -> dict[str, Any]:
    definition = {"type": "sql", "driver": "SQLite3", "database": path}
    with SqlBackend(definition) as backend:  # the tables and one good user per store
        backend.keyval_set(HOST, "roster", "good", {"a@b": {"subscription": "both", "groups": {}}})
        backend.archive_write(HOST, "archive", "good", [ArchiveItem("k1", Element("message"), 1, None)])
    return definition


def test_values_that_are_not_what_a_store_holds(tmp_path: Any):
    source = _sqlite_source(str(tmp_path / "src.sqlite"))
    with sqlite3.connect(source["database"]) as db:
        rows = [
            (HOST, "badxml", "archive", "k", 1, "", "xml", "<message><unclosed></message>"),
            (HOST, "badtype", "archive", "k", 1, "", "bogus", "x"),
            (HOST, "notxml", "archive", "k", 1, "", "string", "a string, not a stanza"),
        ]
        db.executemany(
            'INSERT INTO prosodyarchive ("host","user","store","key","when","with","type","value") '
            "VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )
        db.executemany(
            'INSERT INTO prosody ("host","user","store","key","type","value") VALUES (?,?,?,?,?,?)',
            [
                (HOST, "badjson", "roster", "", "json", "{not json"),
                (HOST, "badnumber", "roster", "x", "number", "twelve"),
                (HOST, "badlua", "roster", "x", "bogus", "x"),
            ],
        )
    for dest in (
        {"type": "internal", "path": str(tmp_path / "files")},
        {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "dst.sqlite")},
    ):
        report = run_migration(source, dest, Options(keep_going=True))
        got = {(f.store, f.user) for f in report.failures}
        assert {("roster", "badjson"), ("roster", "badnumber"), ("roster", "badlua")} <= got
        assert {("archive", "badtype")} <= got
        for failure in report.failures:
            assert failure.user in failure.reason or repr(failure.user) in failure.reason
        with open_backend(dest) as dst:
            assert dst.keyval_get(HOST, "roster", "good") is not None
            assert [i.key for i in dst.archive_items(HOST, "archive", "good")] == ["k1"]
            # A stanza that is not well-formed XML is refused, or kept exactly; never altered.
            if ("archive", "badxml") not in got:
                with open_backend(source) as src:
                    assert same_value(
                        list(src.archive_items(HOST, "archive", "badxml")),
                        list(dst.archive_items(HOST, "archive", "badxml")),
                    )


def test_a_roster_that_is_a_string(tmp_path: Any):
    source = {"type": "internal", "path": str(tmp_path / "src")}
    with open_backend(source) as src:
        src.keyval_set(HOST, "roster", "odd", "just a string")
        src.keyval_set(HOST, "roster", "good", {"a@b": {"subscription": "both", "groups": {}}})
    for dest in (
        {"type": "internal", "path": str(tmp_path / "files")},
        {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "dst.sqlite")},
    ):
        report = run_migration(source, dest, Options(keep_going=True))
        # Copied as it is (Prosody's own stores write it) or refused for that user alone.
        assert [(f.store, f.user) for f in report.failures] in ([], [("roster", "odd")])
        with open_backend(dest) as dst:
            assert dst.keyval_get(HOST, "roster", "good") is not None
            if not report.failures:
                assert dst.keyval_get(HOST, "roster", "odd") == "just a string"


# names --------------------------------------------------------------------------------------------
HOSTILE_HOSTS = ["..", "../escape", "a/b", "x'; DROP TABLE prosody; --", 'dq"host', "nul\x00host", "%2e%2e", "."]
HOSTILE_USERS = [
    "..",
    "../../../../tmp/escaped",
    "/abs",
    "a/b",
    "'; DELETE FROM prosody; --",
    '"; DROP TABLE "prosodyarchive"; --',
    "back\\slash",
    "nul\x00user",
    ".hidden",
    "%00",
    "?*[]{}$`",
    "-rf",
]
HOSTILE_STORES = ["../store", "st'; DROP TABLE prosody; --", "a/b", "..", "nul\x00store"]


def _names_source(path: str) -> dict[str, Any]:
    """A SQLite3 source holding hostile names, inserted raw (our writer refuses NUL in SQLite3)."""
    source = _sqlite_source(path)
    keyval, archive = [], []
    for h, host in enumerate(HOSTILE_HOSTS):
        for s, store in enumerate(HOSTILE_STORES):
            for user in HOSTILE_USERS[(h + s) % 3 :: 2]:
                keyval.append((host, user, store, "k", "string", f"{host}|{user}|{store}"))
                archive.append((host, user, store + "_a", "key'1", 1700000000, "'w", "xml", '<m a="\'; --"/>'))
    with sqlite3.connect(path) as db:
        db.text_factory = bytes
        enc = [tuple(v.encode() if isinstance(v, str) else v for v in row) for row in keyval]
        db.executemany(
            'INSERT INTO prosody ("host","user","store","key","type","value") '
            "VALUES (CAST(? AS TEXT),CAST(? AS TEXT),CAST(? AS TEXT),?,?,CAST(? AS TEXT))",
            enc,
        )
        enc = [tuple(v.encode() if isinstance(v, str) else v for v in row) for row in archive]
        db.executemany(
            'INSERT INTO prosodyarchive ("host","user","store","key","when","with","type","value") '
            "VALUES (CAST(? AS TEXT),CAST(? AS TEXT),CAST(? AS TEXT),?,?,?,?,?)",
            enc,
        )
    return source


def _walk(path: str) -> set[str]:
    out = set()
    for root, dirs, files in os.walk(path):
        out.update(os.path.join(root, n) for n in dirs + files)
    return out


def test_hostile_names_into_files_stay_inside(tmp_path: Any):
    source = _names_source(str(tmp_path / "src.sqlite"))
    dest = {"type": "internal", "path": str(tmp_path / "box" / "data")}
    os.makedirs(tmp_path / "box")
    before = _walk(str(tmp_path))
    report = run_migration(source, dest, Options(keep_going=True))
    assert (report.failed, report.failures) == (False, [])
    after = _walk(str(tmp_path))
    new = after - before
    assert new and all(p.startswith(dest["path"] + os.sep) or p == dest["path"] for p in new)
    assert not os.path.exists("/tmp/escaped") and not os.path.exists(tmp_path / "escape")
    safe = re.compile(r"[A-Za-z0-9_%]+(\.dat|\.list)?\Z")
    for p in new - {dest["path"]}:
        assert safe.match(os.path.basename(p)), p
    # Read back through the backend, every name and value is the source's.
    assert assert_same_data(source, dest) > 200


@pytest.fixture(params=DRIVERS)
def sql_dest(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    for params in fresh_database(request.param, tmp_path):
        yield {"type": "sql", **params}


def test_hostile_names_into_sql_are_data(tmp_path: Any, sql_dest: dict[str, Any]):
    source = _names_source(str(tmp_path / "src.sqlite"))
    with SqlBackend(sql_dest) as dst:  # the tables exist, with a canary row of another host
        dst.keyval_set("canary.example", "roster", "canary", {"x": 1})
    report = run_migration(source, sql_dest, Options(keep_going=True))
    if sql_dest["driver"] == "MySQL":
        assert report.failures == []
    else:
        # SQLite3 (as Prosody's LuaDBI cuts the string) and PostgreSQL text cannot hold NUL: those
        # entries fail, each on its own, with the reason; no other does.
        assert report.failures and all("NUL" in f.reason for f in report.failures)
        assert all("\x00" in f.host + f.store + (f.user or "") for f in report.failures)
    with open_backend(sql_dest) as dst, open_backend(source) as src:
        assert dst.keyval_get("canary.example", "roster", "canary") == {"x": 1}
        hosts = set(dst.hosts())
        for host in HOSTILE_HOSTS:
            for store, type_ in src.stores(host):
                users = src.keyval_users(host, store) if type_ == "keyval" else src.archive_users(host, store)
                for user in users:
                    if "\x00" in host + store + user and sql_dest["driver"] != "MySQL":
                        continue
                    assert host in hosts
                    if type_ == "keyval":
                        assert dst.keyval_get(host, store, user) == src.keyval_get(host, store, user)
                    else:
                        assert same_value(
                            list(dst.archive_items(host, store, user)), list(src.archive_items(host, store, user))
                        )
