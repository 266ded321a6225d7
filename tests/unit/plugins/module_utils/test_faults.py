# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Faults during a run: the migrator killed, the database connection dropped, a destination that
refuses writes, a source that changes under the run. After each, a re-run leaves the destination
equal to the source, value by value through the backends."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any
from unittest import mock

import psycopg
import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import dialects, open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, ProgressEvent, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    MY,
    fresh_database,
    my_admin,
    pg_admin,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.reliability import (
    HOST,
    WINDOW,
    ChildRun,
    assert_clean_file_store,
    assert_same_data,
    make_corpus,
    tree_hashes,
)

DESTINATIONS = ("files", "SQLite3", "PostgreSQL", "MySQL")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    """40 users x 20 messages (about 270 entries, 900 archive items), never written to."""
    return make_corpus(str(tmp_path_factory.mktemp("faults") / "data"), 40, 20)


@pytest.fixture
def source(corpus: str) -> dict[str, Any]:
    return {"type": "internal", "path": corpus}


@pytest.fixture
def own_source(corpus: str, tmp_path: Any) -> dict[str, Any]:
    """A copy of the corpus this test may change."""
    path = str(tmp_path / "source")
    shutil.copytree(corpus, path)
    return {"type": "internal", "path": path}


def destination(kind: str, tmp_path: Any) -> Iterator[dict[str, Any]]:
    if kind == "files":
        yield {"type": "internal", "path": str(tmp_path / "dest")}
    else:
        for params in fresh_database(kind, tmp_path):
            yield {"type": "sql", **params}


@pytest.fixture(params=DESTINATIONS)
def dest(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    yield from destination(request.param, tmp_path)


def assert_complete(source: dict[str, Any], dest: dict[str, Any]) -> None:
    """The destination holds the source exactly, no file half-written, and a new run writes nothing."""
    assert assert_same_data(source, dest) > 250
    if dest["type"] == "internal":
        assert assert_clean_file_store(dest["path"]) > 250
    again = run_migration(source, dest, Options())
    assert (again.changed, again.failed) == (False, False)


# killed ----------------------------------------------------------------------------------------
def test_killed_runs_then_a_rerun_give_the_source_exactly(source: dict[str, Any], dest: dict[str, Any]):
    # Killed three times: after a few entries, later on, and after a seeded random number of them,
    # each kill landing wherever the child happens to be by then (at most WINDOW entries further),
    # mid-write included. (The third was a kill after a fixed time; batched commits made the run
    # fast enough to finish before it.)
    first = ChildRun(source, dest).run(kill_after=15)
    second = ChildRun(source, dest).run(kill_after=120)
    third = ChildRun(source, dest).run(kill_after=random.Random(20260).randint(130, 250))
    assert first.killed and second.killed and third.killed
    assert (first.report, second.report, third.report) == (None, None, None)
    final = ChildRun(source, dest).run()
    assert final.report is not None and (final.report["failed"], final.report["failures"]) == (False, [])
    # Entries past the third kill's reach were never written, so the final run had work left.
    assert third.events + WINDOW + 1 < final.events and final.report["changed"]
    assert_complete(source, dest)


def test_killed_at_random_moments_into_files(source: dict[str, Any], tmp_path: Any):
    # Many short-lived runs into the file store, each killed at a seeded random moment, mostly
    # mid-write; whatever they leave, the final run finishes the copy and cleans up after them.
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    started = time.monotonic()
    ChildRun(source, {"type": "internal", "path": str(tmp_path / "scratch")}).run()
    whole = time.monotonic() - started  # a complete run, interpreter start included
    rng = random.Random(4242)
    kills = sum(ChildRun(source, dest).run(kill_at=rng.uniform(0.15, 0.7) * whole).killed for _unused in range(8))
    assert kills >= 3  # later runs have less left to do and may finish first
    final = ChildRun(source, dest).run()
    assert final.report is not None and not final.report["failed"]
    assert_complete(source, dest)


# connection dropped ----------------------------------------------------------------------------
def _drop_connection(params: dict[str, Any]) -> int:
    """Kill the server side of every connection to the test's own database; how many were killed."""
    if params["driver"] == "PostgreSQL":
        with pg_admin() as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (params["database"],),
            ).fetchall()
        return len(rows)
    admin = my_admin()
    try:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s AND id <> CONNECTION_ID()",
                (params["database"],),
            )
            ids = [row[0] for row in cur.fetchall()]
            for id_ in ids:
                cur.execute(f"KILL {int(id_)}")
    finally:
        admin.close()
    return len(ids)


class Dropper:
    """A progress callback that drops the destination's connection after the Nth roster entry."""

    def __init__(self, params: dict[str, Any], after: int) -> None:
        self.params, self.after = params, after
        self.seen: list[str] = []
        self.dropped = 0

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "user" and event.store == "roster" and event.phase == "copy":
            self.seen.append(event.user)
            if len(self.seen) == self.after:
                self.dropped = _drop_connection(self.params)


def _insert_dropping(params: dict[str, Any], dialect: type) -> Any:
    """Stands in for dialect.insert_many: drops the connection at its first call, then inserts."""
    insert_many = dialect.insert_many
    dropped: list[int] = []

    def insert(self: Any, cur: Any, table: str, columns: Any, rows: list[Any]) -> None:
        if not dropped:
            dropped.append(_drop_connection(params))
        insert_many(self, cur, table, columns, rows)

    return mock.patch.object(dialect, "insert_many", insert), dropped


@pytest.mark.parametrize("driver", ["PostgreSQL", "MySQL"])
@pytest.mark.parametrize("keep_going", [False, True])
@pytest.mark.parametrize("when", ["held", "writing"])
def test_connection_dropped_mid_run(source: dict[str, Any], tmp_path: Any, driver: str, keep_going: bool, when: str):
    # A batch is held until its flush: dropped while it is held (between two entries), the batch
    # begins on a new connection; dropped while the batch goes in, it is written again on a new
    # one. Either way nothing fails and nothing is lost.
    for params in fresh_database(driver, tmp_path):
        dest = {"type": "sql", **params}
        drop = Dropper(params, after=10 if when == "held" else 10**9)
        patch, dropped = _insert_dropping(params, type(dialects.for_params(params)))
        with patch if when == "writing" else nullcontext():
            report = run_migration(source, dest, Options(keep_going=keep_going, progress=drop))
        assert (drop.dropped, len(dropped)) == ((1, 0) if when == "held" else (0, 1))
        assert dropped in ([], [1])  # the one connection of the run
        assert (report.failed, report.failures) == (False, [])
        with open_backend(source) as src:
            users = sorted(src.keyval_users(HOST, "roster"))
        assert report.store_result(HOST, "roster", "keyval").users_created == len(users)
        assert_same_data(source, dest)
        again = run_migration(source, dest, Options())
        assert (again.failed, again.changed) == (False, False)


class DropAndRefuse(Dropper):
    """Drops the connection, and the first connection attempt after that fails: the batch's
    earlier writes cannot be done again on a new connection."""

    def __init__(self, params: dict[str, Any], after: int) -> None:
        super().__init__(params, after)
        self.refused = 0
        self._connect = dialects.PostgreSQL.connect

    def connect(self, dialect: Any, create: bool) -> Any:
        """Stands in for PostgreSQL.connect."""
        if self.dropped and not self.refused:
            self.refused += 1
            raise dialects.SqlConnectError(f"cannot connect to {dialect.describe()}: refused by the test")
        return self._connect(dialect, create)


def test_connection_dropped_and_the_batch_cannot_be_redone(source: dict[str, Any], tmp_path: Any):
    # The roster users held in the batch at the drop are lost with it: each is reported as a
    # failure of its own (never counted as created), the others are stored.
    for params in fresh_database("PostgreSQL", tmp_path):
        dest = {"type": "sql", **params}
        drop = DropAndRefuse(params, after=10)

        def stand_in(dialect: Any, create: bool, drop: DropAndRefuse = drop) -> Any:
            return drop.connect(dialect, create)

        with mock.patch.object(dialects.PostgreSQL, "connect", stand_in):
            report = run_migration(source, dest, Options(keep_going=True, progress=drop))
        assert (drop.dropped, drop.refused) == (1, 1)
        with open_backend(source) as src:
            users = sorted(src.keyval_users(HOST, "roster"))
        failed = {f.user: f.reason for f in report.failures}
        assert all(f.store == "roster" and f.scope == "user" for f in report.failures)
        # The batch held at the drop could not begin on a new connection: each of its users fails.
        assert failed and all("the batch holding the write was lost" in r for r in failed.values())
        assert all("refused by the test" in r for r in failed.values())
        assert set(failed) <= set(drop.seen)
        roster = report.store_result(HOST, "roster", "keyval")
        assert roster.users_failed == len(failed)
        assert roster.users_created == len(users) - len(failed)
        # Nothing silently lost: every roster user is stored, or reported.
        with open_backend(dest) as dst:
            stored = {u for u in users if dst.keyval_get(HOST, "roster", u) is not None}
        assert stored | set(failed) == set(users) and not stored & set(failed)
        again = run_migration(source, dest, Options())
        assert (again.failed, again.changed) == (False, True)
        assert_same_data(source, dest)


def test_a_refused_entry_is_undone_alone_in_its_batch(source: dict[str, Any], tmp_path: Any):
    # The server refuses one user's rows (a trigger) in the middle of a batch: that user's DELETE is
    # rolled back with its INSERT (its old value stays), the users around it in the batch are stored.
    for params in fresh_database("SQLite3", tmp_path):
        dest = {"type": "sql", **params}
        assert not run_migration(source, dest, Options()).failed
        with open_backend(source) as src:
            users = sorted(src.keyval_users(HOST, "roster"))
        refused, others = users[5], [users[4], users[6], users[7]]
        with open_backend(dest) as dst:
            dst.keyval_set(HOST, "roster", refused, {"old": {"name": "kept"}})
            for user in others:
                dst.keyval_set(HOST, "roster", user, None)
            dst._conn.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON prosody WHEN NEW.user = ? AND NEW.store = 'roster' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END".replace("?", f"'{refused}'")
            )
        report = run_migration(source, dest, Options(keep_going=True))
        assert [(f.store, f.user) for f in report.failures] == [("roster", refused)]
        assert "refused by the test" in report.failures[0].reason
        roster = report.store_result(HOST, "roster", "keyval")
        assert (roster.users_created, roster.users_updated, roster.users_failed) == (3, 0, 1)
        with open_backend(source) as src, open_backend(dest) as dst:
            assert dst.keyval_get(HOST, "roster", refused) == {"old": {"name": "kept"}}
            for user in others:
                assert dst.keyval_get(HOST, "roster", user) == src.keyval_get(HOST, "roster", user)


# the destination refuses writes -------------------------------------------------------------------
@pytest.fixture
def immutable(tmp_path: Any) -> Iterator[list[str]]:
    """Directories made immutable (chattr +i: root ignores mode bits, not this), released afterwards."""
    paths: list[str] = []
    yield paths
    for path in paths:
        subprocess.run(["chattr", "-R", "-i", path], check=True)


def test_read_only_file_destination(source: dict[str, Any], tmp_path: Any, immutable: list[str]):
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    assert not run_migration(source, dest, Options(stores=["roster"])).failed
    subprocess.run(["chattr", "-R", "+i", dest["path"]], check=True)
    immutable.append(dest["path"])
    before_source, before_dest = tree_hashes(source["path"]), tree_hashes(dest["path"])
    for keep_going in (False, True):
        report = run_migration(source, dest, Options(keep_going=keep_going, hosts=[HOST]))
        assert report.failed and report.failures
        first = report.failures[0]
        assert (first.host, first.store) == (HOST, "account_details")
        assert first.reason.startswith(f"cannot write {dest['path']}/example%2eorg/account_details/")
        assert "Operation not permitted" in first.reason
        assert report.stopped is not keep_going
        if keep_going:
            # Every entry still to write failed on its own; the roster, already there, did not.
            assert report.store_result(HOST, "roster", "keyval").users_failed == 0
            assert report.store_result(HOST, "roster", "keyval").users_unchanged == 40
    assert tree_hashes(source["path"]) == before_source
    assert tree_hashes(dest["path"]) == before_dest


@pytest.fixture
def select_only(tmp_path: Any, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """A database holding the tables, and a login allowed to SELECT from them only."""
    driver = request.param
    role = "pm_ro_" + uuid.uuid4().hex[:10]
    password = "ro-Secret-" + uuid.uuid4().hex[:8]
    for params in fresh_database(driver, tmp_path):
        with SqlBackend({"type": "sql", **params}) as backend:  # the tables, as a first run makes them
            backend.keyval_set("other.example", "roster", "x", {"a": 1})
            backend.archive_write("other.example", "archive", "x", [ArchiveItem("k", Element("m"), 1, None)])
        if driver == "PostgreSQL":
            with pg_admin() as admin:
                admin.execute(f"CREATE ROLE {role} LOGIN")
            with psycopg.connect(
                host=params["host"], port=params["port"], user=params["username"], dbname=params["database"]
            ) as conn:
                conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
                conn.commit()
            try:
                yield {**params, "username": role, "password": password}
            finally:
                with pg_admin() as admin:
                    admin.execute(f'DROP DATABASE IF EXISTS "{params["database"]}" WITH (FORCE)')
                    admin.execute(f"DROP ROLE {role}")
        else:
            admin = my_admin()
            accounts = [f"'{role}'@'%%'", f"'{role}'@'localhost'"]
            try:
                with admin.cursor() as cur:
                    for account in accounts:
                        cur.execute(f"CREATE USER {account} IDENTIFIED BY %s", (password,))
                        cur.execute(f"GRANT SELECT ON `{params['database']}`.* TO {account}", ())
                yield {**params, "username": role, "password": password, "host": MY["host"]}
            finally:
                with admin.cursor() as cur:
                    for account in accounts:
                        cur.execute(f"DROP USER IF EXISTS {account}", ())
                admin.close()


@pytest.mark.parametrize("select_only", ["PostgreSQL", "MySQL"], indirect=True)
def test_database_login_without_insert_rights(source: dict[str, Any], select_only: dict[str, Any]):
    dest = {"type": "sql", **select_only}
    before = tree_hashes(source["path"])
    report = run_migration(source, dest, Options(hosts=[HOST]))
    # The first batch is refused entry by entry, each user a failure of its own; the run stops there.
    assert (report.failed, report.stopped) == (True, True)
    assert report.failures and all(
        (f.host, f.store, f.scope) == (HOST, "account_details", "user") and f.user is not None for f in report.failures
    )
    for failure in report.failures:
        assert f"database {select_only['database']!r}" in failure.reason
        assert "denied" in failure.reason
    assert report.store_result(HOST, "account_details", "keyval").users_created == 0
    assert report.changed is False  # every write was refused: nothing changed
    assert select_only["password"] not in repr(report.to_dict())
    assert tree_hashes(source["path"]) == before
    with open_backend(dest) as dst:
        assert list(dst.hosts()) == ["other.example"]  # nothing of the run's went in


# the source changes during the run ---------------------------------------------------------------
def _extra(user: str) -> ArchiveItem:
    return ArchiveItem("extra-" + user, Element("message", {"to": user}), 1800000000, None)


def test_source_changing_during_the_run(own_source: dict[str, Any], tmp_path: Any):
    dest = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "dest.sqlite")}
    with open_backend(own_source) as src:
        users = sorted(src.archive_users(HOST, "archive"))
    done, pending = users[0], users[-1]
    stores_seen: list[str] = []

    def change(event: ProgressEvent) -> None:
        # While the archive store is being copied, after its 5th user: one more item for a user
        # whose archive is done and for one not reached yet, a user new to this store, and a user
        # new to the roster store, which comes later.
        if event.kind == "store":
            stores_seen.append(event.store)
        if event.kind == "user" and event.store == "archive" and event.user == users[4]:
            with open_backend(own_source) as src:
                for user in (done, pending, "zz-newcomer"):
                    src.archive_write(HOST, "archive", user, [_extra(user)])
                src.keyval_set(HOST, "roster", "zz-newcomer", {"a@b": {"subscription": "both", "groups": {}}})

    report = run_migration(own_source, dest, Options(progress=change))
    assert not report.failed
    assert stores_seen.index("archive") < stores_seen.index("roster")
    with open_backend(dest) as dst:
        # Seen: what changed in entries the run had not read yet, in this store or a later one.
        assert [i.key for i in dst.archive_items(HOST, "archive", pending)][-1] == "extra-" + pending
        assert dst.keyval_get(HOST, "roster", "zz-newcomer") is not None
        # Not seen: an entry already copied, and a user added to the store being copied (its
        # users were listed when it began).
        assert "extra-" + done not in [i.key for i in dst.archive_items(HOST, "archive", done)]
        assert "zz-newcomer" not in list(dst.archive_users(HOST, "archive"))
    second = run_migration(own_source, dest, Options(verify=True))
    assert (second.failed, second.verified, second.changed) == (False, True, True)
    archive = second.store_result(HOST, "archive", "archive")
    assert (archive.users_created, archive.users_updated, archive.items_created) == (1, 1, 2)
    assert_same_data(own_source, dest)
