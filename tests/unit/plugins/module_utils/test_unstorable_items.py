# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Archived stanzas holding what XML cannot carry: kept by the file store, failed one by one
(never the whole archive, never stored altered) by the destinations that keep XML text.

The corpus is written by real Prosody's code: mod_storage_internal's ``append`` for the good
items and util.datamanager's ``list_append`` of a preserialized table (as ``append`` stores it)
for the bad ones, which Prosody's stanza API would not let anyone build.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.compare import same_item
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.report import Report
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element, StanzaError, xml_text_problem
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    fresh_database,
)

from prosody_oracle import PROSODY_SRC, canon, frames, run_lua

HOST = "example.org"
PLAN = {HOST: ["archive-archive"]}
GOOD = {"alice": ["m1", "m5", "m6"], "bob": ["b1", "b2"]}
# alice's items Prosody's stanza API refuses to build, with what each holds, in file order m1..m6.
BAD = {
    "m2": "U+0001",  # a control character in the body: Prosody's own find fails on it
    "m3": "0xFF",  # a byte that is not UTF-8
    "m4": "U+0014",  # passes Prosody's stanza check (its class is decimal), but not XML
}
ALICE_ORDER = ["m1", "m2", "m3", "m4", "m5", "m6"]

CORPUS_LUA = """
local data_dir, host, prosody_src = ...
local dm = require "util.datamanager"
local st = require "util.stanza"
local datetime = require "util.datetime"
dm.set_data_path(data_dir)
package.loaded["core.storagemanager"] = { olddm = dm }
local driver
local env = setmetatable({ module = {
  host = host, get_option_number = function(_, _, d) return d end, get_option = function(_, _, d) return d end,
  log = function() end, provides = function(_, _, d) driver = d end,
} }, { __index = _G })
assert(loadfile(prosody_src .. "/modules/mod_storage_internal.lua", "t", env))()
local archive = driver:open("archive", "archive")
local t = 1700000000
local function message(user, key, body)
  return st.message({ xmlns = "jabber:client", to = user .. "@" .. host, from = "peer@example.net/r",
    type = "chat", id = key }):text_tag("body", body)
end
local function good(user, key)
  t = t + 1
  assert(archive:append(user, key, message(user, key, "good " .. key), t, "peer@example.net"))
end
-- What archive:append stores, built around the stanza API's checks and appended the same way.
local function bad(user, key, body, id)
  t = t + 1
  local item = st.preserialize(message(user, key, "placeholder"))
  item[1][1] = body
  if id then item.attr.id = id end
  item.key, item.when, item.with = key, t, "peer@example.net"
  item.attr.stamp = datetime.datetime(t)
  assert(dm.list_append(user, host, "archive", item))
end
good("alice", "m1")
bad("alice", "m2", "hello\\1world")
bad("alice", "m3", "caf\\255")
bad("alice", "m4", "fine text", "x\\20y")
good("alice", "m5")
good("alice", "m6")
good("bob", "b1")
good("bob", "b2")
-- Prosody's own reading of alice's archive stops at m2.
local ok, err = pcall(function() for _ in assert(archive:find("alice", {})) do end end)
io.write(tostring(ok), "\\n", tostring(err))
"""


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("unstorable") / "data")
    os.makedirs(directory)
    script = CORPUS_LUA.replace("...", ", ".join(json.dumps(v) for v in (directory, HOST, PROSODY_SRC)), 1)
    ok, error = run_lua(script).split(b"\n", 1)
    # The premise: Prosody itself cannot read alice's archive past the control character.
    assert ok == b"false" and b"invalid text value: contains control characters" in error
    return directory


@pytest.fixture
def source(corpus_dir: str) -> dict[str, Any]:
    return {"type": "internal", "path": corpus_dir, "hosts": PLAN}


@pytest.fixture(params=["SQLite3", "PostgreSQL"])
def sql_dest(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    for params in fresh_database(request.param, tmp_path):
        yield {"type": "sql", **params}


def migrate(source: dict[str, Any], destination: dict[str, Any], **options: Any) -> Report:
    report = run_migration(source, destination, Options(**options))
    json.dumps(report.to_dict(), allow_nan=False)
    return report


def items(definition: dict[str, Any], user: str) -> list[ArchiveItem]:
    with open_backend(definition) as backend:
        return list(backend.archive_items(HOST, "archive", user))


def by_key(definition: dict[str, Any], user: str) -> dict[str, ArchiveItem]:
    return {item.key: item for item in items(definition, user)}


def assert_item_failures(report: Report, destination: str) -> None:
    """One failure per bad item of alice, naming host, store, user, key and reason; nothing else."""
    assert [(f.host, f.store, f.user, f.scope) for f in report.failures] == [(HOST, "archive", "alice", "user")] * 3
    for failure, (key, char) in zip(report.failures, BAD.items()):
        reason = failure.reason
        assert f"item {key!r}" in reason and char in reason and destination in reason, reason
        assert "host 'example.org'" in reason and "store 'archive'" in reason and "user 'alice'" in reason


def assert_good_items_copied(source: dict[str, Any], destination: dict[str, Any]) -> None:
    """Every good item is in the destination, equal and in the source's order; no bad one is."""
    for user, keys in GOOD.items():
        wanted = by_key(source, user)
        got = items(destination, user)
        assert [item.key for item in got] == keys
        assert all(same_item(item, wanted[item.key]) for item in got)


# which characters --------------------------------------------------------------------------
# Parses each document of a list (sent canon-encoded) with util.xml, writing 1 (read) or 0 (refused).
PARSE_ALL = """
local xml = require "util.xml"
for _, doc in ipairs(canon.decode(io.read("a"))) do io.write(xml.parse(doc) and "1" or "0") end
"""


def _probes() -> list[str]:
    raw = [bytes([i]) for i in range(0x80)]
    raw += [b"\xc2\x85", b"\xef\xbf\xbd", b"\xef\xbf\xbe", b"\xef\xbf\xbf", b"\xef\xb7\x90", b"\xf4\x8f\xbf\xbf"]
    raw += [b"\x80", b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc3"]
    return [b.decode("utf-8", "surrogateescape") for b in raw]


def test_xml_text_problem_is_exactly_what_prosodys_parser_refuses() -> None:
    """XML 1.0's excluded characters, checked against util.xml on text and attribute values."""
    probes = _probes()
    documents = {i: Element("a", {"v": f"x{p}y"}, [f"x{p}y"]).to_xml() for i, p in enumerate(probes, 1)}
    accepted = run_lua(PARSE_ALL, canon(documents)).decode()
    assert len(accepted) == len(probes)
    for probe, verdict in zip(probes, accepted):
        assert (xml_text_problem(probe) is None) == (verdict == "1"), repr(probe)
    assert xml_text_problem("a\x01") == "holds the character U+0001, which XML cannot carry"
    assert xml_text_problem("caf\udcff") == "holds the byte 0xFF, which is not valid UTF-8"


# the file store ----------------------------------------------------------------------------
def test_files_to_files_keeps_every_item_byte_for_byte(source: dict[str, Any], tmp_path: Any) -> None:
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    report = migrate(source, dest)
    assert not report.failed and not report.failures
    result = report.store_result(HOST, "archive", "archive")
    assert (result.items_created, result.items_failed, result.users_created) == (8, 0, 2)
    # Real Prosody's datamanager loads the same tables from both files.
    script = """
    local dm = require "util.datamanager"
    local src, dst, host = ...
    for _, user in ipairs({"alice", "bob"}) do
      dm.set_data_path(src); local a = dm.list_load(user, host, "archive")
      dm.set_data_path(dst); local b = dm.list_load(user, host, "archive")
      for _, v in ipairs({canon.encode(a), canon.encode(b)}) do io.write(#v, ":", v) end
    end
    """
    args = ", ".join(json.dumps(v) for v in (source["path"], dest["path"], HOST))
    alice_src, alice_dst, bob_src, bob_dst = frames(run_lua(script.replace("...", args, 1)))
    assert alice_src == alice_dst and bob_src == bob_dst
    assert b"hello\x01world" in alice_dst and b"caf\xff" in alice_dst
    # A second run finds everything in place.
    again = migrate(source, dest)
    assert not again.changed and again.store_result(HOST, "archive", "archive").items_unchanged == 8


def test_file_store_reads_the_bad_items_as_they_are(source: dict[str, Any]) -> None:
    got = by_key(source, "alice")
    assert list(got) == ALICE_ORDER
    (body,) = got["m2"].value.children
    assert body.children == ["hello\x01world"]
    assert got["m4"].value.attr["id"] == "x\x14y"


# SQL ---------------------------------------------------------------------------------------
def test_into_sql_the_bad_items_fail_alone(source: dict[str, Any], sql_dest: dict[str, Any]) -> None:
    driver = sql_dest["driver"]
    predicted = migrate(source, sql_dest, check=True, keep_going=True)
    assert_item_failures(predicted, driver)
    assert predicted.changed and not items(sql_dest, "alice")  # check mode writes nothing

    report = migrate(source, sql_dest, keep_going=True)
    assert report.failed and not report.stopped and report.changed
    assert_item_failures(report, driver)
    result = report.store_result(HOST, "archive", "archive")
    assert (result.items_created, result.items_failed, result.items_unchanged) == (5, 3, 0)
    assert (result.users_created, result.users_failed) == (1, 1)  # bob created, alice failed
    assert_good_items_copied(source, sql_dest)


def test_a_rerun_fails_the_same_items_and_rewrites_nothing(source: dict[str, Any], sql_dest: dict[str, Any]) -> None:
    migrate(source, sql_dest, keep_going=True)
    before = sort_ids(sql_dest)
    again = migrate(source, sql_dest, keep_going=True)
    assert sort_ids(sql_dest) == before  # the good rows are not written again
    assert again.failed and not again.changed
    assert_item_failures(again, sql_dest["driver"])
    result = again.store_result(HOST, "archive", "archive")
    assert (result.items_created, result.items_updated, result.items_failed) == (0, 0, 3)
    assert result.items_unchanged == 5  # the good ones only: a failed item is never "unchanged"
    assert (result.users_unchanged, result.users_failed) == (1, 1)


def sort_ids(definition: dict[str, Any]) -> list[tuple[Any, ...]]:
    backend = open_backend(definition)
    try:
        return backend._select('SELECT "sort_id", "key" FROM "prosodyarchive" ORDER BY "sort_id"', [])
    finally:
        backend.close()


def test_without_keep_going_the_run_stops_after_that_users_good_items(source: dict[str, Any], tmp_path: Any) -> None:
    dest = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "prosody.sqlite")}
    report = migrate(source, dest)
    assert report.failed and report.stopped
    assert_item_failures(report, "SQLite3")
    assert [item.key for item in items(dest, "alice")] == GOOD["alice"]
    assert items(dest, "bob") == []  # the run stopped before bob, as at any other failure


def test_every_row_written_is_xml_prosodys_parser_reads(source: dict[str, Any], tmp_path: Any) -> None:
    database = str(tmp_path / "prosody.sqlite")
    migrate(source, {"type": "sql", "driver": "SQLite3", "database": database}, keep_going=True)
    with sqlite3.connect(database) as conn:
        rows = [row[0] for row in conn.execute('SELECT "value" FROM "prosodyarchive" WHERE "type" = \'xml\'')]
    assert len(rows) == 5
    assert run_lua(PARSE_ALL, canon(dict(enumerate(rows, 1)))) == b"1" * 5


# XEP-0227 ----------------------------------------------------------------------------------
def test_into_xep0227_the_bad_items_fail_alone(source: dict[str, Any], tmp_path: Any) -> None:
    dest = {"type": "xep0227", "path": str(tmp_path / "xep0227")}
    report = migrate(source, dest, keep_going=True)
    assert report.failed and not report.stopped
    assert_item_failures(report, "XML")
    assert report.store_result(HOST, "archive", "archive").items_failed == 3
    # XEP-0227 keeps no peer and derives it: compare keys and stanzas.
    alice = items(dest, "alice")
    wanted = by_key(source, "alice")
    assert [item.key for item in alice] == GOOD["alice"]
    assert [item.when for item in alice] == [wanted[key].when for key in GOOD["alice"]]


# SQL as a source ---------------------------------------------------------------------------
def _bad_row_source(driver: str, tmp_path: Any) -> Iterator[dict[str, Any]]:
    """A SQL database holding alice's rows with one whose XML Prosody's parser refuses, and bob's."""
    good = "<message xmlns='jabber:client' id='{0}'><body>good {0}</body></message>"
    rows = [
        ("alice", "r1", good.format("r1")),
        ("alice", "r2", "<message xmlns='jabber:client'><body>hello\x01world</body></message>"),
        ("bob", "b1", good.format("b1")),
    ]
    for params in fresh_database(driver, tmp_path):
        definition = {"type": "sql", **params}
        with open_backend(definition) as backend:
            backend._writable()  # Prosody's tables, empty
        insert = (
            'INSERT INTO "prosodyarchive" ("host", "user", "store", "when", "with", "key", "type", "value") '
            "VALUES ({0}, {0}, 'archive', 1700000000, 'peer@example.net', {0}, 'xml', {0})"
        )
        values = [(HOST, user, key, text) for user, key, text in rows]
        if driver == "SQLite3":
            with sqlite3.connect(os.path.join(params["data_path"], params["database"])) as conn:
                conn.executemany(insert.format("?"), values)
        else:
            connection = {"host": params["host"], "port": params["port"], "user": params["username"]}
            with psycopg.connect(**connection, dbname=params["database"], autocommit=True) as conn:
                conn.cursor().executemany(insert.format("%s"), values)
        yield {**definition, "hosts": PLAN}


@pytest.mark.parametrize("driver", ["SQLite3", "PostgreSQL"])
def test_a_sql_row_that_does_not_parse_fails_its_user_naming_the_row(driver: str, tmp_path: Any) -> None:
    for sql_source in _bad_row_source(driver, tmp_path):
        dest = {"type": "internal", "path": str(tmp_path / "files")}
        report = migrate(sql_source, dest, keep_going=True)
        assert report.failed and not report.stopped
        (failure,) = report.failures
        assert (failure.host, failure.store, failure.user) == (HOST, "archive", "alice")
        assert "key 'r2'" in failure.reason and "U+0001" in failure.reason and driver in failure.reason
        assert [item.key for item in items(dest, "bob")] == ["b1"]
        stopped = migrate(sql_source, {"type": "internal", "path": str(tmp_path / "files2")})
        assert stopped.failed and stopped.stopped


def test_lenient_reading_still_refuses_names_that_would_not_be_xml() -> None:
    """Text is carried as it is, but a name Prosody refuses would make to_xml write non-XML
    that no character check sees, so it fails the read (naming the item) as in Prosody."""
    tables = [{"name": "bo dy", "attr": {}}, {"name": "body", "attr": {"a<b": "1"}}]
    script = """
    local st = require "util.stanza"
    for _, t in ipairs(canon.decode(io.read("a"))) do io.write(pcall(st.deserialize, t) and "1" or "0") end
    """
    assert run_lua(script, canon(dict(enumerate(tables, 1)))) == b"00"
    for table in tables:
        with pytest.raises(StanzaError, match=r"^alice\.list item 2: invalid .* contains invalid characters"):
            Element.deserialize(table, "alice.list item 2", strict=False)
