# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A store the destination holds nothing of is not read entry by entry (Backend.store_empty):
a first run into an empty database, then runs into a partly emptied one, give exactly the
source, with exact counts, on every SQL server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.report import Report
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils import test_engine as engine_tests
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    DRIVERS,
    fresh_database,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_engine import (
    HOST,
    MUC,
    NODE,
    PEP_NODE,
    assert_same_data,
    migrate,
    sql_definition,
)

# The pubsub nodes' archives: stores of their own, not in the plan, read as ever.
NODE_READS = {("pubsub_" + NODE, None), ("pep_" + PEP_NODE, "user00001")}


# The engine tests' corpus and source, as fixtures of this module too.
corpus_dir, source = engine_tests.corpus_dir, engine_tests.source


@pytest.fixture(params=DRIVERS)
def sql_dest(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from (sql_definition(p) for p in fresh_database(request.param, tmp_path))


class ReadSpy:
    """Records the destination's reads of entries, (store, user), while a run goes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[str, Any]] = []
        for name in ("keyval_get", "archive_items"):
            monkeypatch.setattr(SqlBackend, name, self._wrap(getattr(SqlBackend, name)))

    def _wrap(self, method: Any) -> Any:
        def spy(backend: SqlBackend, host: str, store: str, user: Any) -> Any:
            self.reads.append((store, user))
            return method(backend, host, store, user)

        return spy

    def stores(self) -> set[str]:
        return {store for store, _user in self.reads}


def spied(monkeypatch: pytest.MonkeyPatch, source: dict[str, Any], dest: dict[str, Any]) -> tuple[Report, ReadSpy]:
    with monkeypatch.context() as patch:
        spy = ReadSpy(patch)
        report = migrate(source, dest)
    return report, spy


def delete_rows(dest: dict[str, Any], table: str, **where: str) -> None:
    """Delete rows behind the backends' back, as another tool (or a DBA) would."""
    with open_backend(dest) as backend:
        assert isinstance(backend, SqlBackend)
        condition, params = backend._where(**where)
        with backend._tx() as cur:
            cur.execute(backend.dialect.sql(f'DELETE FROM "{table}" WHERE {condition}'), params)


def store_counts(report: Report, host: str, store: str, type_: str) -> tuple[int, ...]:
    r = report.store_result(host, store, type_)
    return (r.users_created, r.users_updated, r.users_unchanged, r.users_failed, r.items_created, r.items_unchanged)


def test_empty_then_partly_emptied_destination(
    source: dict[str, Any], sql_dest: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    first, spy = spied(monkeypatch, source, sql_dest)
    assert (first.failed, first.failures) == (False, [])
    # Into an empty database, the plan's stores were not read at all: only the node archives were.
    assert set(spy.reads) == NODE_READS
    assert assert_same_data(source, sql_dest) > 80
    totals = first.totals()
    assert totals["users_updated"] == totals["users_unchanged"] == totals["items_unchanged"] == 0

    with open_backend(source) as src:
        roster = sorted(src.keyval_users(HOST, "roster"))
        archive = sorted(src.archive_users(HOST, "archive"))
        gone_user, part_user = archive[1], archive[2]
        gone_items = len(list(src.archive_items(HOST, "archive", gone_user)))
        part_keys = [item.key for item in src.archive_items(HOST, "archive", part_user)]
    # Empty some stores entirely (one holding host-level data only), and parts of others.
    with open_backend(sql_dest) as dst:
        for user in roster[:2]:
            dst.keyval_set(HOST, "roster", user, None)
        dst.keyval_set(HOST, "roster", roster[2], {"someone@example.net": {"name": "changed", "groups": {}}})
        for user in sorted(dst.keyval_users(HOST, "vcard")):
            dst.keyval_set(HOST, "vcard", user, None)
        dst.keyval_set(MUC, "persistent", None, None)
    delete_rows(sql_dest, "prosodyarchive", host=MUC, store="muc_log")
    delete_rows(sql_dest, "prosodyarchive", host=HOST, store="archive", user=gone_user)
    for key in part_keys[3:6]:
        delete_rows(sql_dest, "prosodyarchive", host=HOST, store="archive", user=part_user, key=key)
    delete_rows(sql_dest, "prosodyarchive", host=HOST, store="pubsub_" + NODE)

    second, spy = spied(monkeypatch, source, sql_dest)
    assert (second.failed, second.failures) == (False, [])
    assert {"vcard", "persistent", "muc_log"}.isdisjoint(spy.stores())  # emptied: not read
    assert {"roster", "archive", "accounts"} <= spy.stores()  # still holding data: read entry by entry
    count = first.store_result(HOST, "roster", "keyval").users_created
    assert store_counts(second, HOST, "roster", "keyval") == (2, 1, count - 3, 0, 0, 0)
    vcard = first.store_result(HOST, "vcard", "keyval").users_created
    assert store_counts(second, HOST, "vcard", "keyval") == (vcard, 0, 0, 0, 0, 0)
    assert store_counts(second, MUC, "persistent", "keyval") == (1, 0, 0, 0, 0, 0)
    muc = first.store_result(MUC, "muc_log", "archive")
    assert store_counts(second, MUC, "muc_log", "archive") == (muc.users_created, 0, 0, 0, muc.items_created, 0)
    items = first.store_result(HOST, "archive", "archive").items_created
    created = gone_items + 3
    assert store_counts(second, HOST, "archive", "archive") == (1, 1, len(archive) - 2, 0, created, items - created)
    assert store_counts(second, HOST, "pubsub_" + NODE, "archive") == (1, 0, 0, 0, 3, 0)
    accounts = first.store_result(HOST, "accounts", "keyval").users_created
    assert store_counts(second, HOST, "accounts", "keyval")[:3] == (0, 0, accounts)
    assert_same_data(source, sql_dest)
    third = migrate(source, sql_dest)
    assert (third.changed, third.failed) == (False, False)


def test_a_user_listed_twice_is_compared_the_second_time(
    source: dict[str, Any], sql_dest: dict[str, Any], monkeypatch: pytest.MonkeyPatch
):
    # A source that lists a user again (or out of order) ends the shortcut for the rest of the
    # store: the entry written a moment ago is read back (in the open batch) and found unchanged.
    def twice(listing: Any) -> Any:
        def users(backend: InternalBackend, host: str, store: str) -> Iterator[str]:
            names = sorted(listing(backend, host, store))
            return iter(names[:5] + names[4:] if store in ("roster", "archive") else names)

        return users

    with open_backend(source) as src:
        roster = sorted(src.keyval_users(HOST, "roster"))
        archive = sorted(src.archive_users(HOST, "archive"))
        repeated_items = len(list(src.archive_items(HOST, "archive", archive[4])))
    with monkeypatch.context() as patch:
        patch.setattr(InternalBackend, "keyval_users", twice(InternalBackend.keyval_users))
        patch.setattr(InternalBackend, "archive_users", twice(InternalBackend.archive_users))
        report = migrate(source, sql_dest)
    assert (report.failed, report.failures) == (False, [])
    assert store_counts(report, HOST, "roster", "keyval") == (len(roster), 0, 1, 0, 0, 0)
    items = report.store_result(HOST, "archive", "archive").items_created
    assert store_counts(report, HOST, "archive", "archive") == (len(archive), 0, 1, 0, items, repeated_items)
    assert_same_data(source, sql_dest)


@pytest.mark.parametrize("jobs", [1, 2])
def test_node_item_stores_named_in_the_plan_too_are_not_doubled(
    source: dict[str, Any], sql_dest: dict[str, Any], jobs: int
):
    # The destination's tables were empty as the run began, but the node lists' items reach their
    # own stores before those stores' turn: named in the plan as well, they are compared, not
    # appended a second time. With two workers, a service node's items (host-level data) are the
    # node's worker's in both stores (the first worker took them too: a unique index refused
    # them, MySQL's, not unique, would have held them twice).
    hosts = {HOST: ["pubsub_nodes-pubsub", "pep-pubsub", f"pubsub_{NODE}-archive", f"pep_{PEP_NODE}-archive"]}
    report = migrate(dict(source, hosts=hosts), sql_dest, jobs=jobs)
    assert (report.failed, report.failures) == (False, [])
    with open_backend(source) as src, open_backend(sql_dest) as dst:
        for store, user in NODE_READS:
            assert [i.key for i in dst.archive_items(HOST, store, user)] == [
                i.key for i in src.archive_items(HOST, store, user)
            ]
    assert store_counts(report, HOST, "pubsub_" + NODE, "archive")[2] == 1  # the node list wrote it; unchanged here
    again = migrate(dict(source, hosts=hosts), sql_dest)
    assert (again.changed, again.failed) == (False, False)


# A file destination -----------------------------------------------------------------------------
def test_file_store_emptiness(tmp_path: Any) -> None:
    root = tmp_path / "data"
    backend = InternalBackend({"path": str(root)})
    assert backend.kinds_empty() == {"keyval", "archive"}  # not even created yet
    assert backend.store_empty(HOST, "roster", "keyval")
    host = root / "example%2eorg"
    (host / "roster").mkdir(parents=True)
    (host / "roster" / ".~xmpp-prosody-1-00.tmp").write_bytes(b"")  # a temporary file is no data
    (host / "archive").mkdir()
    (host / "archive" / "alice.dat").write_bytes(b"return {};")  # a keyval file where archives go
    assert backend.kinds_empty() == {"archive"}
    assert backend.store_empty(HOST, "roster", "keyval") and backend.store_empty(HOST, "archive", "archive")
    assert not backend.store_empty(HOST, "archive", "keyval")
    (host / "muc_log.list").write_bytes(b"")  # host-level data, even empty, is data
    assert backend.kinds_empty() == frozenset()
    assert not backend.store_empty(HOST, "muc_log", "archive") and backend.store_empty(HOST, "muc_log", "keyval")
    assert backend.store_empty("other.example", "roster", "keyval")


def test_empty_file_destination_is_not_read_entry_by_entry(
    source: dict[str, Any], tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    (tmp_path / "dest").mkdir()
    reads: list[tuple[str, Any]] = []

    def spy(method: Any) -> Any:
        def read(backend: InternalBackend, host: str, store: str, user: Any) -> Any:
            if backend.path == dest["path"]:
                reads.append((store, user))
            return method(backend, host, store, user)

        return read

    with monkeypatch.context() as patch:
        for name in ("keyval_get", "archive_items"):
            patch.setattr(InternalBackend, name, spy(getattr(InternalBackend, name)))
        first = migrate(source, dest)
    assert (first.failed, first.failures) == (False, [])
    assert set(reads) <= NODE_READS  # the plan's stores, empty as the run began, were not read
    assert assert_same_data(source, dest) > 80
    totals = first.totals()
    assert totals["users_updated"] == totals["users_unchanged"] == totals["items_unchanged"] == 0

    with open_backend(source) as src:
        roster = sorted(src.keyval_users(HOST, "roster"))
    with open_backend(dest) as dst:
        dst.keyval_set(HOST, "roster", roster[0], {"someone@example.net": {"name": "changed", "groups": {}}})
    reads.clear()
    with monkeypatch.context() as patch:
        for name in ("keyval_get", "archive_items"):
            patch.setattr(InternalBackend, name, spy(getattr(InternalBackend, name)))
        second = migrate(source, dest)
    assert ("roster", roster[0]) in reads  # holding data now: read, compared and mended
    assert store_counts(second, HOST, "roster", "keyval")[:3] == (0, 1, len(roster) - 1)
    assert_same_data(source, dest)
