# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Skipping unchanged entries (Options.state, state.py): a second run reads nothing but the pubsub
node lists and reports what a full compare reports; any change on either side, by a rename, an
append, an edit in place or an UPDATE, is compared and written; nothing is recorded for what is
not known equal (a lost batch, items the destination cannot hold, check mode); a state file that
cannot be used costs a warning and a full compare, never the run."""

from __future__ import annotations

import multiprocessing
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

import pytest

from ansible_collections.xmpp.prosody.plugins.module_utils import engine, state
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.internal import InternalBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import SqlBackend
from ansible_collections.xmpp.prosody.plugins.module_utils.errors import ProsodyMigrateError
from ansible_collections.xmpp.prosody.plugins.module_utils.report import Report
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils import test_engine as engine_tests
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils import test_unstorable_items as unstorable
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.backends.dbfixtures import (
    DRIVERS,
    fresh_database,
)
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_cli import run as cli_run
from ansible_collections.xmpp.prosody.tests.unit.plugins.module_utils.test_engine import (
    HOST,
    assert_same_data,
    migrate,
    sql_definition,
)

# The engine tests' corpus, source and destinations, and the unstorable items' corpus, as fixtures here too.
corpus_dir, source, sqlite_dest, pg_dest = (
    engine_tests.corpus_dir,
    engine_tests.source,
    engine_tests.sqlite_dest,
    engine_tests.pg_dest,
)
unstorable_corpus = unstorable.corpus_dir

PUBSUB_LISTS = {"pubsub_nodes", "pep"}  # keyval stores never skipped: their values name the nodes
CLOCK_TICK = 0.05  # seconds: longer than a tick of the kernel's file time stamps (at most 10 ms)


@pytest.fixture(params=("files", *DRIVERS))
def dest(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[dict[str, Any]]:
    if request.param == "files":
        yield {"type": "internal", "path": str(tmp_path / "dest")}
    else:
        yield from (sql_definition(p) for p in fresh_database(request.param, tmp_path))


@pytest.fixture
def state_file(tmp_path: Any) -> str:
    return str(tmp_path / "state" / "migration.sqlite")


class Reads:
    """The entries the backends read in this process while patched: (where, store, user), where
    is a file store's path or "sql"."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: list[tuple[str, str, Any]] = []
        for cls in (InternalBackend, SqlBackend):
            for name in ("keyval_get", "archive_items"):
                monkeypatch.setattr(cls, name, self._wrap(getattr(cls, name)))

    def _wrap(self, method: Any) -> Any:
        def spy(backend: Any, host: str, store: str, user: Any) -> Any:
            self.reads.append((getattr(backend, "path", "sql"), store, user))
            return method(backend, host, store, user)

        return spy

    def of(self, definition: dict[str, Any], pubsub: bool = False) -> set[tuple[str, Any]]:
        """What was read of a store (the pubsub node lists left out unless asked for)."""
        where = definition.get("path", "sql")
        return {(s, u) for w, s, u in self.reads if w == where and (pubsub or s not in PUBSUB_LISTS)}


def forbid_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading any entry but a pubsub node list fails, in this process and in workers forked from it."""
    for cls in (InternalBackend, SqlBackend):
        for name in ("keyval_get", "archive_items"):
            method = getattr(cls, name)

            def refuse(backend: Any, host: str, store: str, user: Any, method: Any = method) -> Any:
                if store in PUBSUB_LISTS:
                    return method(backend, host, store, user)
                raise ProsodyMigrateError(f"read {store!r} of {user!r}: the entry should have been skipped")

            monkeypatch.setattr(cls, name, refuse)


def stores(report: Report) -> list[dict[str, Any]]:
    return [asdict(r) for r in report.stores]


def sql_execute(definition: dict[str, Any], statement: str, **where: str) -> None:
    """A statement ``... WHERE <where>`` run behind the migrator's back, as a DBA would."""
    with open_backend(definition) as backend:
        assert isinstance(backend, SqlBackend)
        condition, params = backend._where(**where)
        with backend._tx() as cur:
            cur.execute(backend.dialect.sql(statement.format(where=condition)), params)


def append_in_place(path: str, key: str) -> None:
    """Append a copy of a .list file's first item under a new key, in place, as Prosody's archive appends."""
    with open(path, "rb") as f:
        first = f.read().split(b"});\n", 1)[0] + b"});\n"
    with open(path, "ab") as f:
        f.write(re.sub(rb'\["key"\] = "[^"]*"', b'["key"] = "' + key.encode() + b'"', first))


def edit_in_place(path: str, old: bytes, new: bytes) -> None:
    """Replace bytes of a file in place, same size, and put its times back: only its ctime tells
    (a tick of the kernel's file clock after the file's last change, which the fingerprint's
    trust needs: docs/guarantees.md)."""
    assert len(old) == len(new)
    time.sleep(CLOCK_TICK)
    st = os.stat(path)
    with open(path, "r+b") as f:
        data = f.read()
        f.seek(data.index(old))
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def first_key(definition: dict[str, Any], store: str, user: str) -> str:
    with open_backend(definition) as backend:
        return next(iter(backend.archive_items(HOST, store, user))).key


# ---------------------------------------------------------------------------------------------
def test_a_second_run_skips_every_unchanged_entry(
    source: dict[str, Any], dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = migrate(source, dest, state=state_file)
    assert (first.failed, first.failures) == (False, [])
    with monkeypatch.context() as patch:
        reads = Reads(patch)
        second = migrate(source, dest, state=state_file, diff=True)
    compared = migrate(source, dest)
    # Counted as a full compare counts, store by store; nothing changed, nothing to show.
    assert (second.changed, second.failed, second.diff, second.warnings) == (False, False, [], compared.warnings)
    assert stores(second) == stores(compared)
    assert second.totals()["users_unchanged"] == first.totals()["users_created"] > 80
    assert second.totals()["items_unchanged"] == first.totals()["items_created"] > 100
    # Nothing read but the pubsub node lists, on either side.
    assert reads.of(source) == reads.of(dest) == set()
    assert {store for store, _user in reads.of(source, pubsub=True)} == PUBSUB_LISTS


def test_changes_to_the_source_are_compared_and_written(
    source: dict[str, Any], sqlite_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(source, sqlite_dest, state=state_file)
    files = InternalBackend(source)
    # A value stored again, as Prosody's datamanager stores it (a new file, renamed into place).
    files.keyval_set(HOST, "vcard", "user00006", {"fn": "Changed"})
    # An item appended in place, as Prosody's archive appends.
    append_in_place(files._file(HOST, "archive", "user00007", b".list"), "appended-key")
    # A file edited in place, its size and times as they were.
    edit_in_place(files._file(HOST, "roster", "user00004", b".dat"), b'"Contact ', b'"Kontakt ')
    with monkeypatch.context() as patch:
        reads = Reads(patch)
        second = migrate(source, sqlite_dest, state=state_file)
    changed = {("vcard", "user00006"), ("archive", "user00007"), ("roster", "user00004")}
    assert reads.of(source) == reads.of(sqlite_dest) == changed
    updated = {(r.store, r.users_updated, r.items_created) for r in second.stores if r.users_updated}
    assert updated == {("vcard", 1, 0), ("archive", 1, 1), ("roster", 1, 0)}
    assert_same_data(source, sqlite_dest)
    with monkeypatch.context() as patch:
        forbid_reads(patch)
        third = migrate(source, sqlite_dest, state=state_file)
    assert (third.changed, third.failed) == (False, False)


def test_changes_behind_the_migrators_back_in_the_destination_are_rewritten(
    source: dict[str, Any], dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(source, dest, state=state_file)
    replaced, deleted = first_key(source, "archive", "user00007"), first_key(source, "archive", "user00005")
    if dest["type"] == "internal":
        files = InternalBackend(dest)
        files.keyval_set(HOST, "vcard", "user00006", {"fn": "Changed"})
        edit_in_place(files._file(HOST, "archive", "user00007", b".list"), b"@example.org", b"@example.net")
        os.remove(files._file(HOST, "archive", "user00005", b".list"))
    else:
        where = {"user": "user00006", "store": "vcard"}
        sql_execute(dest, 'UPDATE "prosody" SET "type" = \'string\', "value" = \'x\' WHERE {where}', **where)
        sql_execute(dest, 'UPDATE "prosodyarchive" SET "with" = \'x@example.net\' WHERE {where}', key=replaced)
        sql_execute(dest, 'DELETE FROM "prosodyarchive" WHERE {where}', user="user00005", key=deleted)
    with monkeypatch.context() as patch:
        reads = Reads(patch)
        second = migrate(source, dest, state=state_file)
    changed = {("vcard", "user00006"), ("archive", "user00007"), ("archive", "user00005")}
    assert reads.of(source) == changed
    assert {(r.store, r.users_updated + r.users_created) for r in second.stores if r.changed} == {
        ("vcard", 1),
        ("archive", 2),
    }
    assert_same_data(source, dest)
    with monkeypatch.context() as patch:
        forbid_reads(patch)
        assert not migrate(source, dest, state=state_file).changed


def test_a_lost_batch_is_recorded_for_nothing(
    source: dict[str, Any], sqlite_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first commit goes through but is reported lost (the connection dropped as it answered):
    its entries are failures, not recorded, so the next run compares them (and finds them equal)."""
    real_flush, calls = SqlBackend.flush, []

    def flush(backend: SqlBackend) -> None:
        real_flush(backend)
        calls.append(1)
        if len(calls) == 1:
            raise ProsodyMigrateError("the server went away as it committed")

    with monkeypatch.context() as patch:
        patch.setattr(SqlBackend, "flush", flush)
        first = migrate(source, sqlite_dest, state=state_file, keep_going=True)
    lost = {(f.store, f.user) for f in first.failures}
    assert lost and all("the batch holding the write was lost" in f.reason for f in first.failures)
    with monkeypatch.context() as patch:
        reads = Reads(patch)
        second = migrate(source, sqlite_dest, state=state_file)
    assert reads.of(source) == lost
    assert (second.changed, second.failed) == (False, False)


def test_items_the_destination_cannot_hold_fail_on_every_run(
    unstorable_corpus: str, pg_dest: dict[str, Any], state_file: str
) -> None:
    source = {"type": "internal", "path": unstorable_corpus, "hosts": unstorable.PLAN}
    for run in range(3):
        report = migrate(source, pg_dest, state=state_file, keep_going=True)
        unstorable.assert_item_failures(report, "PostgreSQL")
        result = report.store_result(HOST, "archive", "archive")
        assert (result.users_failed, result.items_failed, result.users_unchanged) == (1, 3, 0 if run == 0 else 1)


def test_check_mode_skips_by_the_state_and_writes_nothing(
    source: dict[str, Any], sqlite_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = migrate(source, sqlite_dest, state=state_file, check=True)
    assert check.changed and not os.path.exists(os.path.dirname(state_file))
    migrate(source, sqlite_dest)  # copied without a state: nothing recorded
    check = migrate(source, sqlite_dest, state=state_file, check=True)
    assert not check.changed and not os.path.exists(os.path.dirname(state_file))

    migrate(source, sqlite_dest, state=state_file)  # compared, found equal, recorded
    InternalBackend(source).keyval_set(HOST, "vcard", "user00006", {"fn": "Changed"})
    directory = os.path.dirname(state_file)
    before = {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}  # noqa: SIM115
    with monkeypatch.context() as patch:
        reads = Reads(patch)
        check = migrate(source, sqlite_dest, state=state_file, check=True)
    assert check.changed and check.store_result(HOST, "vcard", "keyval").users_updated == 1
    assert reads.of(source) == {("vcard", "user00006")}
    after = {name: open(os.path.join(directory, name), "rb").read() for name in os.listdir(directory)}  # noqa: SIM115
    assert after == before


def test_workers_share_the_state_file(
    source: dict[str, Any], sqlite_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = migrate(source, sqlite_dest, state=state_file, jobs=2)
    assert not first.failed
    with monkeypatch.context() as patch:
        forbid_reads(patch)  # inherited by the forked workers
        second = migrate(source, sqlite_dest, state=state_file, jobs=2)
    assert (second.failures, second.changed) == ([], False)
    assert stores(second) == stores(migrate(source, sqlite_dest, jobs=1))


def _open_state(path: str) -> str | None:
    """Open a state file as a worker does; its error, if any."""
    try:
        state.open_state(path, {"type": "internal", "path": "/a"}, {"type": "internal", "path": "/b"}, True).close()
    except state.StateError as exc:
        return str(exc)
    return None


def test_workers_opening_a_new_state_file_at_once_all_use_it(tmp_path: Any) -> None:
    path = str(tmp_path / "state.sqlite")
    with multiprocessing.get_context("fork").Pool(6) as pool:
        assert pool.map(_open_state, [path] * 30, chunksize=1) == [None] * 30


@pytest.mark.parametrize("kind", ["corrupt", "another database", "under a file", "a directory"])
def test_an_unusable_state_file_warns_and_the_run_compares_everything(
    source: dict[str, Any], sqlite_dest: dict[str, Any], tmp_path: Any, kind: str
) -> None:
    path = str(tmp_path / "state.sqlite")
    if kind == "corrupt":
        with open(path, "wb") as f:
            f.write(b"SQLite format 3\x00" + b"\xff" * 4000)
    elif kind == "another database":
        path = sqlite_dest["database"]  # a mistake an operator could make: the destination itself
    elif kind == "under a file":
        with open(tmp_path / "file", "w") as f:
            f.write("not a directory")
        path = str(tmp_path / "file" / "state.sqlite")
    else:
        os.makedirs(path)
    if kind == "another database":
        migrate(source, sqlite_dest)  # it exists, holding Prosody's tables
    for run in range(2):
        before = open(path, "rb").read() if os.path.isfile(path) and kind != "another database" else None  # noqa: SIM115
        report = migrate(source, sqlite_dest, state=path)
        assert (report.failed, report.failures) == (False, [])
        assert [w for w in report.warnings if path in w and "compares every entry" in w], report.warnings
        if run == 1 or kind == "another database":  # compared entry by entry, as without a state
            assert report.totals()["users_unchanged"] > 80
        if before is not None:
            assert open(path, "rb").read() == before  # noqa: SIM115
    if kind == "another database":
        with sqlite3.connect(path) as conn:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert tables == {"prosody", "prosodyarchive", "sqlite_sequence"}


@pytest.mark.parametrize("side", ["source", "destination"])
def test_fingerprints_that_fail_warn_and_the_run_compares_everything(
    source: dict[str, Any], pg_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch, side: str
) -> None:
    first = migrate(source, pg_dest, state=state_file)
    assert (first.failed, first.failures) == (False, [])
    failing = InternalBackend if side == "source" else SqlBackend

    def fail(backend: Any, entries: Any) -> Any:
        raise ProsodyMigrateError(f"the {side} cannot be fingerprinted")

    monkeypatch.setattr(failing, "fingerprints", fail)
    second = migrate(source, pg_dest, state=state_file)
    assert (second.changed, second.failed, second.failures) == (False, False, [])
    warned = [w for w in second.warnings if f"the {side} cannot be fingerprinted" in w]
    assert len(warned) == 1 and "compares every entry" in warned[0], second.warnings
    assert second.totals()["users_unchanged"] == first.totals()["users_created"] > 80


def test_a_state_that_cannot_be_written_warns_once_and_the_run_goes_on(
    source: dict[str, Any], sqlite_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def record(self: state.StateFile, records: Any) -> None:
        raise state.StateError(f"state file {self.path}: disk I/O error")

    with monkeypatch.context() as patch:
        patch.setattr(state.StateFile, "record", record)
        report = migrate(source, sqlite_dest, state=state_file)
    assert (report.failed, report.failures) == (False, [])
    assert [w for w in report.warnings if "disk I/O error" in w] == [
        f"state file {state_file}: disk I/O error; the rest of this run compares every entry "
        "(no skipping of unchanged entries)"
    ]
    assert_same_data(source, sqlite_dest)


def test_a_state_of_another_pair_is_not_used(
    source: dict[str, Any], sqlite_dest: dict[str, Any], tmp_path: Any, state_file: str
) -> None:
    migrate(source, sqlite_dest, state=state_file)
    other = {**sqlite_dest, "database": str(tmp_path / "other.sqlite")}
    report = migrate(source, other, state=state_file)  # the same state file, another destination
    assert report.totals()["users_created"] > 80 and report.totals()["users_unchanged"] == 0
    # ... which replaced the records: the first pair compares everything again, and records anew.
    again = migrate(source, sqlite_dest, state=state_file)
    assert again.totals()["users_unchanged"] > 80
    with sqlite3.connect(state_file) as conn:
        assert conn.execute("SELECT COUNT(DISTINCT ident) FROM entries").fetchone() == (1,)


def test_the_file_stores_quota_warning_comes_from_the_recorded_count(
    source: dict[str, Any], tmp_path: Any, state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine, "FILE_ARCHIVE_LIMIT", 15)
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    first = migrate(source, dest, state=state_file)
    with monkeypatch.context() as patch:
        forbid_reads(patch)
        second = migrate(source, dest, state=state_file)
    quota = [w for w in first.warnings if "storage_archive_item_limit" in w]
    assert quota and [w for w in second.warnings if "storage_archive_item_limit" in w] == quota


def test_verify_reads_everything_back(
    source: dict[str, Any], sqlite_dest: dict[str, Any], state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    migrate(source, sqlite_dest, state=state_file)
    with monkeypatch.context() as patch:
        reads = Reads(patch)
        report = migrate(source, sqlite_dest, state=state_file, verify=True)
    assert report.verified is True
    assert len(reads.of(sqlite_dest)) > 80 and reads.of(sqlite_dest) <= reads.of(source)


# the command ---------------------------------------------------------------------------------
def test_the_commands_state_options(tmp_path: Any) -> None:
    data = tmp_path / "data"
    engine_tests.make_corpus(str(data), users=3, messages=2)
    config = tmp_path / "migrator.cfg.lua"
    config.write_text(
        f'input {{ type = "internal", path = "{data}" }}\n'
        f'output {{ type = "sql", driver = "SQLite3", database = "{tmp_path / "out.sqlite"}" }}\n'
    )
    default_dir = os.path.join(os.environ["XDG_STATE_HOME"], "xmpp-prosody")
    before = set(os.listdir(default_dir)) if os.path.isdir(default_dir) else set()
    assert cli_run("--config", str(config), "--no-state", "-j", "1")[0] == 0
    assert (set(os.listdir(default_dir)) if os.path.isdir(default_dir) else set()) == before
    assert cli_run("--config", str(config), "-j", "1")[0] == 0  # the default state file
    [made] = set(os.listdir(default_dir)) - before
    assert re.fullmatch(r"[0-9a-f]{24}\.sqlite", made)
    own = tmp_path / "own.sqlite"
    code, out, _err = cli_run("--config", str(config), "--state", str(own), "-j", "1")
    assert code == 0 and own.exists() and out.endswith("nothing changed\n")
    code, _out, err = cli_run("--config", str(config), "--state", str(own), "--no-state")
    assert code == 2 and "not allowed with argument" in err


@pytest.fixture(params=DRIVERS)
def sql_source(request: pytest.FixtureRequest, source: dict[str, Any], tmp_path: Any) -> Iterator[dict[str, Any]]:
    """The corpus in a fresh database of each driver, with Prosody's plan."""
    (tmp_path / "src").mkdir()
    for params in fresh_database(request.param, tmp_path / "src"):
        definition = dict(sql_definition(params), hosts=source["hosts"])
        made = migrate(source, definition)
        assert (made.failed, made.failures) == (False, [])
        yield definition


def test_a_first_run_fingerprints_the_sql_source_from_its_own_reads(
    sql_source: dict[str, Any], tmp_path: Any, state_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Into an empty destination, the source's fingerprints come from the rows the copy reads
    # (the same digest as the server's query, or the SQLite3 backend's): the source is read once,
    # and the second run still skips every entry.
    dest = {"type": "internal", "path": str(tmp_path / "dest")}
    asked: list[tuple[str, Any]] = []
    with monkeypatch.context() as patch:
        original = SqlBackend.fingerprints

        def fingerprints(backend: SqlBackend, entries: Any) -> Any:
            asked.extend((e[1], e[3]) for e in entries)
            return original(backend, entries)

        patch.setattr(SqlBackend, "fingerprints", fingerprints)
        first = migrate(sql_source, dest, state=state_file)
    assert (first.failed, first.failures) == (False, [])
    # Only the pubsub nodes' item stores, which their node lists reach out of the plan's order.
    assert asked and {store.split("_")[0] for store, _user in asked} == {"pubsub", "pep"}
    with monkeypatch.context() as patch:
        forbid_reads(patch)
        second = migrate(sql_source, dest, state=state_file)
    assert (second.changed, second.failed, second.failures) == (False, False, [])
    assert second.totals()["users_unchanged"] == first.totals()["users_created"] > 80
    assert second.totals()["items_unchanged"] == first.totals()["items_created"] > 100
    assert_same_data(sql_source, dest)
