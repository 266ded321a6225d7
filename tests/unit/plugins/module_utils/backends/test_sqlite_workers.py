# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQLite3 as one writer of several (parallel workers): each batch held until its flush and written
in one short transaction, an entry refused there failing alone, a lost batch failing every entry."""

from __future__ import annotations

import sqlite3
import zlib
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import engine
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import dialects, open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import EntriesRefused
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend, SqlEncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.report import Report
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils import test_engine as engine_tests
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.test_sql_writes import (
    HOST,
    TRIGGERS,
    _execute,
    item_keys,
    message,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_engine import (
    ALL_STORES,
    assert_same_data,
    counts,
    migrate,
    snapshot,
)

# The engine tests' corpus (12 users, 15 messages each) and SQLite3 destination, as fixtures here too.
corpus_dir, source, sqlite_dest = engine_tests.corpus_dir, engine_tests.source, engine_tests.sqlite_dest
REFUSED = "user00005"  # worker 0's (of two), as is the host-level data
REFUSE = (
    f"CREATE TRIGGER refuse BEFORE INSERT ON prosodyarchive WHEN NEW.\"user\" = '{REFUSED}' "
    "AND NEW.\"store\" = 'archive' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
)


def _held(backend: SqlBackend) -> SqlBackend:
    """The backend in a batch, its writes held until the flush."""
    backend.start_batch()
    return backend


# the backend -----------------------------------------------------------------------------------
def test_a_held_batch_leaves_the_database_to_other_writers_until_the_flush(sqlite_params: dict[str, Any]) -> None:
    with SqlBackend(sqlite_params) as backend:
        backend.prepare_writes()
        backend.start_batch()
        backend.keyval_set(HOST, "s", "alice", {"a": "1"})
        backend.archive_write(HOST, "a", "alice", [message("k1", "hi")])
        other = sqlite3.connect(backend.dialect.database, timeout=0, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            other.execute("INSERT INTO prosody VALUES ('other.example', 'u', 's', 'k', 'string', 'v')")
            other.execute("COMMIT")
        finally:
            other.close()
        backend.flush()
        assert backend.keyval_get(HOST, "s", "alice") == {"a": "1"}
        assert backend.keyval_get("other.example", "s", "u") == {"k": "v"}
        assert [key for key, _xml in item_keys(backend, "a", "alice")] == ["k1"]


def test_entries_refused_at_the_flush_fail_alone(sqlite_params: dict[str, Any]) -> None:
    with SqlBackend(sqlite_params) as backend:
        backend.keyval_set(HOST, "s", "bad", {"old": "kept"})
        backend.archive_write(HOST, "a", "bad", [message("old1", "kept")])
        old_archive = item_keys(backend, "a", "bad")
        for statement in TRIGGERS["SQLite3"]:
            _execute(backend, statement)
        _held(backend)
        backend.keyval_set(HOST, "s", "a", {"x": "1"})
        backend.keyval_set(HOST, "s", "bad", {"x": "2"})  # held: the database has not seen it yet
        # A value that cannot be stored still fails in its own call, and is not held.
        with pytest.raises(SqlEncodeError, match="NUL"):
            backend.keyval_set(HOST, "s", "nul", {"x": "a\x00b"})
        backend.archive_write(HOST, "a", "bad", [message("old1", "new"), message("n", "new")])
        backend.archive_write(HOST, "a", "a", [message("k1", "1")])
        with pytest.raises(EntriesRefused) as refused:
            backend.flush()
        entries = refused.value.entries
        assert [(e.host, e.store, e.kind, e.user) for e in entries] == [
            (HOST, "s", "keyval", "bad"),
            (HOST, "a", "archive", "bad"),
        ]
        assert all("refused by the test" in e.reason and sqlite_params["database"] in e.reason for e in entries)
        assert "store 'a', user 'bad'" in str(refused.value)
        backend.flush()  # nothing left to write or to raise
    with SqlBackend(sqlite_params) as backend:
        assert backend.keyval_get(HOST, "s", "a") == {"x": "1"}
        assert backend.keyval_get(HOST, "s", "bad") == {"old": "kept"}  # its DELETE undone with its INSERT
        assert backend.keyval_get(HOST, "s", "nul") is None
        assert item_keys(backend, "a", "bad") == old_archive
        assert [key for key, _xml in item_keys(backend, "a", "a")] == ["k1"]


def test_a_read_of_a_held_entry_writes_the_batch_first(sqlite_params: dict[str, Any]) -> None:
    # A run reads an entry before writing it, never after; should a source list a user twice, the
    # second read must still see the first write. A refusal met then comes out of the next flush.
    with SqlBackend(sqlite_params) as backend:
        backend.prepare_writes()
        for statement in TRIGGERS["SQLite3"]:
            _execute(backend, statement)
        _held(backend)
        backend.keyval_set(HOST, "s", "bad", {"x": "2"})
        backend.keyval_set(HOST, "s", "a", {"x": "1"})
        backend.archive_write(HOST, "a", "a", [message("k1", "1")])
        assert backend.keyval_get(HOST, "s", "b") is None  # not held: nothing written for it
        assert backend.keyval_get(HOST, "s", "a") == {"x": "1"}
        assert [key for key, _xml in item_keys(backend, "a", "a")] == ["k1"]
        backend.keyval_set(HOST, "s", "c", {"x": "3"})
        with pytest.raises(EntriesRefused, match="user 'bad'") as refused:
            backend.flush()
        assert [e.user for e in refused.value.entries] == ["bad"]
        assert backend.keyval_get(HOST, "s", "c") == {"x": "3"}


# runs --------------------------------------------------------------------------------------------
def sqlite_rows(dest: dict[str, Any]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Every row of both tables as stored (bytes), archives in their order, without sort_id."""
    conn = sqlite3.connect(dest["database"])
    conn.text_factory = bytes
    try:
        keyval = conn.execute('SELECT * FROM "prosody" ORDER BY 1, 2, 3, 4, 5, 6').fetchall()
        archive = conn.execute(
            'SELECT "host", "user", "store", "when", "with", "key", "type", "value" FROM "prosodyarchive" '
            'ORDER BY "host", "user", "store", "sort_id"'
        ).fetchall()
    finally:
        conn.close()
    return keyval, archive


def assert_counts_are_the_rows(report: Report, dest: dict[str, Any]) -> None:
    """Into a new database: each store's created counts are the entries and items it holds."""
    conn = sqlite3.connect(dest["database"])
    try:
        for result in report.stores:
            table = "prosodyarchive" if result.type == "archive" else "prosody"
            entries, items = conn.execute(
                f'SELECT COUNT(DISTINCT "user"), COUNT(*) FROM "{table}" WHERE "host" = ? AND "store" = ?',
                (result.host, result.store),
            ).fetchone()
            assert result.users_created == entries, result
            if result.type == "archive":
                assert result.items_created == items, result
    finally:
        conn.close()


def _worker(user: str | None) -> int:
    """Which of two workers takes a user (engine._Run._mine; host-level data is worker 0's)."""
    return 0 if user is None else zlib.crc32(user.encode("utf-8")) % 2


def _refusing(dest: dict[str, Any]) -> None:
    with open_backend(dest) as dst:
        dst.prepare_writes()
        dst._conn.execute(REFUSE)


def test_workers_write_the_rows_one_process_writes(
    source: dict[str, Any], sqlite_dest: dict[str, Any], tmp_path: Any
) -> None:
    alone = {**sqlite_dest, "database": str(tmp_path / "alone.sqlite")}
    one = migrate(source, alone, jobs=1)
    report = migrate(source, sqlite_dest, jobs=2, verify=True)
    assert (report.failed, report.verified, report.failures) == (False, True, [])
    assert counts(report) == counts(one)
    assert sqlite_rows(sqlite_dest) == sqlite_rows(alone)
    assert_counts_are_the_rows(report, sqlite_dest)
    again = migrate(source, sqlite_dest, jobs=2)
    assert (again.changed, again.failed) == (False, False)


def test_an_entry_refused_at_the_flush_fails_alone_and_the_run_goes_on(
    source: dict[str, Any], sqlite_dest: dict[str, Any]
) -> None:
    _refusing(sqlite_dest)
    report = migrate(source, sqlite_dest, jobs=2, keep_going=True)
    assert (report.failed, report.stopped) == (True, False)
    assert [(f.host, f.store, f.user, f.scope) for f in report.failures] == [(HOST, "archive", REFUSED, "user")]
    reason = report.failures[0].reason
    assert reason.startswith("refused when its batch was written: ") and "refused by the test" in reason
    archive = report.store_result(HOST, "archive", "archive")
    assert (archive.users_failed, archive.items_failed) == (1, 15)
    assert_counts_are_the_rows(report, sqlite_dest)
    # Everything else is stored: with the trigger gone, a re-run writes that archive alone.
    with open_backend(sqlite_dest) as dst:
        dst._conn.execute("DROP TRIGGER refuse")
    again = migrate(source, sqlite_dest, jobs=2)
    assert (again.changed, again.failed) == (True, False)
    assert counts(again)["users_created"] == 1 and counts(again)["items_created"] == 15
    assert again.store_result(HOST, "archive", "archive").users_created == 1
    assert_same_data(source, sqlite_dest)
    third = migrate(source, sqlite_dest, jobs=2)
    assert (third.changed, third.failed) == (False, False)


def test_an_entry_refused_at_the_flush_stops_the_run_at_the_end_of_its_batch(
    source: dict[str, Any], sqlite_dest: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "BATCH_SECONDS", 3600.0)  # a batch per store, however slow the machine
    _refusing(sqlite_dest)
    began: list[tuple[str, str]] = []  # the stores, in the plan's order, as the first worker begins each
    report = migrate(
        source, sqlite_dest, jobs=2, progress=lambda e: e.kind == "store" and began.append((e.host, e.store))
    )
    assert (report.failed, report.stopped) == (True, True)
    assert [(f.host, f.store, f.user) for f in report.failures] == [(HOST, "archive", REFUSED)]
    archive = report.store_result(HOST, "archive", "archive")
    assert (archive.users_failed, archive.items_failed) == (1, 15)
    assert_counts_are_the_rows(report, sqlite_dest)
    # The refusing worker (REFUSED's) wrote its batch whole but for the refused entry, and went
    # no further: it holds none of its entries in the stores after it (the other worker may have
    # begun one more before it saw the stop).
    assert (HOST, "archive") in began
    done = began[: began.index((HOST, "archive")) + 1]
    with open_backend(source) as src, open_backend(sqlite_dest) as dst:
        mine = [e[:4] for e in snapshot(src, ALL_STORES) if e[4] and _worker(e[3]) == 0]
        stored = {e[:4] for e in snapshot(dst, ALL_STORES) if e[4]}
    batch = [key for key in mine if key[:3] == (HOST, "archive", "archive") and key[3] != REFUSED]
    # (A pubsub node's items are the worker's that has the node, not host-level data's.)
    later = [key for key in mine if key[:2] not in done and not key[1].startswith(("pubsub_", "pep_"))]
    assert batch and set(batch) <= stored
    assert later and not set(later) & stored
    assert (HOST, "archive", "archive", REFUSED) not in stored
    finish = migrate(source, sqlite_dest, jobs=2, keep_going=True)
    assert [(f.store, f.user) for f in finish.failures] == [("archive", REFUSED)]


# A write to the roster leaves a deferred foreign key unmet, so the COMMIT of a transaction holding
# one fails (and its redo on a new connection too), as a failing disk would make it fail.
FAILING_COMMIT = (
    "CREATE TABLE missing (id INTEGER PRIMARY KEY)",
    "CREATE TABLE lost (id INTEGER REFERENCES missing (id) DEFERRABLE INITIALLY DEFERRED)",
    "CREATE TRIGGER lose AFTER INSERT ON prosody WHEN NEW.\"store\" = 'roster' BEGIN INSERT INTO lost VALUES (1); END",
)


def test_a_lost_batch_fails_every_entry_of_it(
    source: dict[str, Any], sqlite_dest: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    with open_backend(sqlite_dest) as dst:
        dst.prepare_writes()
        for statement in FAILING_COMMIT:
            dst._conn.execute(statement)
    connect = dialects.SQLite3.connect

    def checking_foreign_keys(dialect: dialects.SQLite3, create: bool) -> Any:
        conn = connect(dialect, create)
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    monkeypatch.setattr(dialects.SQLite3, "connect", checking_foreign_keys)
    report = migrate(source, sqlite_dest, jobs=2, keep_going=True)
    with open_backend(source) as src:
        users = set(src.keyval_users(HOST, "roster"))
    assert (report.failed, report.stopped) == (True, False)
    assert {(f.store, f.user) for f in report.failures} == {("roster", user) for user in users}
    assert len(report.failures) == len(users)
    assert all("the batch holding the write was lost" in f.reason for f in report.failures)
    assert all("FOREIGN KEY constraint failed" in f.reason for f in report.failures)
    roster = report.store_result(HOST, "roster", "keyval")
    assert (roster.users_created, roster.users_failed) == (0, len(users))
    assert_counts_are_the_rows(report, sqlite_dest)
    monkeypatch.undo()
    with open_backend(sqlite_dest) as dst:
        dst._conn.execute("DROP TRIGGER lose")
    again = migrate(source, sqlite_dest, jobs=2)
    assert (again.changed, again.failed) == (True, False)
    assert counts(again)["users_created"] == again.store_result(HOST, "roster", "keyval").users_created == len(users)
    assert_same_data(source, sqlite_dest)
    third = migrate(source, sqlite_dest, jobs=2)
    assert (third.changed, third.failed) == (False, False)
