# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prosody's indexes on the tables a run creates: built once the rows are in where that loads
faster (SQLite3, PostgreSQL), up front on MySQL and for a run that verifies; a run stopped before
it built them leaves them to the next run, which builds them before it reads; a build that fails
names the index and the table. Every run ends with exactly Prosody's indexes and the source's data."""

from __future__ import annotations

from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.dialects import (
    ARCHIVE_COLUMNS,
    INDEXES,
    SqlDatabaseError,
    for_params,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.report import ProgressEvent
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils import test_engine as engine_tests
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    DRIVERS,
    fresh_database,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_engine import (
    HOST,
    assert_same_data,
    migrate,
    sql_definition,
)

PROSODYS = {(table, name) for name, table, *_rest in INDEXES}

# The engine tests' corpus, source and fresh SQL destinations, as fixtures of this module too.
corpus_dir, source, sql_dest = engine_tests.corpus_dir, engine_tests.source, engine_tests.sql_dest


def indexes(dest: dict[str, Any]) -> set[tuple[str, str]]:
    """Prosody's indexes that the destination's tables have now, read on a connection of its own."""
    with open_backend(dest) as backend:
        assert isinstance(backend, SqlBackend)
        return PROSODYS & set(backend.dialect.indexes)


class AtStoreEnd:
    """A progress callback noting the destination's indexes as each store is done (one process:
    its writes are committed by then); ``stop_after`` stores, it stops the run as a kill would."""

    def __init__(self, dest: dict[str, Any], stop_after: int = 0) -> None:
        self.dest, self.stop_after = dest, stop_after
        self.seen: list[set[tuple[str, str]]] = []

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "store_done":
            self.seen.append(indexes(self.dest))
            if len(self.seen) == self.stop_after:
                raise KeyboardInterrupt


def deferred(dest: dict[str, Any]) -> bool:
    return for_params(dest).defer_indexes


def test_the_dialects_that_defer() -> None:
    assert [d for d in DRIVERS if for_params({"driver": d}).defer_indexes] == ["SQLite3", "PostgreSQL"]


def test_a_first_run_builds_the_indexes_once_its_rows_are_in(source: dict[str, Any], sql_dest: dict[str, Any]):
    watch = AtStoreEnd(sql_dest)
    report = migrate(source, sql_dest, progress=watch)
    assert (report.failed, report.changed) == (False, True)
    during = set() if deferred(sql_dest) else PROSODYS
    assert len(watch.seen) > 3 and all(seen == during for seen in watch.seen)
    assert indexes(sql_dest) == PROSODYS
    assert_same_data(source, sql_dest)
    again = migrate(source, sql_dest)
    assert (again.failed, again.changed) == (False, False)


def test_workers_leave_the_indexes_to_the_parent(source: dict[str, Any], sql_dest: dict[str, Any]):
    report = migrate(source, sql_dest, jobs=2)
    assert (report.failed, report.changed) == (False, True)
    assert indexes(sql_dest) == PROSODYS
    assert_same_data(source, sql_dest)


def test_a_run_that_verifies_has_them_from_the_start(source: dict[str, Any], sql_dest: dict[str, Any]):
    watch = AtStoreEnd(sql_dest)
    report = migrate(source, sql_dest, progress=watch, verify=True)
    assert (report.failed, report.verified) == (False, True)
    assert watch.seen and all(seen == PROSODYS for seen in watch.seen)


def test_check_mode_creates_nothing(source: dict[str, Any], sql_dest: dict[str, Any]):
    report = migrate(source, sql_dest, check=True)
    assert report.changed and not report.failed
    with open_backend(sql_dest) as backend:
        assert isinstance(backend, SqlBackend)
        assert not backend._has("prosody") and not backend._has("prosodyarchive")


def test_a_stopped_run_leaves_them_to_the_next(source: dict[str, Any], sql_dest: dict[str, Any]):
    stopped = AtStoreEnd(sql_dest, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        migrate(source, sql_dest, progress=stopped)
    left = set() if deferred(sql_dest) else PROSODYS
    assert indexes(sql_dest) == left  # rows are there: the next run builds the indexes first
    watch = AtStoreEnd(sql_dest)
    report = migrate(source, sql_dest, progress=watch)
    assert (report.failed, report.changed) == (False, True)
    assert watch.seen and all(seen == PROSODYS for seen in watch.seen)
    assert_same_data(source, sql_dest)


def test_an_index_dropped_is_built_again(source: dict[str, Any], sql_dest: dict[str, Any]):
    migrate(source, sql_dest)
    with open_backend(sql_dest) as backend:
        assert isinstance(backend, SqlBackend)
        on = ' ON "prosodyarchive"' if backend.dialect.name == "MySQL" else ""
        with backend._tx() as cur:
            cur.execute(f'DROP INDEX "prosodyarchive_when"{on}')
    assert indexes(sql_dest) == PROSODYS - {("prosodyarchive", "prosodyarchive_when")}
    report = migrate(source, sql_dest)
    assert (report.failed, report.changed) == (False, True)  # nothing else written, but the index
    assert indexes(sql_dest) == PROSODYS
    assert migrate(source, sql_dest).changed is False


@pytest.mark.parametrize("driver", ["SQLite3", "PostgreSQL"])
def test_an_index_that_cannot_be_built_is_named(driver: str, tmp_path: Any) -> None:
    # Two rows of one archive with the same key, which Prosody's unique index refuses: put there
    # behind our back, as no run of ours writes them.
    for params in fresh_database(driver, tmp_path):
        with SqlBackend(params) as backend:
            assert backend.prepare_writes(defer_indexes=True) is True
            assert PROSODYS & set(backend.dialect.indexes) == set()
            row = [HOST, "alice", "archive", 1700000000, "", "k1", "xml", "<message/>"]
            marks = ", ".join([backend.dialect.text_marker] * len(row))
            columns = ", ".join(f'"{c}"' for c in ARCHIVE_COLUMNS)
            with backend._tx() as cur:
                for _copy in range(2):
                    cur.execute(f'INSERT INTO "prosodyarchive" ({columns}) VALUES ({marks})', row)
            with pytest.raises(SqlDatabaseError) as caught:
                backend.finish_writes()
        message = str(caught.value)
        assert "cannot build Prosody's index prosodyarchive_index on table prosodyarchive" in message
        assert "the next run builds the index before it reads them" in message
        assert indexes(sql_definition(params)) == {("prosody", "prosody_index")}  # built before it
