# Copyright: (c) 2026, xmpp.prosody contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sql backend's cheaper paths against the real servers: store_empty, entries written in one
round trip inside a batch (a refused one still undone alone), and the one-pass row check."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.xmpp.prosody.plugins.module_utils import engine
from ansible_collections.xmpp.prosody.plugins.module_utils.backends import dialects, open_backend
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.base import ArchiveItem, EntriesRefused
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.dialects import (
    ARCHIVE_COLUMNS,
    KEYVAL_COLUMNS,
)
from ansible_collections.xmpp.prosody.plugins.module_utils.backends.sql import PIPELINE_ROWS, SqlBackend, SqlEncodeError
from ansible_collections.xmpp.prosody.plugins.module_utils.engine import Options, run_migration
from ansible_collections.xmpp.prosody.plugins.module_utils.stanza import Element

HOST, OTHER = "example.org", "other.example"


def message(key: str, text: str) -> ArchiveItem:
    stanza = Element("message", {"id": key})
    stanza.tag("body").text(text)
    return ArchiveItem(key, stanza, 1700000000, "peer@example.net")


def item_keys(backend: SqlBackend, store: str, user: str) -> list[tuple[str, Any]]:
    return [(i.key, i.value.to_xml()) for i in backend.archive_items(HOST, store, user)]


# store_empty -----------------------------------------------------------------------------------
def test_store_empty_is_per_host_store_and_kind(sql_params: dict[str, Any]) -> None:
    with SqlBackend(sql_params) as backend:
        assert backend.store_empty(HOST, "s", "keyval") and backend.store_empty(HOST, "s", "archive")
        assert backend.schema_problems() == [] and not backend._has("prosody")  # asking created nothing
        backend.keyval_set(HOST, "s", None, {"host": "level"})
        backend.keyval_set(HOST, "pad ", "u", {"a": 1})
        backend.archive_write(HOST, "a", "u", [message("k", "hi")])
        assert not backend.store_empty(HOST, "s", "keyval")  # host-level data is data
        assert backend.store_empty(HOST, "s", "archive")
        assert backend.store_empty(OTHER, "s", "keyval") and backend.store_empty(HOST, "t", "keyval")
        assert backend.store_empty(HOST, "pad", "keyval")  # not the same store as "pad ", even on MySQL
        assert not backend.store_empty(HOST, "pad ", "keyval")
        assert not backend.store_empty(HOST, "a", "archive") and backend.store_empty(HOST, "a", "keyval")
        backend.keyval_set(HOST, "s", None, None)
        assert backend.store_empty(HOST, "s", "keyval")
        # Inside a batch, the batch's own writes count before they are committed.
        backend.start_batch()
        backend.keyval_set(HOST, "new", "u", {"a": 1})
        assert not backend.store_empty(HOST, "new", "keyval")
        backend.flush()
    with SqlBackend(sql_params) as backend:
        assert backend.keyval_get(HOST, "new", "u") == {"a": 1}


def test_kinds_empty_is_per_table(sql_params: dict[str, Any]) -> None:
    with SqlBackend(sql_params) as backend:
        assert backend.kinds_empty() == {"keyval", "archive"}  # no tables yet
        backend.prepare_writes()
        assert backend.kinds_empty() == {"keyval", "archive"}  # tables, no rows
        backend.start_batch()
        backend.keyval_set(OTHER, "s", None, {"host": "level"})
        assert backend.kinds_empty() == {"archive"}  # the batch's own writes count
        backend.archive_write(HOST, "a", "u", [message("k", "hi")])
        backend.flush()
    with SqlBackend(sql_params) as backend:
        assert backend.kinds_empty() == set()
        backend.keyval_set(OTHER, "s", None, None)
        assert backend.kinds_empty() == {"keyval"}


# entries in a batch ------------------------------------------------------------------------------
TRIGGERS = {
    "SQLite3": [
        f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN NEW.user LIKE 'bad%' "
        "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        for table in ("prosody", "prosodyarchive")
    ],
    "PostgreSQL": [
        "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN IF NEW.\"user\" LIKE 'bad%' THEN "
        "RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql",
        *(
            f'CREATE TRIGGER refuse BEFORE INSERT ON "{table}" FOR EACH ROW EXECUTE FUNCTION refuse()'
            for table in ("prosody", "prosodyarchive")
        ),
    ],
    "MySQL": [
        f'CREATE TRIGGER refuse_{table} BEFORE INSERT ON "{table}" FOR EACH ROW BEGIN IF NEW."user" LIKE \'bad%\' '
        "THEN SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'refused by the test'; END IF; END"
        for table in ("prosody", "prosodyarchive")
    ],
}


def _execute(backend: SqlBackend, statement: str) -> None:
    cur = backend._conn.cursor()
    try:
        cur.execute(statement)
    finally:
        cur.close()


def test_a_refused_entry_is_undone_alone_in_its_batch(sql_params: dict[str, Any]) -> None:
    # A batch goes in at the flush, all at once; refused there, it is written again entry by entry,
    # small entries in one round trip (PostgreSQL's pipeline), large ones by COPY. The refused
    # entries are undone alone and named in EntriesRefused: the entries around them are stored,
    # the refused users keep their old data.
    big_value = {f"contact{i}@example.net": {"name": str(i), "groups": {}} for i in range(PIPELINE_ROWS + 10)}
    big_archive = [message(f"m{i}", str(i)) for i in range(PIPELINE_ROWS * 3)]
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", "bad", {"old": "kept"})
        backend.archive_write(HOST, "a", "bad", [message("old1", "kept")])
        old_archive = item_keys(backend, "a", "bad")
        for statement in TRIGGERS[sql_params["driver"]]:
            _execute(backend, statement)
        backend.start_batch()
        backend.keyval_set(HOST, "s", "a", {"x": "1"}, absent=True)
        backend.keyval_set(HOST, "s", "bad", {"x": "2"})
        backend.keyval_set(HOST, "s", "bad2", big_value, absent=True)
        backend.archive_write(HOST, "a", "bad", [message("old1", "new"), message("n", "new")])
        backend.archive_write(HOST, "a", "bad2", big_archive, absent=True)
        backend.keyval_set(HOST, "s", "c", big_value)
        backend.archive_write(HOST, "a", "a", [message("k1", "1"), message("k2", "2")])
        backend.archive_write(HOST, "a", "c", big_archive, absent=True)
        with pytest.raises(EntriesRefused) as refused:
            backend.flush()
        assert [(e.store, e.kind, e.user) for e in refused.value.entries] == [
            ("s", "keyval", "bad"),
            ("s", "keyval", "bad2"),
            ("a", "archive", "bad"),
            ("a", "archive", "bad2"),
        ]
        assert all("refused by the test" in e.reason for e in refused.value.entries)
        backend.archive_write(HOST, "a", "a", [message("k1", "one"), message("k3", "3")])  # k1 replaced
        backend.flush()
    with SqlBackend(sql_params) as backend:
        assert backend.keyval_get(HOST, "s", "a") == {"x": "1"}
        assert backend.keyval_get(HOST, "s", "c") == big_value
        assert backend.keyval_get(HOST, "s", "bad") == {"old": "kept"}
        assert backend.keyval_get(HOST, "s", "bad2") is None
        assert item_keys(backend, "a", "bad") == old_archive
        assert item_keys(backend, "a", "bad2") == []
        assert [key for key, _xml in item_keys(backend, "a", "a")] == ["k2", "k1", "k3"]
        assert "one" in dict(item_keys(backend, "a", "a"))["k1"]
        assert [key for key, _xml in item_keys(backend, "a", "c")] == [i.key for i in big_archive]
        assert sorted(backend.keyval_users(HOST, "s")) == ["a", "bad", "c"]


def test_a_batch_goes_in_at_once_and_replaces_what_it_must(sql_params: dict[str, Any]) -> None:
    # The bulk path: entries known absent are inserted without a delete, the others replace their
    # rows (a keyval value whole, archive items by key), and a read of a held entry sees it.
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", "old", {"gone": "1", "kept": "1"})
        backend.archive_write(HOST, "a", "old", [message("k1", "1"), message("k2", "2")])
        backend.start_batch()
        backend.keyval_set(HOST, "s", "old", {"kept": "2"})
        backend.archive_write(HOST, "a", "old", [message("k1", "one"), message("k3", "3")])
        backend.keyval_set(HOST, "s", "new", {"x": "1"}, absent=True)
        backend.archive_write(HOST, "a", "new", [message("n1", "1")], absent=True)
        assert backend.keyval_get(HOST, "s", "new") == {"x": "1"}  # held, written before the read
        backend.keyval_set(HOST, "s", "later", {"y": "1"}, absent=True)
        backend.flush()
    with SqlBackend(sql_params) as backend:
        assert backend.keyval_get(HOST, "s", "old") == {"kept": "2"}
        assert [key for key, _xml in item_keys(backend, "a", "old")] == ["k2", "k1", "k3"]
        assert "one" in dict(item_keys(backend, "a", "old"))["k1"]
        assert backend.keyval_get(HOST, "s", "new") == {"x": "1"}
        assert backend.keyval_get(HOST, "s", "later") == {"y": "1"}
        assert [key for key, _xml in item_keys(backend, "a", "new")] == ["n1"]


# the row check ---------------------------------------------------------------------------------
# Plain and multi-byte text, NUL, and bytes that are not UTF-8 (as the file store's reader gives them).
TEXT = st.text(alphabet=st.sampled_from(["a", "Z", " ", "é", "€", "\U0001d11e", "\x00", "\udce9", "\udcff"]))


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "row", call()
    except SqlEncodeError as exc:
        return "refused", str(exc)


def _assert_fast_check_is_the_full_check(
    backend: SqlBackend, table: str, columns: tuple[str, ...], longest: int = 40
) -> None:
    @given(st.lists(TEXT.filter(lambda t: len(t) < longest), min_size=len(columns), max_size=len(columns)))
    def same(texts: list[str]) -> None:
        values = tuple(1700000000 if column == "when" else text for column, text in zip(columns, texts))
        row = dict(zip(columns, values))

        def full() -> tuple[Any, ...]:
            backend._check(HOST, "s", "u", table, row)
            return backend._bind_row(row, columns)

        assert _outcome(lambda: backend._row(HOST, "s", "u", table, columns, values)) == _outcome(full)

    same()


def test_the_one_pass_row_check_refuses_and_binds_as_the_full_one(sql_params: dict[str, Any]) -> None:
    with SqlBackend(sql_params) as backend:
        backend.keyval_set(HOST, "s", "u", {"a": 1})
        backend.archive_write(HOST, "a", "u", [message("k", "hi")])
        _assert_fast_check_is_the_full_check(backend, "prosody", KEYVAL_COLUMNS)
        _assert_fast_check_is_the_full_check(backend, "prosodyarchive", ARCHIVE_COLUMNS)


def test_the_one_pass_row_check_with_narrow_mysql_columns(mysql_params: dict[str, Any]) -> None:
    # TINYTEXT columns (255 bytes): rows near and past the limit take the full check, others do not.
    with SqlBackend(mysql_params) as backend:
        columns = ", ".join(f'"{c}" TINYTEXT NOT NULL' for c in KEYVAL_COLUMNS)
        _execute(backend, f'CREATE TABLE "prosody" ({columns}) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin')
    with SqlBackend(mysql_params) as backend:
        assert backend._fits["prosody"] == 255
        _assert_fast_check_is_the_full_check(backend, "prosody", KEYVAL_COLUMNS, longest=80)
        with pytest.raises(SqlEncodeError, match=r"the key 'kkk.* is 256 bytes, more than the 255 its tinytext"):
            backend.keyval_set(HOST, "s", "u", {"k" * 256: "v"})
        value = {"k" * 255: "€" * 85, "é" * 127: "v"}  # each text at most 255 bytes, 765 in the row
        backend.keyval_set(HOST, "s", "u", value)
        assert backend.keyval_get(HOST, "s", "u") == value


# batches ---------------------------------------------------------------------------------------
def _migrate_counting_commits(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, store: str, values: dict[str, Any]
) -> tuple[Any, list[int], dict[str, Any]]:
    """Migrate one store's values (by user) from files into a new SQLite3 database; returns the
    report, the destination's keyval row count after each commit of a batch, and the destination."""
    source = {"type": "internal", "path": str(tmp_path / "data")}
    with open_backend(source) as src:
        for user, value in values.items():
            src.keyval_set(HOST, store, user, value)
    commits: list[int] = []
    flush = SqlBackend.flush

    def counted(backend: SqlBackend) -> None:
        held = bool(backend._held)
        flush(backend)
        if held:
            commits.append(backend._select('SELECT COUNT(*) FROM "prosody"', [])[0][0])

    monkeypatch.setattr(SqlBackend, "flush", counted)
    monkeypatch.setattr(engine, "BATCH_SECONDS", 3600.0)
    dest = {"type": "sql", "driver": "SQLite3", "database": str(tmp_path / "out.sqlite")}
    report = run_migration(source, dest, Options(hosts=[HOST], stores=[store], jobs=1))
    return report, commits, dest


def test_a_batch_counts_each_field_of_a_table_as_a_row(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A keyval table is a row per field in SQL: a batch commits at BATCH_ROWS of those, so what a
    crash can lose (and what the batch holds for replay) is bounded by rows, not by users."""
    rosters = {
        f"user{n:02d}": {f"contact{i}@example.net": {"subscription": "both"} for i in range(100)} for n in range(12)
    }
    monkeypatch.setattr(engine, "BATCH_ROWS", 250)
    report, commits, dest = _migrate_counting_commits(tmp_path, monkeypatch, "roster", rosters)
    assert not report.failed and report.totals()["users_created"] == 12
    # Three rosters (300 rows) to a batch: four commits; one for the whole store before.
    assert commits[:4] == [300, 600, 900, 1200]
    with open_backend(dest) as backend:
        assert {user: backend.keyval_get(HOST, "roster", user) for user in rosters} == rosters


def test_a_batch_of_small_entries_ends_at_batch_entries(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Entries of one row each (accounts, vCards) end a batch by their number: each held entry
    costs memory besides its rows, which a batch of 2,000 of them made grow with the users."""
    vcards = {f"user{n:02d}": {"fn": f"User {n}"} for n in range(10)}
    monkeypatch.setattr(engine, "BATCH_ENTRIES", 4)
    report, commits, dest = _migrate_counting_commits(tmp_path, monkeypatch, "vcard", vcards)
    assert not report.failed and report.totals()["users_created"] == 10
    assert commits == [4, 8, 10]  # four users a batch, the rest at the end of the store
    with open_backend(dest) as backend:
        assert {user: backend.keyval_get(HOST, "vcard", user) for user in vcards} == vcards


def test_a_flushed_batch_frees_its_writes_without_the_garbage_collector(
    sql_params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The held writes and the replay journal's hold the entries' rows: freed by the flush itself,
    not left in reference cycles for a full collection (memory grew with the number of users)."""
    refs: list[weakref.ref] = []
    commit = SqlBackend._commit

    def journaled(backend: SqlBackend) -> None:
        refs.extend(weakref.ref(write) for write in backend._journal)
        commit(backend)

    monkeypatch.setattr(SqlBackend, "_commit", journaled)
    with SqlBackend(sql_params) as backend:
        backend.start_batch()
        backend.keyval_set(HOST, "roster", "alice", {"bob@example.net": {"subscription": "both"}})
        backend.archive_write(HOST, "archive", "alice", [message("k1", "hello")])
        refs.extend(weakref.ref(held.write) for held in backend._held)
        assert len(refs) == 2
        gc.disable()
        try:
            backend.flush()
            assert len(refs) == 3  # the two entries, and the batch's write in the journal
            assert [ref() for ref in refs] == [None, None, None]
        finally:
            gc.enable()


# the bulk path: MySQL's multi-row INSERT, PostgreSQL's COPY ----------------------------------------------
# The characters a MySQL string literal or COPY's text format escapes, and those the bulk text puts
# between values and rows (\x01, \x02: such a batch goes the general way), beside plain and multi-byte ones.
LITERAL_TEXT = st.lists(
    st.sampled_from(["a", "'", '"', "\\", "\x00", "\n", "\r", "\t", "\x1a", "\x01", "\x02", "%s", "é", "\U0001d11e"])
).map("".join)


def _assert_bulk_keeps_every_character(backend: SqlBackend, text: Any) -> None:
    # XML carries no NUL nor other control characters but tab, newline and CR.
    body = text.map(lambda t: "".join(c for c in t if c >= " " or c in "\t\n\r")).filter(bool)
    bulk = backend._write_bulk

    def bulk_only(held: Any) -> bool:
        assert bulk(held), "the bulk write was refused: the batch went in entry by entry"
        return True

    backend._write_bulk = bulk_only  # type: ignore[method-assign]

    new_users = iter(range(10**6))

    @given(st.dictionaries(text.filter(bool), text, min_size=1, max_size=8), body)
    def same(value: dict[str, str], body: str) -> None:
        new = f"new{next(new_users)}"
        backend.start_batch()
        backend.keyval_set(HOST, "s", "u", value)
        backend.archive_write(HOST, "a", "u", [message("k", body)])
        backend.keyval_set(HOST, "s", new, {"x": body}, absent=True)
        backend.flush()
        assert backend.keyval_get(HOST, "s", "u") == value
        assert [i.value for i in backend.archive_items(HOST, "a", "u")] == [message("k", body).value]
        assert backend.keyval_get(HOST, "s", new) == {"x": body}

    same()


@pytest.mark.parametrize("mode", ["", "NO_BACKSLASH_ESCAPES"])
def test_mysql_bulk_insert_keeps_every_character(
    mysql_params: dict[str, Any], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batch's rows go in as literals quoted by us, split over several statements here: whatever
    # the server's sql_mode, every value reads back as it was.
    monkeypatch.setattr(dialects, "STATEMENT_CHARS", 200)
    with SqlBackend(mysql_params) as backend:
        backend.prepare_writes()
        if mode:
            _execute(backend, f"SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',{mode}')")
        _assert_bulk_keeps_every_character(backend, LITERAL_TEXT)


def test_postgresql_copy_keeps_every_character(pg_params: dict[str, Any]) -> None:
    # PostgreSQL text holds no NUL: left out.
    with SqlBackend(pg_params) as backend:
        backend.prepare_writes()
        _assert_bulk_keeps_every_character(backend, LITERAL_TEXT.map(lambda t: t.replace("\x00", "")))


@pytest.mark.parametrize(
    "rows",
    [
        [("a", "b"), ("c\x01", "d")],
        [("a", "b\x02"), ("c", "d")],
        [("a", 1.5)],
        [("a", b"bytes")],
        [("a", True)],
    ],
)
def test_bulk_text_leaves_unusual_rows_to_the_general_path(rows: list[tuple[Any, ...]]) -> None:
    assert dialects._escaped_chunks(rows, ()) is None


def test_bulk_text_splits_at_the_statement_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dialects, "STATEMENT_CHARS", 10)
    rows = [("aaaa", "b"), ("c", 1), ("d" * 30, "e"), ("f", "g")]
    chunks = ["AAAA\x01b\x02c\x011", "d" * 30 + "\x01e", "f\x01g"]
    assert dialects._escaped_chunks(rows, (("a", "A"),)) == chunks
    monkeypatch.setattr(dialects, "CHUNK_ROWS", 1)
    assert dialects._escaped_chunks(rows, (("a", "A"),)) == ["AAAA\x01b", "c\x011", *chunks[1:]]


class _CommitThenDrop:
    """A connection whose first COMMIT happens, then fails as if the connection went right after."""

    def __init__(self, conn: Any, error: type[BaseException]) -> None:
        self._conn, self._error, self.dropped = conn, error, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self) -> Any:
        outer = self
        cursor = self._conn.cursor()

        class Cursor:
            def __getattr__(self, name: str) -> Any:
                return getattr(cursor, name)

            def execute(self, query: str, *args: Any) -> Any:
                result = cursor.execute(query, *args)
                if query == "COMMIT" and not outer.dropped:
                    outer.dropped = True
                    raise outer._error("the connection went after the commit (test)")
                return result

        return Cursor()


def test_a_batch_committed_before_its_connection_went_is_not_written_twice(sqlite_params: dict[str, Any]) -> None:
    # Whether a commit happened is unknown when the connection goes: the batch is written again on
    # a new connection. Entries known absent were written without a delete; written again, their
    # rows from the first time go first, so nothing is doubled.
    with SqlBackend(sqlite_params) as backend:
        backend.prepare_writes()
        backend.keyval_set(HOST, "s", "old", {"a": "0"})
        backend.archive_write(HOST, "a", "old", [message("k1", "0")])
        backend._conn = drop = _CommitThenDrop(backend._conn, dialects.sqlite3.OperationalError)
        backend.start_batch()
        backend.keyval_set(HOST, "s", "u", {"a": "1", "b": "2"}, absent=True)
        backend.archive_write(HOST, "a", "u", [message("k1", "1"), message("k2", "2")], absent=True)
        backend.keyval_set(HOST, "s", "old", {"a": "1"})
        backend.archive_write(HOST, "a", "old", [message("k1", "1")])
        backend.flush()
        assert drop.dropped
    with SqlBackend(sqlite_params) as backend:
        assert backend.keyval_get(HOST, "s", "u") == {"a": "1", "b": "2"}
        assert backend.keyval_get(HOST, "s", "old") == {"a": "1"}
        assert [key for key, _xml in item_keys(backend, "a", "u")] == ["k1", "k2"]
        assert [key for key, _xml in item_keys(backend, "a", "old")] == ["k1"]
        rows = backend._select('SELECT COUNT(*) FROM "prosody"', [])[0][0]
        assert rows == 3
