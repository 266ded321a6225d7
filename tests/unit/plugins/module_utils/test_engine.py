# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The copy engine on real data: a file store written by real Prosody's code, copied through the
real SQL servers and back, compared value by value through the backends.

The helpers (``corpus``, ``migrate``, ``snapshot``, ``assert_same_data``) take any two store
definitions, so a comparison with the real /usr/bin/prosody-migrator can reuse them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import engine, fsutil
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem, Backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.compare import same_value
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import EncodeError, ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.report import MASK, Report
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    DRIVERS,
    fresh_database,
)

from prosody_oracle import PROSODY_SRC, run_lua

CORPUS = os.path.join(os.path.dirname(__file__), "..", "..", "..", "corpus", "make_corpus.lua")
HOST, MUC = "example.org", "conference.example.org"
PLAIN_PASSWORD = "Plain-Secret-Passw0rd-not-hashed-at-all"
NODE, PEP_NODE = "princely_musings", "urn:xmpp:microblog:0"
# The source's plan as a migrator.cfg.lua entry writes it, with the pubsub entries.
HOSTS = {
    HOST: [
        "accounts",
        "account_details",
        "roster",
        "vcard",
        "private",
        "blocklist",
        "archive-archive",
        "offline-archive",
        "pubsub_nodes-pubsub",
        "pep-pubsub",
    ],
    MUC: ["persistent", "config", "muc_log-archive"],
}
# Every store the source holds, as (store, type): what the copies are compared over.
ALL_STORES = {
    HOST: [
        ("accounts", "keyval"),
        ("account_details", "keyval"),
        ("roster", "keyval"),
        ("vcard", "keyval"),
        ("private", "keyval"),
        ("blocklist", "keyval"),
        ("archive", "archive"),
        ("offline", "archive"),
        ("pubsub_nodes", "keyval"),
        ("pubsub_" + NODE, "archive"),
        ("pep", "keyval"),
        ("pep_" + PEP_NODE, "archive"),
    ],
    MUC: [("persistent", "keyval"), ("config", "keyval"), ("muc_log", "archive")],
}

# Pubsub data as mod_pubsub and mod_pep store it, through util.datamanager and mod_storage_internal:
# a service node (keyval pubsub_nodes, user = node; items in archive pubsub_<node> at host level),
# a PEP node of user00001 (keyval pep; items in archive pep_<node> of that user), plus an account
# holding a plain-text password (mod_auth_internal_plain).
PUBSUB_LUA = """
local data_dir, host = arg_data_dir, arg_host
local dm = require "util.datamanager"
local st = require "util.stanza"
dm.set_data_path(data_dir)
package.loaded["core.storagemanager"] = { olddm = dm }
local driver
local env = setmetatable({ module = {
  host = host, get_option_number = function(_, _, d) return d end, get_option = function(_, _, d) return d end,
  log = function() end, provides = function(_, _, d) driver = d end,
} }, { __index = _G })
assert(loadfile(prosody_src .. "/modules/mod_storage_internal.lua", "t", env))()
dm.store(node, host, "pubsub_nodes", {
  name = node, config = { title = "Princely Musings", max_items = 10, access_model = "open" },
  affiliations = { ["hamlet@" .. host] = "owner" }, subscribers = {},
})
local items = driver:open("pubsub_" .. node, "archive")
for i = 1, 3 do
  local item = st.stanza("item", { xmlns = "http://jabber.org/protocol/pubsub", id = "item" .. i })
    :tag("entry", { xmlns = "http://www.w3.org/2005/Atom" }):text_tag("title", "Soliloquy " .. i)
  assert(items:append(nil, "item" .. i, item, 1700000100 + i, "hamlet@" .. host))
end
dm.store("user00001", host, "pep", { [pep_node] = { name = pep_node, config = { access_model = "presence" } } })
local pep = driver:open("pep_" .. pep_node, "archive")
assert(pep:append("user00001", "current", st.stanza("item", { id = "current" }):text_tag("title", "hi"), 1700000200))
dm.store("plainuser", host, "accounts", { password = plain_password })
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII text is a valid Lua string literal


def make_corpus(directory: str, users: int = 12, messages: int = 15) -> str:
    """A Prosody file store written by real Prosody's code (make_corpus.lua plus pubsub data)."""
    subprocess.run(["lua5.4", CORPUS, directory, str(users), str(messages), "7", "16"], check=True)
    values = {
        "arg_data_dir": directory,
        "arg_host": HOST,
        "prosody_src": PROSODY_SRC,
        "node": NODE,
        "pep_node": PEP_NODE,
        "plain_password": PLAIN_PASSWORD,
    }
    run_lua("".join(f"local {k} = {_lua_string(v)}\n" for k, v in values.items()) + PUBSUB_LUA)
    return directory


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_corpus(str(tmp_path_factory.mktemp("corpus") / "data"))


@pytest.fixture
def source(corpus_dir: str, tmp_path: Any) -> dict[str, Any]:
    """A fresh copy of the corpus as a source definition with Prosody's plan."""
    path = str(tmp_path / "source")
    shutil.copytree(corpus_dir, path)
    return {"type": "internal", "path": path, "hosts": HOSTS}


def sql_definition(params: dict[str, Any]) -> dict[str, Any]:
    return {"type": "sql", **params}


@pytest.fixture(params=DRIVERS)
def sql_dest(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from (sql_definition(p) for p in fresh_database(request.param, tmp_path))


@pytest.fixture
def sqlite_dest(tmp_path: Any) -> dict[str, Any]:
    return {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "prosody.sqlite")}


# helpers -------------------------------------------------------------------------------------
def migrate(source: dict[str, Any], destination: dict[str, Any], **options: Any) -> Report:
    report = run_migration(source, destination, Options(**options))
    json.dumps(report.to_dict(), allow_nan=False)  # always JSON-ready
    return report


def snapshot(backend: Backend, stores: dict[str, list[tuple[str, str]]]) -> Iterator[tuple[Any, ...]]:
    """Every entry of the given stores, host-level first: (host, store, type, user, value or items)."""
    for host, entries in stores.items():
        for store, type_ in entries:
            if type_ == "keyval":
                yield host, store, type_, None, backend.keyval_get(host, store, None)
                for user in sorted(backend.keyval_users(host, store)):
                    yield host, store, type_, user, backend.keyval_get(host, store, user)
            else:
                yield host, store, type_, None, list(backend.archive_items(host, store, None))
                for user in sorted(backend.archive_users(host, store)):
                    yield host, store, type_, user, list(backend.archive_items(host, store, user))


def assert_same_data(
    expected: dict[str, Any], actual: dict[str, Any], stores: dict[str, list[tuple[str, str]]] | None = None
) -> int:
    """Every value and item of the stores (default ALL_STORES) equal on both sides, users too; returns the count."""
    if stores is None:
        stores = ALL_STORES
    with open_backend(expected) as a, open_backend(actual) as b:
        left, right = list(snapshot(a, stores)), list(snapshot(b, stores))
    assert [e[:4] for e in left] == [e[:4] for e in right]
    for x, y in zip(left, right):
        assert same_value(x[4], y[4]), f"{x[:4]} differs"
    assert all(entry[3] != "" for entry in right)  # host data never comes back as a user ""
    return len(left)


def file_state(path: str) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file under a directory."""
    out = {}
    for root, _dirs, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            out[os.path.join(root, name)] = (st.st_mtime_ns, st.st_size)
    return out


def sql_state(definition: dict[str, Any]) -> tuple[Any, ...]:
    """Row counts and the highest archive sort_id: a rewrite of any row moves them."""
    with open_backend(definition) as backend:
        assert isinstance(backend, SqlBackend)
        with backend._tx() as cur:
            cur.execute('SELECT COUNT(*) FROM "prosody"')
            keyval = cur.fetchone()[0]
            cur.execute('SELECT COUNT(*), MAX("sort_id") FROM "prosodyarchive"')
            return (keyval, *cur.fetchone())


class WriteSpy:
    """Counts the writes every backend makes (patched on the classes, so it sees the engine's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, str, Any]] = []
        for cls in (InternalBackend, SqlBackend):
            for name in ("keyval_set", "archive_write"):
                monkeypatch.setattr(cls, name, self._wrap(getattr(cls, name), name))

    def _wrap(self, method: Any, name: str) -> Any:
        def spy(backend: Backend, host: str, store: str, user: Any, data: Any) -> None:
            self.calls.append((name, host, store, user))
            return method(backend, host, store, user, data)

        return spy


def counts(report: Report) -> dict[str, int]:
    return report.totals()


# copying -------------------------------------------------------------------------------------
def test_files_to_sql_and_back_is_the_same_data(source: dict[str, Any], sql_dest: dict[str, Any], tmp_path: Any):
    report = migrate(source, sql_dest, verify=True)
    assert (report.changed, report.failed, report.verified, report.failures) == (True, False, True, [])
    compared = assert_same_data(source, sql_dest)
    assert compared > 80
    back = {"type": "internal", "path": str(tmp_path / "back"), "hosts": HOSTS}
    sql_source = {**sql_dest, "hosts": HOSTS}
    report = migrate(sql_source, back, verify=True)
    assert (report.changed, report.failed, report.verified) == (True, False, True)
    assert_same_data(source, back)
    assert (
        counts(report)["items_created"]
        == counts(migrate(source, {**back, "path": str(tmp_path / "b2")}))["items_created"]
    )


def test_second_run_writes_nothing(source: dict[str, Any], sql_dest: dict[str, Any], monkeypatch: pytest.MonkeyPatch):
    first = migrate(source, sql_dest)
    before = sql_state(sql_dest)
    spy = WriteSpy(monkeypatch)
    again = migrate(source, sql_dest, diff=True)
    assert (again.changed, again.failed, again.diff, spy.calls) == (False, False, [], [])
    assert sql_state(sql_dest) == before
    totals, first_totals = counts(again), counts(first)
    assert totals["users_unchanged"] == first_totals["users_created"]
    assert totals["items_unchanged"] == first_totals["items_created"] > 0


def test_second_run_into_files_touches_no_file(source: dict[str, Any], tmp_path: Any, monkeypatch):
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    assert migrate(source, dest).changed
    before = file_state(dest["path"])
    spy = WriteSpy(monkeypatch)
    report = migrate(source, dest)
    assert (report.changed, spy.calls, file_state(dest["path"])) == (False, [], before)


def test_one_file_write_per_archive(source: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch):
    written: list[bytes] = []
    real = fsutil.atomic_write
    monkeypatch.setattr(fsutil, "atomic_write", lambda path, *a: (written.append(path), real(path, *a))[1])
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    report = migrate(source, dest)
    lists = [p for p in written if p.endswith(b".list")]
    assert len(lists) == len(set(lists))  # each archive file written once, in one go
    archive = report.store_result(HOST, "archive", "archive")
    assert archive.users_created == len([p for p in lists if b"/archive/" in p]) == 12
    assert archive.items_created == 12 * 15


def test_changed_values_are_updated_and_counted(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    migrate(source, sqlite_dest)
    with open_backend(source) as src:
        roster = src.keyval_get(HOST, "roster", "user00006")
        roster["new@example.org"] = {"subscription": "none", "groups": {}}
        src.keyval_set(HOST, "roster", "user00006", roster)
        items = list(src.archive_items(HOST, "archive", "user00004"))
        changed = ArchiveItem(items[4].key, items[0].value, items[4].when + 1, items[4].with_)
        extra = ArchiveItem("brand-new", items[1].value, items[-1].when + 5, None)
        src.archive_write(HOST, "archive", "user00004", [changed, extra])
    report = migrate(source, sqlite_dest, diff=True, verify=True)
    assert (report.changed, report.verified) == (True, True)
    roster_result = report.store_result(HOST, "roster", "keyval")
    assert (roster_result.users_updated, roster_result.users_created) == (1, 0)
    archive = report.store_result(HOST, "archive", "archive")
    assert (archive.users_updated, archive.items_created, archive.items_updated) == (1, 1, 1)
    assert [(d["store"], d["user"], d["action"]) for d in report.diff] == [
        ("roster", "user00006", "update"),
        ("archive", "user00004", "update"),
    ]
    assert report.diff[1]["items_added"] == report.diff[1]["items_replaced"] == 1
    assert report.diff[0]["after"]["new@example.org"] == {"subscription": "none", "groups": {}}
    assert "new@example.org" not in report.diff[0]["before"]
    assert_same_data(source, sqlite_dest)


# check mode, diff, secrets --------------------------------------------------------------------
def test_check_mode_writes_nothing_and_reports_what_would_change(
    source: dict[str, Any], sql_dest: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
):
    migrate(source, sql_dest, stores=["roster", "archive-archive"])
    before = sql_state(sql_dest)
    spy = WriteSpy(monkeypatch)
    report = migrate(source, sql_dest, check=True, diff=True)
    assert spy.calls == [] and sql_state(sql_dest) == before
    assert (report.changed, report.check, report.failed) == (True, True, False)
    assert report.store_result(HOST, "roster", "keyval").users_unchanged == 12
    accounts = report.store_result(HOST, "accounts", "keyval")
    assert (accounts.users_created, accounts.users_unchanged) == (13, 0)  # 12 users and plainuser
    assert {d["store"] for d in report.diff} >= {"accounts", "vcard", "offline", "pubsub_" + NODE, "pep_" + PEP_NODE}
    assert "roster" not in {d["store"] for d in report.diff}
    # The would-be results are the real ones.
    monkeypatch.undo()
    real = migrate(source, sql_dest)
    assert list(real.stores) == list(report.stores)


def test_check_mode_creates_no_destination(source: dict[str, Any], tmp_path: Any):
    files = {"type": "internal", "path": str(tmp_path / "new-files")}
    sqlite = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "new.sqlite")}
    for dest in (files, sqlite):
        report = migrate(source, dest, check=True)
        assert (report.changed, report.failed) == (True, False)
        assert counts(report)["users_created"] > 50
    assert os.listdir(tmp_path) == ["source"]


def _secrets(source: dict[str, Any]) -> list[str]:
    with open_backend(source) as src:
        accounts = [src.keyval_get(HOST, "accounts", u) for u in src.keyval_users(HOST, "accounts")]
    found = [a[k] for a in accounts for k in ("stored_key", "server_key", "salt") if k in a]
    assert len(found) == 36
    return [*found, PLAIN_PASSWORD]


def test_secrets_never_reach_the_report(source: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch):
    secrets = _secrets(source)
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    report = migrate(source, dest, diff=True, check=True)
    accounts = [d for d in report.diff if d["store"] == "accounts"]
    assert len(accounts) == 13
    assert all(set(d["after"].values()) <= {MASK, 16} for d in accounts)  # iteration_count stays

    # A destination whose error message quotes the value (as SQL errors preview it) stays masked too.
    def refuse(backend: Any, host: str, store: str, user: Any, value: Any, absent: bool = False) -> None:
        raise EncodeError(f"cannot store {value!r}; preview {str(value)[:40]}...")

    monkeypatch.setattr(InternalBackend, "keyval_set", refuse)
    failed = migrate(source, dest, keep_going=True, diff=True)
    assert failed.failed and len(failed.failures) > 50
    text = json.dumps([report.to_dict(), failed.to_dict()], ensure_ascii=False)
    leaked = [s for s in secrets if s in text or s[:12] in text]
    assert leaked == []
    assert MASK in failed.failures[0].reason or failed.failures[0].store != "accounts"


def test_a_destination_that_cannot_be_opened_raises(source: dict[str, Any], mysql_password_dest: dict[str, Any]):
    with pytest.raises(ProsodyMigrateError) as caught:
        migrate(source, mysql_password_dest, stores=["roster"])
    assert "Access denied for user 'no_such_user'" in str(caught.value)
    assert "wrong-password-xyz" not in str(caught.value)


@pytest.fixture
def mysql_password_dest() -> dict[str, Any]:
    # Prosody 13's `config` table carries the driver options; a refused login fails the run.
    return {
        "type": "sql",
        "config": {"driver": "MySQL", "database": "nonexistent_pm", "host": "127.0.0.1", "port": 3306},
        "username": "no_such_user",
        "password": "wrong-password-xyz",
    }


# verify and failures --------------------------------------------------------------------------
def test_verify_catches_a_value_changed_behind_its_back(source: dict[str, Any], sql_dest: dict[str, Any]):
    migrate(source, sql_dest)
    with open_backend(sql_dest) as dst:
        vcard = dst.keyval_get(HOST, "vcard", "user00004")
        dst.keyval_set(HOST, "vcard", "user00004", {**vcard, "extra": 1})
        item = next(iter(dst.archive_items(MUC, "muc_log", "room1")))
        dst.archive_write(MUC, "muc_log", "room1", [ArchiveItem(item.key, item.value, item.when, "someone-else")])
        dst.keyval_set(MUC, "persistent", None, None)
    report = migrate(source, sql_dest, check=True, verify=True)  # verify only: nothing written
    assert (report.verified, report.failed) == (False, True)
    found = {(m.host, m.store, m.user) for m in report.mismatches}
    assert found == {(HOST, "vcard", "user00004"), (MUC, "muc_log", "room1"), (MUC, "persistent", None)}
    assert "1 different" in next(m.reason for m in report.mismatches if m.store == "muc_log")
    repaired = migrate(source, sql_dest, verify=True)
    assert (repaired.changed, repaired.verified, repaired.mismatches) == (True, True, [])
    assert_same_data(source, sql_dest)


def _corrupt(source: dict[str, Any]) -> str:
    path = os.path.join(source["path"], "example%2eorg", "roster", "user00005.dat")
    with open(path, "w") as f:
        f.write("return { broken = ")
    return path


def test_keep_going_migrates_every_other_user(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    path = _corrupt(source)
    report = migrate(source, sqlite_dest, keep_going=True, verify=True)
    assert (report.failed, report.stopped) == (True, False)
    [failure] = report.failures
    assert (failure.host, failure.store, failure.user, failure.scope) == (HOST, "roster", "user00005", "user")
    assert path in failure.reason
    assert report.store_result(HOST, "roster", "keyval").users_failed == 1
    assert report.store_result(HOST, "roster", "keyval").users_created == 11
    with open_backend(sqlite_dest) as dst:
        assert dst.keyval_get(HOST, "roster", "user00005") is None
    os.remove(path)  # without it, the rest is the same data
    assert_same_data(source, sqlite_dest)


def test_first_failure_stops_the_run(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    path = _corrupt(source)
    report = migrate(source, sqlite_dest, verify=True)
    assert (report.failed, report.stopped, report.verified) == (True, True, None)
    assert [(f.store, f.user) for f in report.failures] == [("roster", "user00005")]
    assert path in report.failures[0].reason
    # Done so far, in order: hosts are planned sorted, so the MUC host's stores come first.
    stores = [(r.store, r.users_created) for r in report.stores if r.host == HOST]
    assert stores == [("accounts", 13), ("account_details", 12), ("roster", 4)]
    assert report.stores[0].host < HOST and report.stores[-1].host == HOST


def test_a_value_the_destination_cannot_hold_is_a_failure(source: dict[str, Any], pg_dest: dict[str, Any]):
    # PostgreSQL text cannot hold NUL: one user's value fails, every other user migrates.
    with open_backend(source) as src:
        src.keyval_set(HOST, "account_details", "user00007", {"name": "nul\x00here"})
    report = migrate(source, pg_dest, keep_going=True, stores=["account_details"])
    assert [(f.store, f.user) for f in report.failures] == [("account_details", "user00007")]
    assert report.store_result(HOST, "account_details", "keyval").users_created == 11


@pytest.fixture
def pg_dest(tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from (sql_definition(p) for p in fresh_database("PostgreSQL", tmp_path))


# pubsub, host-level data, plan -----------------------------------------------------------------
def test_pubsub_service_nodes_bring_their_items(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    report = migrate(source, sqlite_dest)
    with open_backend(source) as src, open_backend(sqlite_dest) as dst:
        items = list(dst.archive_items(HOST, "pubsub_" + NODE, None))
        assert [i.key for i in items] == ["item1", "item2", "item3"]
        assert all(same_value(a, b) for a, b in zip(items, src.archive_items(HOST, "pubsub_" + NODE, None)))
        assert list(dst.archive_users(HOST, "pubsub_" + NODE)) == []  # host-level, not under a user
        assert same_value(dst.keyval_get(HOST, "pubsub_nodes", NODE), src.keyval_get(HOST, "pubsub_nodes", NODE))
        assert [i.key for i in dst.archive_items(HOST, "pep_" + PEP_NODE, "user00001")] == ["current"]
    node = report.store_result(HOST, "pubsub_" + NODE, "archive")
    assert (node.users_created, node.items_created) == (1, 3)


def test_host_level_data_is_migrated_once(source: dict[str, Any], sqlite_dest: dict[str, Any], tmp_path: Any):
    report = migrate(source, sqlite_dest)
    assert report.store_result(MUC, "persistent", "keyval").users_created == 1
    back = {"type": "internal", "path": str(tmp_path / "back")}
    again = migrate({**sqlite_dest, "hosts": HOSTS}, back)
    assert again.store_result(MUC, "persistent", "keyval").users_created == 1
    assert os.path.isfile(os.path.join(back["path"], "conference%2eexample%2eorg", "persistent.dat"))
    # A user "" would be a `<store>/.dat` file; none exists anywhere.
    assert [p for p in file_state(back["path"]) if os.path.basename(p) in (".dat", ".list")] == []
    with open_backend(back) as dst:
        assert list(dst.keyval_users(MUC, "persistent")) == []


def test_discovery_migrates_everything_the_source_holds(source: dict[str, Any], sqlite_dest: dict[str, Any]):
    plain = {k: v for k, v in source.items() if k != "hosts"}
    report = migrate(plain, sqlite_dest, verify=True)
    assert (report.failed, report.verified) == (False, True)
    assert report.discovered == {
        MUC: ["config", "muc_log-archive", "persistent"],
        HOST: sorted(s if t == "keyval" else f"{s}-archive" for s, t in ALL_STORES[HOST]),
    }
    assert_same_data(source, sqlite_dest)
    # A discovered plan, narrowed by host and store, through a SQL source.
    narrowed = migrate(
        {**sqlite_dest}, {"type": "internal", "path": source["path"] + "-n"}, hosts=[MUC], stores=["config"]
    )
    assert [(r.host, r.store) for r in narrowed.stores] == [(MUC, "config")]
    assert narrowed.discovered == {MUC: ["config", "muc_log-archive", "persistent"]}


def test_progress_events(source: dict[str, Any], tmp_path: Any):
    events = []
    migrate(source, {"type": "internal", "path": str(tmp_path / "d")}, progress=events.append, verify=True)
    assert [e.kind for e in events if e.kind in ("start", "done")] == ["start", "done", "start", "done"]
    assert {e.phase for e in events} == {"copy", "verify"}
    done = next(e for e in events if e.kind == "done")
    assert done.counts["hosts_done"] == done.counts["hosts_total"] == 2
    assert done.counts["stores_done"] == done.counts["stores_total"] == 13
    assert done.counts["items_done"] == 12 * 15 + 1 + 15 + 3 + 1  # mam, offline, muc_log, pubsub, pep
    roster_users = [e for e in events if e.kind == "user" and e.store == "roster" and e.phase == "copy"]
    assert [e.counts["users_done"] for e in roster_users] == list(range(1, 13))
    assert {e.counts["users_total"] for e in roster_users} == {12}


def test_warnings_from_the_backends_and_the_file_store_quota(
    source: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
):
    odd = os.path.join(source["path"], "example%2eorg", "roster", "Odd%41.dat")
    shutil.copy(os.path.join(source["path"], "example%2eorg", "roster", "user00004.dat"), odd)
    monkeypatch.setattr(engine, "FILE_ARCHIVE_LIMIT", 15)
    report = migrate(source, {"type": "internal", "path": str(tmp_path / "d")}, stores=["roster", "archive-archive"])
    assert any(w.startswith(odd + ": not in Prosody's file name encoding") for w in report.warnings)
    quota = [w for w in report.warnings if "storage_archive_item_limit" in w]
    assert len(quota) == 12
    assert "host 'example.org', store 'archive': user 'user00004' holds 15 items in the file store" in quota[3]
    assert not report.failed and report.store_result(HOST, "roster", "keyval").users_created == 12
